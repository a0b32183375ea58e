"""task: multi_label: a candidate audit of label sets against known truth, on two composite sets.

    python bench/multilabel_audit.py [--seeds 1 2 3] [--keep DIR]   # writes bench/results/multilabel_audit.json

For each of two sets made by scripts/multilabel_clothing.py from the offline clothing photos (seed 0
at 160 px a quadrant, 1,543 images of 320 px; seed 1 at 64 px, 128 px images), a scratch project runs
`dvc repro split` (ingest, embed, split: real ImageNet weights), then the candidate below (the
single-label audit's scorer and noise model with each label a yes/no question) runs on its
embeddings, once on the labels as
made and, per seed, with noise injected into the training images: 5% of them lose one of their
labels (a missing label) and another 5% gain one label they do not show (a wrong extra label). A
flag is an (image, label) at or above audit.label_issue_probability; precision and recall are
counted on the training images' (image, label) pairs, against the injected ones, overall and per
kind, with the sum of the flags' probabilities (what audit.json promises) beside the hits. The
first seed's flags on each set go to a gallery in --keep DIR (or a scratch folder), to look at.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
from bench.common import CLOTHING, ROOT, environment, make_project, require_assets, run, save, table  # noqa: E402
from pipeline.lib import audit, confidence, images, multilabel, plots_gallery, schemas  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import KFold  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

SETS = {"composites 320 px": (0, 160), "composites 128 px": (1, 64)}  # name: (seed, tile)
SHARE = 0.05  # of the training images, per kind of noise


def composites(seed: int, tile: int):
    def fill(folder: Path) -> None:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "multilabel_clothing.py"), str(CLOTHING), str(folder),
                        "--seed", str(seed), "--tile", str(tile)], check=True)
    return fill


def label_set_probabilities(x: np.ndarray, y: np.ndarray, idx: np.ndarray, sim: np.ndarray, folds: int,
                            seed: int) -> np.ndarray:
    """The candidate: per image and label, the probability that the label is present, from evidence
    that never saw the image's own labels: the single-label audit's scorer (audit.label_probabilities)
    with each label a yes/no question (a logistic regression per label on the other folds, and the
    neighbours' votes for present and absent)."""
    n, k = y.shape
    probs = np.zeros((n, k))
    for fit_on, held in KFold(n_splits=folds, shuffle=True, random_state=seed).split(x):
        scale = StandardScaler().fit(x[fit_on])
        seen, unseen = scale.transform(x[fit_on]), scale.transform(x[held])
        for j in range(k):
            if y[fit_on, j].min() == y[fit_on, j].max():
                probs[held, j] = y[fit_on[0], j]
            else:
                probs[held, j] = LogisticRegression(C=audit.PROBE_C, max_iter=1000).fit(
                    seen, y[fit_on, j]).predict_proba(unseen)[:, 1]
    weights = np.exp((sim - 1) / audit.VOTE_WIDTH)
    votes = ((weights[:, :, None] * y[idx]).sum(axis=1) + audit.VOTE_FLOOR) / (
        weights.sum(axis=1)[:, None] + 2 * audit.VOTE_FLOOR)
    return (probs + votes) / 2


def wrong_label_set(q: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per image and label, the probability that the given answer is wrong: the single-label audit's
    noise model (audit.wrong_label_probability) with each label as two classes, absent and present."""
    wrong = np.zeros(y.shape)
    for j in range(y.shape[1]):
        if y[:, j].min() != y[:, j].max():
            two = np.stack([1 - q[:, j], q[:, j]], axis=1)
            wrong[:, j] = audit.wrong_label_probability(confidence.recalibrated(two, y[:, j].astype(int)),
                                                        y[:, j].astype(int))[0]
    return wrong


def injected(y: np.ndarray, train: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, truth: the (image, label) pairs changed): SHARE of the training images with a
    label lose one, another SHARE gain one they do not carry."""
    rng = np.random.default_rng(seed)
    noisy, truth = y.copy(), np.zeros(y.shape, bool)
    losing = rng.choice(np.flatnonzero(train & y.any(axis=1)), int(SHARE * train.sum()), replace=False)
    rest = np.setdiff1d(np.flatnonzero(train & ~y.all(axis=1)), losing)
    gaining = rng.choice(rest, int(SHARE * train.sum()), replace=False)
    for i in losing:
        j = rng.choice(np.flatnonzero(y[i]))
        noisy[i, j], truth[i, j] = 0, True
    for i in gaining:
        j = rng.choice(np.flatnonzero(y[i] == 0))
        noisy[i, j], truth[i, j] = 1, True
    return noisy, truth


def counted(flagged: np.ndarray, truth: np.ndarray, wrong: np.ndarray, where: np.ndarray) -> dict:
    hits = int((flagged & truth & where).sum())
    n_flagged, n_truth = int((flagged & where).sum()), int((truth & where).sum())
    return {"injected": n_truth, "flagged": n_flagged, "hits": hits, "precision": hits / max(1, n_flagged),
            "recall": hits / max(1, n_truth), "expected_hits": round(float(wrong[flagged & where].sum()), 1)}


def measure(project: Path, name: str, seeds: list[int], p: dict, out: Path) -> dict:
    rows = schemas.read_csv(project / "data/embeddings/images.csv")
    x = audit.normalized(np.load(project / "data/embeddings/features.npy"))
    labels = schemas.read_labels(project / "data/split/labels.json")
    y = multilabel.targets(rows, labels)
    train_paths = {r["path"] for r in schemas.read_csv(project / "data/split/train.csv")}
    train = np.array([r["path"] in train_paths for r in rows])
    idx, sim = audit.nearest(x, x, p["neighbours"], same=True)
    threshold = p["label_issue_probability"]

    def flags(labels_given, seed):
        q = label_set_probabilities(x, labels_given, idx, sim, p["folds"], seed)
        wrong = wrong_label_set(q, labels_given)
        return q, wrong, wrong >= threshold

    q, wrong, flagged = flags(y, 0)
    result = {"images": len(rows), "train": int(train.sum()), "labels": len(labels),
              "clean": {"flagged": int(flagged.sum()), "estimated_wrong": round(float(wrong.sum()), 1),
                        "agreement_with_given": float(((q >= 0.5) == (y > 0)).mean())}, "runs": []}
    rowwise = np.broadcast_to(train[:, None], y.shape)
    for seed in seeds:
        noisy, truth = injected(y, train, seed)
        _, wrong, flagged = flags(noisy, seed)
        missing, extra = truth & (noisy == 0), truth & (noisy == 1)
        result["runs"].append({"seed": seed, "all": counted(flagged, truth, wrong, rowwise),
                               "missing": counted(flagged & (noisy == 0), missing, wrong, rowwise),
                               "extra": counted(flagged & (noisy == 1), extra, wrong, rowwise)})
        if seed == seeds[0]:
            pairs = sorted(zip(*np.nonzero(flagged & rowwise)), key=lambda ij: -wrong[ij])[:24]
            plots_gallery.gallery(
                [images.thumbnail(project / "data/images" / rows[i]["path"], 160) for i, _ in pairs],
                [f"{'extra' if noisy[i, j] else 'missing'} {labels[j]} {wrong[i, j]:.2f}\n"
                 f"{'INJECTED' if truth[i, j] else 'not injected'}" for i, j in pairs],
                out / f"{name.replace(' ', '-')}-label-issues.png", f"{name}, seed {seed}: flagged, worst first",
                columns=6)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--keep", type=Path, help="folder for the galleries (default: a scratch folder, printed)")
    args = ap.parse_args()
    require_assets()
    p = yaml.safe_load((ROOT / "params.yaml").read_text())["audit"]
    out = args.keep or Path(tempfile.mkdtemp(prefix="bench-multilabel-audit-galleries-"))
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-multilabel-audit-") as tmp:
        tmp = Path(tmp)
        env = environment(tmp)
        for name, (seed, tile) in SETS.items():
            project = make_project(tmp / name.replace(" ", "-"), env, fill=composites(seed, tile),
                                   ingest={"labels_csv": "labels.csv"})
            text = (project / "params.yaml").read_text().replace("task: single_label", "task: multi_label")
            (project / "params.yaml").write_text(text)
            run(["dvc", "repro", "split"], project, env)
            results[name] = measure(project, name, args.seeds, p, out)
    for name, r in results.items():
        print(f"\n{name}: {r['images']} images ({r['train']} train), {r['labels']} labels; as made: "
              f"{r['clean']['flagged']} flags, {r['clean']['estimated_wrong']} wrong answers estimated")
        table(f"{name}: flags at audit.label_issue_probability {p['label_issue_probability']} on injected noise",
              ["seed", "kind", "injected", "flagged", "hits", "expected hits", "precision", "recall"],
              [[run_["seed"], kind, m["injected"], m["flagged"], m["hits"], m["expected_hits"], m["precision"],
                m["recall"]] for run_ in r["runs"] for kind, m in run_.items() if kind != "seed"])
    print(f"\ngalleries in {out}")
    save("multilabel_audit", {"threshold": p["label_issue_probability"], "share": SHARE, "sets": results})


if __name__ == "__main__":
    main()
