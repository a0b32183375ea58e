"""audit: data/embeddings + data/split + the source (data/images) -> reports/audit.json + reports/audit/.

What is wrong with the images, before anyone trains on them, from the frozen
backbone's embedding of every image of every split (the embed stage):

- label issues: images whose given label is more likely wrong than
  audit.label_issue_probability, with that probability, estimated from an
  out-of-sample classifier (audit.folds-fold, seeded) and the nearest
  neighbours' labels (audit.wrong_label_probability); their sum estimates how
  many labels are wrong in all (not with task: multi_label: docs/multilabel.md);
- near duplicates: pairs at or above audit.duplicate_similarity, within a
  split and across splits; the leakage rate is the share of val and test
  images with a near twin in train;
- outliers: images far from their nearest neighbours (audit.outlier_z);
- image quality: too dark, overexposed, blurred, near-constant, an extreme
  shape, a low-resolution original (the audit.* thresholds; blur and resolution
  relative to the data's own).

Each flag has a severity from 0 (at the threshold) to 1 (as far past it as can
be), or a probability for label issues. Each type gets a CSV (worst first; the
rows ``python -m pipeline relabel`` reads) and a gallery PNG of its first rows;
the counts, the review budget (how many images to look at, and how many real
issues to expect among them) and the leakage rate go to reports/audit.json,
DVC metrics that ``dvc metrics diff`` shows in review.
"""
from __future__ import annotations

import collections
import logging
import time

import numpy as np

from pipeline.lib import artifacts, audit, cli, confidence, images, params, plots_gallery, schemas, sources

PARAMS = ["audit", "seed", "task", "base.image_size"]
# The one list of issue types: each is reports/audit/<name>.csv and <name>.png, and a count in audit.json.
ISSUES = {"label_issues": "label issues", "near_duplicates": "near duplicates", "outliers": "outliers",
          "quality": "image quality"}
# probability: that the given label is wrong (label issues); severity: 0 at the flag's threshold, 1 as far
# past it as can be (quality, outliers); value: what was measured (similarity for near duplicates).
FIELDS = ["file", "split", "label", "suggested", "probability", "issue", "severity", "value", "twin", "twin_split"]
THUMBNAIL = 160
log = logging.getLogger("pipeline.stages.audit")


def read(embeddings, split) -> tuple[list[dict], np.ndarray, list[str]]:
    """The images of every split (with the split's labels), their embeddings and the labels."""
    rows = [{**row, "split": name} for name in schemas.SPLITS for row in schemas.read_csv(split / f"{name}.csv", schemas.SPLIT_FIELDS)]
    recorded, x = audit.read_embeddings(embeddings, rows)
    rows = [{**seen, **row} for seen, row in zip(recorded, rows)]
    return rows, audit.normalized(x), schemas.read_labels(split / "labels.json")


def label_issues(rows, x, idx, sim, labels, p) -> tuple[list[dict], dict]:
    """The images whose given label is wrong with probability >= audit.label_issue_probability,
    likeliest first, and the figures behind them. task: multi_label: none (docs/multilabel.md): the
    same scorer with each label a yes/no question was right about 1 flag in 7 on injected errors
    (bench/multilabel_audit.py), and a flag ships only when it is right most of the time."""
    if p.task == "multi_label":
        log.warning("label issues are not looked for with task: multi_label (docs/multilabel.md#the-audit-and-"
                    "relabel); near duplicates, leakage, outliers and image quality are")
        return [], {"label_issues_checked": False, "expected_among_flagged": 0.0}
    y = np.array([labels.index(r["label"]) for r in rows])
    probs = audit.label_probabilities(x, y, idx, sim, len(labels), p.audit.folds, p.seed)
    wrong, posterior, _ = audit.wrong_label_probability(confidence.recalibrated(probs, y), y)
    accuracy = float((probs.argmax(axis=1) == y).mean())
    log.info("out-of-sample accuracy of the audit's classifier on the given labels: %.3f", accuracy)
    posterior[np.arange(len(y)), y] = -1  # the suggestion is the likeliest other class
    found = [{"i": i, "suggested": labels[int(posterior[i].argmax())], "probability": float(wrong[i])}
             for i in np.flatnonzero(wrong >= p.audit.label_issue_probability)]
    found.sort(key=lambda f: (-f["probability"], rows[f["i"]]["path"]))
    return found, {"audit_classifier_accuracy": accuracy, "estimated_wrong_labels": round(float(wrong.sum()), 1),
                   "expected_among_flagged": round(sum(f["probability"] for f in found), 1)}


