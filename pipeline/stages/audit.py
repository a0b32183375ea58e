"""audit: data/embeddings + data/split + the source (data/images) -> reports/audit.json + reports/audit/.

What is wrong with the images, before anyone trains on them, from the frozen
backbone's embedding of every image of every split (the embed stage):

- label issues: images whose given label is probably wrong, by confident
  learning on out-of-sample probabilities (audit.folds-fold, seeded);
- near duplicates: pairs at or above audit.duplicate_similarity, within a
  split and across splits; the leakage rate is the share of val and test
  images with a near twin in train;
- outliers: images far from their nearest neighbours (audit.outlier_z);
- image quality: too dark, overexposed, blurred, near-constant, an extreme
  shape, a tiny original (the audit.* thresholds).

Each type gets a CSV (ranked, worst first; the rows ``python -m pipeline relabel``
reads) and a gallery PNG; the counts and the leakage rate go to
reports/audit.json, DVC metrics that ``dvc metrics diff`` shows in review.
"""
from __future__ import annotations

import collections
import logging
import time

import numpy as np

from pipeline.lib import artifacts, audit, images, params, plots, sources

PARAMS = ["audit", "seed", "ingest.max_unpacked_mb", "ingest.max_expansion_ratio"]
# The one list of issue types: each is reports/audit/<name>.csv and <name>.png, and a count in audit.json.
ISSUES = {"label_issues": "label issues", "near_duplicates": "near duplicates", "outliers": "outliers",
          "quality": "image quality"}
FIELDS = ["file", "split", "label", "suggested", "score", "issue", "twin", "twin_split"]
THUMBNAIL = 160
log = logging.getLogger("pipeline.stages.audit")


def read(embeddings, split) -> tuple[list[dict], np.ndarray, list[str]]:
    """The images of every split (with the split's labels), their embeddings and the labels."""
    rows = [{**row, "split": name} for name in images.SPLITS for row in images.read_csv(split / f"{name}.csv", images.SPLIT_FIELDS)]
    recorded, x = audit.read_embeddings(embeddings, rows)
    rows = [{**seen, **row} for seen, row in zip(recorded, rows)]
    return rows, audit.normalized(x), artifacts.read_labels(split / "labels.json")


def label_issues(rows, x, labels, p) -> tuple[list[dict], float]:
    y = np.array([labels.index(r["label"]) for r in rows])
    probs = audit.out_of_sample_probabilities(x, y, len(labels), p.audit.folds, p.seed)
    held_out_accuracy = float((probs.argmax(axis=1) == y).mean())
    log.info("out-of-sample accuracy of the audit's classifier: %.3f", held_out_accuracy)
    found = []
    for i in np.flatnonzero(audit.label_issues(probs, y)):
        found.append({"i": i, "suggested": labels[int(probs[i].argmax())], "score": 1 - probs[i, y[i]]})
    return sorted(found, key=lambda f: (-f["score"], rows[f["i"]]["path"])), held_out_accuracy


def near_duplicates(rows, x, idx, sim, p) -> tuple[list[dict], dict]:
    pairs = {}
    for i, j in zip(*np.nonzero(sim >= p.audit.duplicate_similarity)):
        a, b = sorted((int(i), int(idx[i, j])))
        pairs[a, b] = float(sim[i, j])
    found = []
    for (a, b), s in pairs.items():
        if rows[a]["split"] == "train":  # the evaluation side first: that is the image that leaks
            a, b = b, a
        found.append({"i": a, "twin": b, "score": s,
                      "issue": "across splits" if rows[a]["split"] != rows[b]["split"] else "within a split"})
    found.sort(key=lambda f: (f["issue"] != "across splits", -f["score"], rows[f["i"]]["path"]))
    # Leakage: the nearest training image of every val and test image, searched exhaustively.
    train = np.array([r["split"] == "train" for r in rows])
    evaluation = np.flatnonzero(~train)
    _, nearest_train = audit.nearest(x[evaluation], x[train], 1)
    leaked = collections.Counter(rows[i]["split"] for i, s in zip(evaluation, nearest_train[:, 0])
                                 if s >= p.audit.duplicate_similarity)
    leakage = {"leakage_rate": sum(leaked.values()) / max(1, len(evaluation)),
               "leaked": {name: leaked.get(name, 0) for name in ("val", "test")}}
    return found, leakage


def outliers(idx, sim, p) -> list[dict]:
    distance = 1 - sim.mean(axis=1)
    z = audit.robust_z(distance)
    found = [{"i": i, "score": float(z[i]), "twin": int(idx[i, 0])} for i in np.flatnonzero(z > p.audit.outlier_z)]
    return sorted(found, key=lambda f: -f["score"])


