"""The data audit against known truth, and what it costs (docs/performance.md#the-data-audit).

    python bench/audit.py [--seeds 1 2 3 4 5] [--parts truth cost]

On a scratch copy of the project with the offline clothing photos (real ImageNet weights), the
stages run as dvc.yaml runs them (ingest, embed, split, audit):

1. planted truth: 30 training images copied into test after a resize, JPEG at quality 60, a
   small crop or a mirror flip; 6 images from other domains; 6 bad frames (dark, overexposed,
   blurred, near-constant, a 1:5 strip, a tiny original). With split.group_near_duplicates off,
   the share of planted copies found as cross-split twins, the outliers and quality flags; with
   it on, whether any planted pair still straddles two splits.
2. label noise: 5% of the training labels flipped to another class (seeded, per seed), the
   audit's own functions (audit.out_of_sample_probabilities, audit.label_issues) on the clean
   images' embeddings: precision and recall of the flagged training images against the flips.
   Embeddings do not depend on labels, so one embed serves every seed.
3. cost: wall time and peak memory of ingest, embed, split and audit on the
   clothing photos (1x) and on each photo four times, turned by 0, 90, 180 and 270 degrees (4x).

Results go to bench/results/audit.json; galleries of the flagged images stay in the scratch folder
for a person to look at (printed at the end).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter, ImageOps

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
from bench.common import ROOT, copy_clothing, environment, make_project, require_assets, save, table  # noqa: E402
from bench.scale import timed  # noqa: E402
from pipeline.lib import audit, images  # noqa: E402

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
            "tiny": im.resize((40, 40))}


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
    outliers = {r["file"]: float(r["score"]) for r in read_csv(project / "reports/audit/outliers.csv")}
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
    for split in images.SPLITS:
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


def label_noise(project: Path, seeds: list[int], folds: int, out: Path) -> list[dict]:
    rows = read_csv(project / "data/embeddings/images.csv")
    clean = [i for i, r in enumerate(rows) if "/planted-" not in r["path"]]
    rows = [rows[i] for i in clean]
    x = audit.normalized(np.load(project / "data/embeddings/features.npy")[clean])
    labels = sorted({r["label"] for r in rows})
    given = np.array([labels.index(r["label"]) for r in rows])
    train = np.array([r["split"] == "train" for r in rows])
    results = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        y, flipped = given.copy(), rng.choice(np.flatnonzero(train), int(0.05 * train.sum()), replace=False)
        y[flipped] = (y[flipped] + rng.integers(1, len(labels), len(flipped))) % len(labels)
        truth = np.zeros(len(y), bool)
        truth[flipped] = True
        probs = audit.out_of_sample_probabilities(x, y, len(labels), folds, seed)
        flagged = audit.label_issues(probs, y) & train
        hits = int((flagged & truth).sum())
        ranked = [i for i in np.argsort(probs[np.arange(len(y)), y], kind="stable") if train[i]][:len(flipped)]
        results.append({"seed": seed, "flipped": len(flipped), "flagged": int(flagged.sum()),
                        "precision": hits / max(1, flagged.sum()), "recall": hits / len(flipped),
                        "precision_at_flipped": float(truth[ranked].mean())})
        if seed == seeds[0]:  # the training images flagged that were not flipped, worst first, to look at
            false = [i for i in np.argsort(probs[np.arange(len(y)), y]) if flagged[i] and not truth[i]][:24]
            from pipeline.lib import plots
            plots.gallery([images.thumbnail(project / "data/images" / rows[i]["path"], 160) for i in false],
                          [f"{rows[i]['path'].split('/')[-1][:12]}\n{labels[y[i]]} -> {labels[probs[i].argmax()]}"
                           for i in false], out / "label-false-positives.png",
                          "flagged, not flipped (seed %d): real mistakes?" % seed, columns=6)
    return results


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
    parser.add_argument("--parts", nargs="+", choices=("truth", "cost"), default=["truth", "cost"],
                        help="truth: 1 and 2 above; cost: 3")
    args = parser.parse_args()
    require_assets()
    tmp = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    env = environment(tmp)
    previous = ROOT / "bench" / "results" / "audit.json"
    result = {k: v for k, v in (json.loads(previous.read_text()) if previous.exists() else {}).items()
              if k != "machine"}  # the part not rerun keeps its figures (each part's date is its own run's)
    if "truth" in args.parts:
        result.update(truth(tmp, env, args.seeds))
    if "cost" in args.parts:
        result["cost"], result["cost_date"] = cost(tmp, env), datetime.date.today().isoformat()
        table("cost", ["images", *(f"{s} s / 1000" for s in STAGES), *(f"{s} peak MB" for s in STAGES)],
              [[r["images"], *(r[s]["seconds_per_1000"] for s in STAGES), *(r[s]["peak_mb"] for s in STAGES)]
               for r in result["cost"]])
    save("audit", result)
    print(f"scratch copies, with galleries to look at: {tmp}")


def truth(tmp: Path, env: dict, seeds: list[int]) -> dict:
    planted: dict = {}

    def fill(folder: Path) -> None:
        copy_clothing(folder)
        planted.update(plant(folder, 0))

    project = make_project(tmp / "planted", env, fill=fill)
    found = planted_truth(project, env, planted)
    folds = yaml.safe_load((ROOT / "params.yaml").read_text())["audit"]["folds"]
    noise = label_noise(project, seeds, folds, tmp)
    table("label noise: 5% of training labels flipped", ["seed", "flipped", "flagged", "precision", "recall",
                                                         "precision at k=flipped"],
          [[r["seed"], r["flipped"], r["flagged"], r["precision"], r["recall"], r["precision_at_flipped"]]
           for r in noise])
    print(yaml.safe_dump(found, sort_keys=False))
    return {"planted": found, "label_noise": noise, "truth_date": datetime.date.today().isoformat()}


if __name__ == "__main__":
    main()