def near_duplicates(rows, x, idx, sim, p) -> tuple[list[dict], dict]:
    pairs = {}
    for i, j in zip(*np.nonzero(sim >= p.audit.duplicate_similarity)):
        a, b = sorted((int(i), int(idx[i, j])))
        pairs[a, b] = float(sim[i, j])
    found = []
    for (a, b), s in pairs.items():
        if rows[a]["split"] == "train":  # the evaluation side first: that is the image that leaks
            a, b = b, a
        found.append({"i": a, "twin": b, "value": s,
                      "issue": "across splits" if rows[a]["split"] != rows[b]["split"] else "within a split"})
    found.sort(key=lambda f: (f["issue"] != "across splits", -f["value"], rows[f["i"]]["path"]))
    # Leakage: the nearest training image of every val and test image, searched exhaustively.
    train = np.array([r["split"] == "train" for r in rows])
    evaluation = np.flatnonzero(~train)
    _, nearest_train = audit.nearest(x[evaluation], x[train], 1)
    leaked = collections.Counter(rows[i]["split"] for i, s in zip(evaluation, nearest_train[:, 0])
                                 if s >= p.audit.duplicate_similarity)
    leakage = {"leakage_rate": sum(leaked.values()) / max(1, len(evaluation)),
               "leaked": {name: leaked.get(name, 0) for name in ("val", "test")}}
    return found, leakage


def severity(past: float, limit: float) -> float:
    """0 at a flag's threshold, rising to 1 as the measure goes ``past`` it by ``limit``, its most."""
    return float(min(1.0, max(0.0, past / limit))) if limit > 0 else 1.0


def outliers(idx, sim, p) -> list[dict]:
    distance = 1 - sim.mean(axis=1)
    z = audit.robust_z(distance)
    found = [{"i": i, "value": float(z[i]), "severity": 1 - p.audit.outlier_z / float(z[i]), "twin": int(idx[i, 0])}
             for i in np.flatnonzero(z > p.audit.outlier_z)]
    return sorted(found, key=lambda f: -f["value"])


def quality(rows, p) -> list[dict]:
    """One finding per image and issue it has: the measured value and its severity, worst first.
    Brightness, entropy and shape are judged against fixed limits (what they mean does not depend
    on the data: docs/data.md#the-audit); blur and resolution against the data's own median."""
    a = p.audit
    short = np.array([min(int(r["width"]), int(r["height"])) for r in rows], float)
    long_ = np.array([max(int(r["width"]), int(r["height"])) for r in rows], float)
    blur = np.array([float(r["blur"]) for r in rows])
    blur_z = audit.robust_z(blur)
    small = min(a.low_resolution * float(np.median(short)), p.base.image_size) if len(rows) else 0.0
    checks = {  # issue: (the value shown, how far past its threshold, the most it can be past it)
        "too dark": (lambda i: float(rows[i]["brightness"]), lambda v: a.dark - v, a.dark),
        "overexposed": (lambda i: float(rows[i]["brightness"]), lambda v: v - a.bright, 1 - a.bright),
        "blurred": (lambda i: float(blur_z[i]), lambda v: 1 - a.blur_z / v if v > 0 else -1, 1.0),
        "low information": (lambda i: float(rows[i]["entropy"]), lambda v: a.low_information - v, a.low_information),
        "extreme aspect ratio": (lambda i: long_[i] / max(1.0, short[i]), lambda v: 1 - a.max_aspect_ratio / v, 1.0),
        "low resolution": (lambda i: short[i], lambda v: small - v, small),
    }
    found = []
    for i in range(len(rows)):
        for issue, (value, past, most) in checks.items():
            v = value(i)
            if past(v) > 0 and not (issue == "blurred" and short[i] < small):  # an upscaled original looks blurred
                found.append({"i": i, "issue": issue, "value": v, "severity": severity(past(v), most)})
    return sorted(found, key=lambda f: (-f["severity"], rows[f["i"]]["path"], f["issue"]))


