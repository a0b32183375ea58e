"""The data audit against known truth, and what it costs (docs/performance.md#the-data-audit).

    python bench/audit.py [--seeds 1 2 3 4 5] [--parts truth noise quality cost]

On scratch copies of the project with the offline clothing photos (real ImageNet weights), the
stages run as dvc.yaml runs them:

- truth: 30 training images copied into test after a resize, JPEG at quality 60, a small crop or a
  mirror flip; 6 images from other domains; 6 bad frames (dark, overexposed, blurred,
  near-constant, a 1:5 strip, a 40 px original). With split.group_near_duplicates off, the share
  of planted copies found as cross-split twins, the outliers and quality flags; with it on,
  whether any planted pair still straddles two splits.
- noise, on two datasets (the clothing photos, and the same shrunk to 128 px on the long side):
  5% and 10% of the training labels flipped uniformly to another class, and 5% flipped to their
  class's look-alike (the class the audit's classifier confuses it with most), per seed. The
  audit's own functions on the embed stage's embeddings (which do not depend on labels, so one
  embed serves every seed): each candidate scorer's accuracy against the clean labels and its
  precision at recall 0.8; the shipped probability's flagged set (precision, recall), its
  estimated count of wrong labels and its reliability table.
- quality, on the same two datasets: 2% of the images per kind (a Gaussian blur of 1.5% of the
  long side, darkening, overexposure, a 1:5 sliver) changed in memory and measured as embed
  measures them; precision and recall of the audit's quality flag per kind, and the untouched
  images flagged.
- cost: wall time and peak memory of ingest, embed, split and audit on the clothing photos (1x)
  and on each photo four times, turned by 0, 90, 180 and 270 degrees (4x).

Results go to bench/results/audit.json; galleries (the flagged images with their truth) stay in
the scratch folder for a person to look at (printed at the end).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter, ImageOps

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
from bench.common import ROOT, copy_clothing, environment, make_project, require_assets, save, table  # noqa: E402
from bench.scale import timed  # noqa: E402
from pipeline.lib import audit, confidence, images, quality, schemas  # noqa: E402

STAGES = ("ingest", "embed", "split", "audit")
DUPLICATES = 30
TRANSFORMS = ("resize", "jpeg60", "crop", "flip")


def stage(name: str, project: Path, env: dict) -> tuple[float, float, str]:
    """Run one stage's command from dvc.yaml in ``project``: (seconds, peak MB, output)."""
    cmd = yaml.safe_load((project / "dvc.yaml").read_text())["stages"][name]["cmd"]
    return timed(["bash", "-c", cmd], project, env)