def quality(rows, p) -> list[dict]:
    """One finding per image and issue it has: the measured value against its audit.* threshold."""
    a = p.audit
    checks = [  # issue, the measure it reads, when that is a problem
        ("too dark", "brightness", lambda v: v < a.dark),
        ("overexposed", "brightness", lambda v: v > a.bright),
        ("blurred", "sharpness", lambda v: v < a.blurred),
        ("low information", "entropy", lambda v: v < a.low_information),
        ("extreme aspect ratio", "aspect_ratio", lambda v: v > a.max_aspect_ratio),
        ("tiny", "short_side", lambda v: v < a.min_side),
    ]
    found = []
    for i, row in enumerate(rows):
        sides = sorted((int(row["width"]), int(row["height"])))
        measured = {**{k: float(row[k]) for k in images.QUALITY_FIELDS},
                    "aspect_ratio": sides[1] / max(1, sides[0]), "short_side": sides[0]}
        found += [{"i": i, "issue": issue, "score": measured[key]}
                  for issue, key, bad in checks if bad(measured[key])]
    return found


def as_rows(found: list[dict], rows: list[dict]) -> list[dict]:
    out = []
    for f in found:
        row = rows[f["i"]]
        twin = rows[f["twin"]] if "twin" in f else {}
        out.append({"file": row["path"], "split": row["split"], "label": row["label"],
                    "suggested": f.get("suggested", ""), "score": f"{f['score']:.4g}", "issue": f.get("issue", ""),
                    "twin": twin.get("path", ""), "twin_split": twin.get("split", "")})
    return out


def tile(source, row: dict, twin: dict | None) -> np.ndarray:
    """The image's thumbnail; beside its twin's for a duplicate pair."""
    first = images.thumbnail(images.read_recorded(source, row), THUMBNAIL)
    if twin is None:
        return first
    second = images.thumbnail(images.read_recorded(source, twin), THUMBNAIL)
    height = max(first.shape[0], second.shape[0])
    pad = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0)), constant_values=255) for t in (first, second)]
    return np.concatenate([pad[0], np.full((height, 8, 3), 255, np.uint8), pad[1]], axis=1)


def caption(kind: str, f: dict, row: dict, twin: dict | None) -> str:
    name = row["path"].rsplit("/", 1)[-1][:18]
    if kind == "label_issues":
        return f"{name}\n{row['label']} -> {f['suggested']} ({f['score']:.2f})"
    if kind == "near_duplicates":
        return f"{row['split']}/{row['label']} | {twin['split']}/{twin['label']}\nsimilarity {f['score']:.3f}"
    if kind == "outliers":
        return f"{name}\n{row['split']}/{row['label']} (z {f['score']:.1f})"
    return f"{name}\n{f['issue']} ({f['score']:.3g})"


def main() -> None:
    args = artifacts.start(__doc__, "source", "embeddings", "split", "metrics", "out", writes=("metrics", "out"))
    p = params.load(PARAMS)
    source = sources.locate(str(args.source), p.ingest)
    started = time.perf_counter()
    rows, x, labels = read(args.embeddings, args.split)
    idx, sim = audit.nearest(x, x, p.audit.neighbours, same=True)
    labelled, accuracy = label_issues(rows, x, labels, p)
    duplicates, leakage = near_duplicates(rows, x, idx, sim, p)
    found = {"label_issues": labelled, "near_duplicates": duplicates, "outliers": outliers(idx, sim, p),
             "quality": quality(rows, p)}
    seconds = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    for kind, title in ISSUES.items():
        with artifacts.atomic_file(args.out / f"{kind}.csv") as tmp:
            images.write_csv(tmp, as_rows(found[kind], rows), FIELDS)
        shown = found[kind][:p.audit.gallery]
        twins = [rows[f["twin"]] if kind == "near_duplicates" else None for f in shown]
        with artifacts.atomic_file(args.out / f"{kind}.png") as tmp:
            plots.gallery([tile(source, rows[f["i"]], t) for f, t in zip(shown, twins)],
                          [caption(kind, f, rows[f["i"]], t) for f, t in zip(shown, twins)], tmp,
                          f"{title}: {len(found[kind])} (reports/audit/{kind}.csv), first {len(shown)}",
                          empty=f"no {title}")
    metrics = {"images": len(rows), **{kind: len(found[kind]) for kind in ISSUES},
               "cross_split_duplicates": sum(f["issue"] == "across splits" for f in duplicates), **leakage,
               "quality_by_issue": dict(sorted(collections.Counter(f["issue"] for f in found["quality"]).items())),
               "audit_classifier_accuracy": accuracy}
    artifacts.write_json(args.metrics, metrics)
    log.info("audited %d images in %.1f s: %s; leakage rate %.3f", len(rows), seconds,
             ", ".join(f"{len(found[k])} {t}" for k, t in ISSUES.items()), leakage["leakage_rate"])


if __name__ == "__main__":
    artifacts.run(main)