def as_rows(found: list[dict], rows: list[dict]) -> list[dict]:
    out = []
    for f in found:
        row = rows[f["i"]]
        twin = rows[f["twin"]] if "twin" in f else {}
        out.append({"file": row["path"], "split": row["split"], "label": row["label"],
                    "suggested": f.get("suggested", ""), "issue": f.get("issue", ""),
                    **{k: f"{f[k]:.4g}" if k in f else "" for k in ("probability", "severity", "value")},
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
        return f"{name}\n{row['label']} -> {f['suggested']}\nwrong: {f['probability']:.0%}"
    if kind == "near_duplicates":
        return f"{row['split']}/{row['label']} | {twin['split']}/{twin['label']}\nsimilarity {f['value']:.3f}"
    if kind == "outliers":
        return f"{name}\n{row['split']}/{row['label']} (severity {f['severity']:.2f})"
    return f"{name}\n{f['issue']} (severity {f['severity']:.2f})"


def budget(found: dict, label_figures: dict) -> dict:
    """What to look at first, per issue type: the images flagged, and how many real issues to expect
    among them. Label issues expect the sum of their probabilities; the other flags are measured,
    not guessed, so each flag is one issue (whether it matters is the reviewer's call)."""
    out = {"label_issues": {"images": len(found["label_issues"]),
                            "expected_issues": label_figures["expected_among_flagged"]}}
    for kind in ("near_duplicates", "outliers", "quality"):
        flagged = len({f["i"] for f in found[kind]})
        out[kind] = {"images": flagged, "expected_issues": flagged}
    return out


def main() -> None:
    args = cli.start(__doc__, "source", "embeddings", "split", "metrics", "out", writes=("metrics", "out"))
    p = params.load(PARAMS)
    source = sources.locate(str(args.source))
    started = time.perf_counter()
    rows, x, labels = read(args.embeddings, args.split)
    idx, sim = audit.nearest(x, x, p.audit.neighbours, same=True)
    labelled, label_figures = label_issues(rows, x, idx, sim, labels, p)
    duplicates, leakage = near_duplicates(rows, x, idx, sim, p)
    found = {"label_issues": labelled, "near_duplicates": duplicates, "outliers": outliers(idx, sim, p),
             "quality": quality(rows, p)}
    seconds = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    for kind, title in ISSUES.items():
        with artifacts.atomic_file(args.out / f"{kind}.csv") as tmp:
            schemas.write_csv(tmp, as_rows(found[kind], rows), FIELDS)
        shown = found[kind][:p.audit.gallery]
        twins = [rows[f["twin"]] if kind == "near_duplicates" else None for f in shown]
        with artifacts.atomic_file(args.out / f"{kind}.png") as tmp:
            plots_gallery.gallery([tile(source, rows[f["i"]], t) for f, t in zip(shown, twins)],
                          [caption(kind, f, rows[f["i"]], t) for f, t in zip(shown, twins)], tmp,
                          f"{title}: {len(found[kind])} (reports/audit/{kind}.csv), first {len(shown)}",
                          empty=f"no {title}")
    metrics = {"images": len(rows), **{kind: len(found[kind]) for kind in ISSUES},
               "cross_split_duplicates": sum(f["issue"] == "across splits" for f in duplicates), **leakage,
               "quality_by_issue": dict(sorted(collections.Counter(f["issue"] for f in found["quality"]).items())),
               **label_figures, "review": budget(found, label_figures)}
    artifacts.write_json(args.metrics, metrics)
    log.info("audited %d images in %.1f s: %s; leakage rate %.3f", len(rows), seconds,
             ", ".join(f"{len(found[k])} {t}" for k, t in ISSUES.items()), leakage["leakage_rate"])
    if "estimated_wrong_labels" in label_figures:
        log.info("label issues: review %d images, expect about %.0f wrong labels among them (about %.0f in all "
                 "the data)", len(labelled), label_figures["expected_among_flagged"],
                 label_figures["estimated_wrong_labels"])


if __name__ == "__main__":
    cli.run(main)