def set_param(project: Path, section: str, key: str, value) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def transformed(path: Path, kind: str, rng: np.random.Generator) -> Image.Image:
    im = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    w, h = im.size
    if kind == "resize":
        return im.resize((w // 2, h // 2), Image.Resampling.LANCZOS)
    if kind == "crop":  # 5-8% off two edges, at a random corner
        cw, ch = (int(s * rng.uniform(0.92, 0.95)) for s in (w, h))
        x, y = rng.choice([0, w - cw]), rng.choice([0, h - ch])
        return im.crop((x, y, x + cw, y + ch))
    if kind == "flip":
        return ImageOps.mirror(im)
    return im  # jpeg60: the quality is set when saving


def other_domains(rng: np.random.Generator) -> list[Image.Image]:
    """Six images that are no clothing photo: two sample photos of scikit-learn and one of
    matplotlib (a building, a flower, a portrait), noise, a page of text and a synthetic shape."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photos.append(Image.open(f).convert("RGB"))
    noise = Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))
    text = Image.new("RGB", (400, 300), "white")
    for line in range(14):
        ImageDraw.Draw(text).text((10, 10 + 20 * line), "the quick brown fox jumps over the lazy dog " * 2,
                                  fill="black")
    shape = Image.new("RGB", (300, 300), (20, 160, 40))
    ImageDraw.Draw(shape).ellipse((60, 60, 240, 240), fill=(230, 30, 200))
    return photos + [noise, text, shape]


def bad_frames(path: Path) -> dict[str, Image.Image]:
    im = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    a = np.asarray(im, dtype=np.float32)
    w, h = im.size
    return {"too dark": Image.fromarray((a * 0.12).astype(np.uint8)),
            "overexposed": Image.fromarray(np.clip(a * 0.15 + 225, 0, 255).astype(np.uint8)),
            "blurred": im.filter(ImageFilter.GaussianBlur(8)),
            "low information": Image.new("RGB", im.size, (128, 128, 128)),
            "extreme aspect ratio": im.crop((0, h // 2 - w // 10, w, h // 2 + w // 10)),
            "low resolution": im.resize((40, 40))}


def plant(folder: Path, seed: int) -> dict:
    """Add the planted images to a copy of the clothing photos; return what was planted where."""
    rng = np.random.default_rng(seed)
    train = sorted(p for p in (folder / "train").rglob("*.jpg"))
    chosen = [train[i] for i in rng.choice(len(train), DUPLICATES + 7, replace=False)]
    pairs = []
    for k, original in enumerate(chosen[:DUPLICATES]):
        kind = TRANSFORMS[k % len(TRANSFORMS)]
        copy = folder / "test" / original.parent.name / f"planted-copy-{k:02d}-{kind}.jpg"
        transformed(original, kind, rng).save(copy, quality=60 if kind == "jpeg60" else 90)
        pairs.append((copy.relative_to(folder).as_posix(), original.relative_to(folder).as_posix(), kind))
    classes = sorted(p.name for p in (folder / "train").iterdir())
    foreign = []
    for k, im in enumerate(other_domains(rng)):
        path = folder / "train" / classes[k % len(classes)] / f"planted-foreign-{k}.jpg"
        im.save(path, quality=90)
        foreign.append(path.relative_to(folder).as_posix())
    frames = {}
    for issue, im in bad_frames(chosen[DUPLICATES]).items():
        path = folder / "train" / chosen[DUPLICATES].parent.name / f"planted-{issue.replace(' ', '-')}.jpg"
        im.save(path, quality=90)
        frames[path.relative_to(folder).as_posix()] = issue
    return {"pairs": pairs, "foreign": foreign, "frames": frames}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def planted_truth(project: Path, env: dict, planted: dict) -> dict:
    for name in STAGES:
        set_param(project, "split", "group_near_duplicates", False)
        stage(name, project, env)
    found = {frozenset((r["file"], r["twin"])) for r in read_csv(project / "reports/audit/near_duplicates.csv")
             if r["issue"] == "across splits"}
    per_kind = {kind: [frozenset(p[:2]) in found for p in planted["pairs"] if p[2] == kind] for kind in TRANSFORMS}
    sims = similarity_of(project, planted["pairs"])
    outliers = {r["file"]: float(r["value"]) for r in read_csv(project / "reports/audit/outliers.csv")}
    quality = {(r["file"], r["issue"]) for r in read_csv(project / "reports/audit/quality.csv")}
    result = {
        "duplicate_recall": sum(map(sum, per_kind.values())) / len(planted["pairs"]),
        "duplicate_recall_by_transform": {k: sum(v) / len(v) for k, v in per_kind.items()},
        "planted_similarity_min_by_transform": {k: min(s for s, p in zip(sims, planted["pairs"]) if p[2] == k)
                                                for k in TRANSFORMS},
        "foreign_flagged_as_outliers": sum(f in outliers for f in planted["foreign"]) / len(planted["foreign"]),
        "outliers_flagged": len(outliers),
        "outliers_not_planted": sorted(f for f in outliers if f not in planted["foreign"]),
        "bad_frames_flagged": {issue: (f, issue) in quality for f, issue in planted["frames"].items()},
        "quality_flags_not_planted": sorted(f"{f}: {i}" for f, i in quality if f not in planted["frames"]),
        "audit_metrics_grouping_off": yaml.safe_load((project / "reports/audit.json").read_text()),
    }
    set_param(project, "split", "group_near_duplicates", True)
    for name in ("split", "audit"):
        stage(name, project, env)
    where = {}
    for split in schemas.SPLITS:
        where.update({r["path"]: split for r in read_csv(project / f"data/split/{split}.csv")})
    result["planted_pairs_straddling_splits_grouping_on"] = sum(where[a] != where[b] for a, b, _ in planted["pairs"])
    result["audit_metrics_grouping_on"] = yaml.safe_load((project / "reports/audit.json").read_text())
    result["split_report_grouping_on"] = {k: v for k, v in yaml.safe_load(
        (project / "reports/split.json").read_text()).items() if k in ("images", "near_duplicate_groups",
                                                                        "moved_to_a_twin's_split")}
    return result


def similarity_of(project: Path, pairs: list) -> list[float]:
    rows = read_csv(project / "data/embeddings/images.csv")
    at = {r["path"]: i for i, r in enumerate(rows)}
    x = audit.normalized(np.load(project / "data/embeddings/features.npy"))
    return [float(x[at[a]] @ x[at[b]]) for a, b, _ in pairs]


KINDS = {"uniform 5%": ("uniform", 0.05), "uniform 10%": ("uniform", 0.10), "look-alike 5%": ("look-alike", 0.05)}
CANDIDATES = ("logistic regression", "neighbour vote", "both (shipped)")
BINS = np.linspace(0, 1, 11)


def embedded(project: Path) -> tuple[list[dict], np.ndarray, np.ndarray, list[str]]:
    """The embed stage's rows and normalised embeddings of ``project``, and the given labels."""
    rows = read_csv(project / "data/embeddings/images.csv")
    x = audit.normalized(np.load(project / "data/embeddings/features.npy"))
    labels = sorted({r["label"] for r in rows})
    return rows, x, np.array([labels.index(r["label"]) for r in rows]), labels


def flipped(given, train, kind, rate, lookalike, seed):
    """Seeded label noise on the training images: uniform to any other class, or each to its class's
    look-alike (the class the audit's classifier confuses it with most on the clean labels)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(np.flatnonzero(train), int(rate * train.sum()), replace=False)
    y = given.copy()
    n = len(lookalike)
    y[chosen] = (y[chosen] + rng.integers(1, n, len(chosen))) % n if kind == "uniform" else lookalike[y[chosen]]
    truth = np.zeros(len(y), bool)
    truth[chosen] = True
    return y, truth


def precision_at_recall(score, truth, recall=0.8) -> float:
    order = np.argsort(-score, kind="stable")
    hits = np.cumsum(truth[order])
    return float(hits[np.searchsorted(hits, recall * truth.sum())] / (np.searchsorted(hits, recall * truth.sum()) + 1))


def label_noise(project: Path, name: str, seeds: list[int], p: dict, out: Path) -> dict:
    """Every setting of KINDS, each seed: the candidates' accuracy against the clean labels and
    ranking (precision at recall 0.8), and the shipped probability's flagged set, estimated count
    and reliability (on the training images, where the noise is)."""
    rows, x, given, labels = embedded(project)
    train = np.array([r["split"] == "train" for r in rows])
    idx, sim = audit.nearest(x, x, p["neighbours"], same=True)
    c = len(labels)

    def score(y, seed):
        lr = audit.out_of_sample_probabilities(x, y, c, p["folds"], seed)
        vote = audit.neighbour_votes(idx, sim, y, c)
        return {"logistic regression": lr, "neighbour vote": vote, "both (shipped)": (lr + vote) / 2}

    clean = score(given, 0)
    confused = np.zeros((c, c))
    np.add.at(confused, (given, clean["both (shipped)"].argmax(axis=1)), 1)
    np.fill_diagonal(confused, -1)
    lookalike = confused.argmax(axis=1)
    wrong_clean = audit.wrong_label_probability(confidence.recalibrated(clean["both (shipped)"], given), given)[0]
    result = {"images": len(rows), "train": int(train.sum()), "lookalike": {labels[i]: labels[j] for i, j in enumerate(lookalike)},
              "clean": {"accuracy_on_given_labels": {k: float((v.argmax(axis=1) == given).mean()) for k, v in clean.items()},
                        "accuracy_on_given_test_labels": {k: float((v.argmax(axis=1) == given)[[r["split"] == "test" for r in rows]].mean())
                                                          for k, v in clean.items()},
                        "flagged": int((wrong_clean >= p["label_issue_probability"]).sum()),
                        "estimated_wrong_train": float(wrong_clean[train].sum())},
              "settings": {}}
    for setting, (kind, rate) in KINDS.items():
        runs, pooled = [], np.zeros((len(BINS) - 1, 2))
        for seed in seeds:
            y, truth = flipped(given, train, kind, rate, lookalike, seed)
            probs = score(y, seed)
            wrong, posterior, _ = audit.wrong_label_probability(confidence.recalibrated(probs["both (shipped)"], y), y)
            flagged = (wrong >= p["label_issue_probability"]) & train
            hits = int((flagged & truth).sum())
            runs.append({"seed": seed, "injected": int(truth.sum()), "flagged": int(flagged.sum()),
                         "precision": hits / max(1, flagged.sum()), "recall": hits / truth.sum(),
                         "estimated": float(wrong[train].sum()),
                         "candidates": {k: {"accuracy": float((v.argmax(axis=1) == given).mean()),
                                            "precision_at_recall_0.8": precision_at_recall(
                                                1 - v[np.arange(len(y)), y][train], truth[train])}
                                        for k, v in probs.items()}})
            at = np.clip(np.digitize(wrong[train], BINS) - 1, 0, len(BINS) - 2)
            np.add.at(pooled, (at, 0), 1)
            np.add.at(pooled, (at, 1), truth[train])
            if seed == seeds[0] and setting == "uniform 5%":  # what a person would see first, to look at
                gallery(project, rows, np.flatnonzero(flagged), wrong, posterior, y, truth, labels,
                        out / f"{name}-label-issues.png", f"{name}, {setting}, seed {seed}: flagged, worst first")
        result["settings"][setting] = {
            "runs": runs, "reliability": [{"low": float(BINS[i]), "high": float(BINS[i + 1]), "images": int(n),
                                           "wrong": float(w / n) if n else None} for i, (n, w) in enumerate(pooled)]}
    return result


def gallery(project, rows, flagged, wrong, posterior, y, truth, labels, path, title) -> None:
    from pipeline.lib import plots_gallery
    first = sorted(flagged, key=lambda i: -wrong[i])[:24]
    posterior = posterior.copy()
    posterior[np.arange(len(y)), y] = -1
    plots_gallery.gallery([images.thumbnail(project / "data/images" / rows[i]["path"], 160) for i in first],
                  [f"{labels[y[i]]} -> {labels[posterior[i].argmax()]} {wrong[i]:.2f}\n"
                   f"{'flipped' if truth[i] else 'NOT flipped'}" for i in first], path, title, columns=6)


def downscaled(side: int):
    """The clothing photos, each shrunk to ``side`` pixels on its long side: a second set of another resolution."""
    def fill(folder: Path) -> None:
        copy_clothing(folder)
        for path in sorted(folder.rglob("*.jpg")):
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((side, side), Image.Resampling.LANCZOS)
            im.save(path, quality=90)
    return fill


QUALITY_KINDS = {  # planted problem: (the issue it must be flagged as, how it is made)
    "blur": ("blurred", lambda im: im.filter(ImageFilter.GaussianBlur(0.015 * max(im.size)))),
    "darkening": ("too dark", lambda im: Image.fromarray((np.asarray(im) * 0.12).astype(np.uint8))),
    "overexposure": ("overexposed", lambda im: Image.fromarray(np.clip(np.asarray(im, np.float32) * 0.15 + 225, 0, 255)
                                                               .astype(np.uint8))),
    "sliver": ("extreme aspect ratio", lambda im: im.crop((0, im.height // 2 - im.width // 10, im.width,
                                                           im.height // 2 + im.width // 10))),
}


def quality_truth(project: Path, name: str, share: float, seed: int, out: Path) -> dict:
    """A seeded ``share`` of the images per kind of QUALITY_KINDS, changed in memory and measured as
    embed measures them; the audit's quality check on all: precision and recall per kind, and
    the share of untouched images flagged."""
    from pipeline.lib import params, plots_gallery
    from pipeline.stages import audit as audit_stage
    rows = read_csv(project / "data/embeddings/images.csv")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    n = int(round(share * len(rows)))
    planted = {}
    for k, (kind, (_, make)) in enumerate(QUALITY_KINDS.items()):
        for i in order[k * n:(k + 1) * n]:
            with Image.open(project / "data/images" / rows[i]["path"]) as im:
                im = make(ImageOps.exif_transpose(im).convert("RGB"))
            rows[i] = {**rows[i], "width": im.width, "height": im.height, **quality.measure(im)}
            planted[int(i)] = kind
    p = params.parse(yaml.safe_load((project / "params.yaml").read_text()))
    found = audit_stage.quality(rows, SimpleNamespace(audit=p["audit"], base=p["base"]))
    result = {"images": len(rows), "planted_per_kind": n, "kinds": {}}
    for kind, (issue, _) in QUALITY_KINDS.items():
        flagged = {f["i"] for f in found if f["issue"] == issue}
        truth = {i for i, k in planted.items() if k == kind}
        result["kinds"][kind] = {"issue": issue, "flagged": len(flagged), "precision": len(flagged & truth) / max(1, len(flagged)),
                                 "recall": len(flagged & truth) / len(truth)}
    clean = [f for f in found if f["i"] not in planted]
    result["clean_flagged"] = len({f["i"] for f in clean})
    result["clean_flagged_share"] = len({f["i"] for f in clean}) / (len(rows) - len(planted))
    result["clean_flags"] = sorted(f"{rows[f['i']]['path']}: {f['issue']} ({f['severity']:.2f})" for f in clean)
    worst = clean[:16]
    if worst:
        plots_gallery.gallery([images.thumbnail(project / "data/images" / rows[f["i"]]["path"], 160) for f in worst],
                      [f"{f['issue']} {f['severity']:.2f}" for f in worst], out / f"{name}-quality-clean.png",
                      f"{name}: untouched images flagged, worst first", columns=4)
    return result


def turned(folder: Path) -> None:
    """The clothing photos and each one turned by 90, 180 and 270 degrees: 4x the images, as varied."""
    copy_clothing(folder)
    for path in sorted(folder.rglob("*.jpg")):
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            for angle in (90, 180, 270):
                im.rotate(angle, expand=True).save(path.with_name(f"{path.stem}-{angle}.jpg"), quality=90)


def cost(tmp: Path, env: dict) -> list[dict]:
    out = []
    for factor, fill in ((1, copy_clothing), (4, turned)):
        project = tmp / f"cost-{factor}x"
        make_project(project, env, fill=fill)
        n = sum(1 for _ in (project / "data" / "images").rglob("*.jpg"))
        row = {"images": n}
        for name in STAGES:
            seconds, peak, _ = stage(name, project, env)
            row[name] = {"seconds": round(seconds, 1), "seconds_per_1000": round(1000 * seconds / n, 2),
                         "peak_mb": round(peak)}
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="see above")
    args = parser.parse_args()
    require_assets()
    tmp = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    env = environment(tmp)
    previous = ROOT / "bench" / "results" / "audit.json"
    result = {k: v for k, v in (json.loads(previous.read_text()) if previous.exists() else {}).items()
              if k != "machine"}  # the parts not rerun keep their figures (each part's date is its own run's)
    if "truth" in args.parts:
        result.update(truth(tmp, env))
    if {"noise", "quality"} & set(args.parts):
        params = yaml.safe_load((ROOT / "params.yaml").read_text())["audit"]
        if not isinstance(result.get("label_noise"), dict):  # the 2026-12-02 results: one dataset, another method
            result.pop("label_noise", None)
        for name, fill in DATASETS.items():
            project = make_project(tmp / name, env, fill=fill)
            for stage_name in ("ingest", "embed"):
                stage(stage_name, project, env)
            if "noise" in args.parts:
                result.setdefault("label_noise", {})[name] = label_noise(project, name, args.seeds, params, tmp)
                result["label_noise_date"] = datetime.date.today().isoformat()
                print_noise(name, result["label_noise"][name])
            if "quality" in args.parts:
                result.setdefault("quality", {})[name] = quality_truth(project, name, 0.02, 0, tmp)
                result["quality_date"] = datetime.date.today().isoformat()
                q = result["quality"][name]
                table(f"quality, {name}: {q['planted_per_kind']} planted per kind; untouched images flagged: "
                      f"{q['clean_flagged']} ({q['clean_flagged_share']:.2%})", ["kind", "issue", "flagged", "precision", "recall"],
                      [[k, v["issue"], v["flagged"], v["precision"], v["recall"]] for k, v in q["kinds"].items()])
    if "cost" in args.parts:
        result["cost"], result["cost_date"] = cost(tmp, env), datetime.date.today().isoformat()
        table("cost", ["images", *(f"{s} s / 1000" for s in STAGES), *(f"{s} peak MB" for s in STAGES)],
              [[r["images"], *(r[s]["seconds_per_1000"] for s in STAGES), *(r[s]["peak_mb"] for s in STAGES)]
               for r in result["cost"]])
    save("audit", result)
    print(f"scratch copies, with galleries to look at: {tmp}")


def print_noise(name: str, r: dict) -> None:
    rows = []
    for setting, v in r["settings"].items():
        runs = v["runs"]
        mean = lambda key: float(np.mean([x[key] for x in runs]))  # noqa: E731
        rows.append([setting, runs[0]["injected"], mean("flagged"), mean("precision"), min(x["precision"] for x in runs),
                     mean("recall"), min(x["recall"] for x in runs), mean("estimated")])
    table(f"label noise, {name} ({len(r['settings']['uniform 5%']['runs'])} seeds; clean data: {r['clean']['flagged']} flagged, "
          f"{r['clean']['estimated_wrong_train']:.0f} estimated wrong in train)",
          ["setting", "injected", "flagged", "precision", "min", "recall", "min", "estimated wrong"], rows)
    table(f"candidates, {name}: accuracy on the clean labels / precision at recall 0.8 (mean of seeds)",
          ["setting", *CANDIDATES],
          [[s, *(f"{np.mean([x['candidates'][c]['accuracy'] for x in v['runs']]):.3f} / "
                 f"{np.mean([x['candidates'][c]['precision_at_recall_0.8'] for x in v['runs']]):.3f}" for c in CANDIDATES)]
           for s, v in r["settings"].items()])
    table(f"reliability, {name}: training images per bin of the probability that the label is wrong, share injected",
          ["bin", *r["settings"]],
          [[f"{b['low']:.1f}-{b['high']:.1f}", *(f"{v['reliability'][i]['images']}: "
            + (f"{v['reliability'][i]['wrong']:.2f}" if v['reliability'][i]['images'] else "-")
            for v in r["settings"].values())] for i, b in enumerate(r["settings"]["uniform 5%"]["reliability"])])


def truth(tmp: Path, env: dict) -> dict:
    planted: dict = {}

    def fill(folder: Path) -> None:
        copy_clothing(folder)
        planted.update(plant(folder, 0))

    project = make_project(tmp / "planted", env, fill=fill)
    found = planted_truth(project, env, planted)
    print(yaml.safe_dump(found, sort_keys=False))
    return {"planted": found, "truth_date": datetime.date.today().isoformat()}


PARTS = ("truth", "noise", "quality", "cost")
DATASETS = {"clothing": copy_clothing, "clothing-128px": downscaled(128)}


if __name__ == "__main__":
    main()
