"""What to label next, measured: does `pipeline rank`'s order beat random picks? (docs/performance.md#what-to-label-next)

    python bench/active_learning.py [--seeds 0 1 2 3 4] [--initial 300] [--add 100 300]

On the default project's embeddings (data/embeddings from the embed stage: `make repro` first):
per seed, ``--initial`` random training images are "labelled", the rest of the training split
is the unlabelled pool. A classifier on the labelled images' embeddings (standardised logistic
regression, the audit's probe; its temperature fitted on the validation split as the calibrate
stage fits it) ranks the pool with confidence.rank, the code `pipeline rank` runs: by margin,
by entropy, and by margin without the near-duplicate filter; and, to show what that filter
is for, by margin with and without it on a pool where every image comes twice (as a mirrored
copy would: the same embedding). The top N of each order, or N random images, are added with
their true labels (a picked image's twin adds nothing new), the classifier is refitted, and its
accuracy on the validation and test splits is compared. A stand-in for the full
pipeline (a head on frozen features, not a fine-tuned model): cheap enough for many seeds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
from bench.common import ROOT, save, table  # noqa: E402
from pipeline.lib import audit, confidence, schemas  # noqa: E402

SIMILARITY = 0.92  # audit.duplicate_similarity's default, as pipeline rank's --similarity


def fit(x, y, classes: int):
    model = make_pipeline(StandardScaler(), LogisticRegression(C=audit.PROBE_C, max_iter=3000))
    model.fit(x, y)
    assert len(model.classes_) == classes, "a class is missing from the labelled images: raise --initial"
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", type=Path, default=ROOT / "data/embeddings")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--initial", type=int, default=300)
    parser.add_argument("--add", type=int, nargs="+", default=[100, 300])
    args = parser.parse_args()
    if not (args.embeddings / "features.npy").exists():
        sys.exit(f"{args.embeddings}: no features.npy; run `make repro` (or `dvc repro embed`) first")
    rows = schemas.read_csv(args.embeddings / "images.csv")
    x = np.load(args.embeddings / "features.npy")
    labels = sorted({r["label"] for r in rows})
    y = np.array([labels.index(r["label"]) for r in rows])
    part = {name: np.flatnonzero([r["split"] == name for r in rows]) for name in ("train", "val", "test")}
    if not all(len(v) for v in part.values()):
        sys.exit("the bench needs the source's own train/val/test split (the default data has one)")

    results = []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        labelled = rng.choice(part["train"], args.initial, replace=False)
        pool = np.setdiff1d(part["train"], labelled)
        model = fit(x[labelled], y[labelled], len(labels))
        t = confidence.fit_temperature(model.decision_function(x[part["val"]]), y[part["val"]])
        probs = confidence.calibrated(model.decision_function(x[pool]), t)
        twice = np.r_[probs, probs], np.r_[x[pool], x[pool]]  # every pool image and its twin
        orders = {"margin": confidence.rank(probs, x[pool], SIMILARITY, "margin")[0],
                  "entropy": confidence.rank(probs, x[pool], SIMILARITY, "entropy")[0],
                  "margin, no duplicate filter": confidence.rank(probs, x[pool], 1.01, "margin")[0],
                  "twins: margin": confidence.rank(*twice, SIMILARITY, "margin")[0] % len(pool),
                  "twins: margin, no duplicate filter": confidence.rank(*twice, 1.01, "margin")[0] % len(pool)}
        for n in args.add:
            picks = {"random": rng.choice(len(pool), n, replace=False), **{k: np.unique(v[:n]) for k, v in orders.items()}}
            row = {"seed": seed, "added": n}
            for name, chosen in picks.items():
                refit = fit(x[np.r_[labelled, pool[chosen]]], y[np.r_[labelled, pool[chosen]]], len(labels))
                for split in ("val", "test"):
                    row[f"{name} {split}"] = float(np.mean(refit.predict(x[part[split]]) == y[part[split]]))
            row["before val"] = float(np.mean(model.predict(x[part["val"]]) == y[part["val"]]))
            results.append(row)
            row.update({f"{k} distinct": len(v) for k, v in picks.items() if k.startswith("twins")})
            print(f"seed {seed}, +{n}: val accuracy before {row['before val']:.3f}; random {row['random val']:.3f}, "
                  + ", ".join(f"{k} {row[k + ' val']:.3f}" for k in orders), flush=True)

    strategies = ["random", "margin", "entropy", "margin, no duplicate filter", "twins: margin",
                  "twins: margin, no duplicate filter"]
    for split in ("val", "test"):
        table(f"{split} accuracy after adding N images to {args.initial} (gain over random in brackets)",
              ["seed", "N", *strategies],
              [[r["seed"], r["added"], *(f"{r[s + ' ' + split]:.3f}" + (
                  "" if s == "random" else f" ({r[s + ' ' + split] - r['random ' + split]:+.3f})") for s in strategies)]
               for r in results])
    summary = {s: {n: float(np.mean([r[f"{s} val"] - r["random val"] for r in results if r["added"] == n]))
                   for n in args.add} for s in strategies[1:]}
    print("\nmean validation gain over random:", summary)
    save("active_learning", {"command": "python bench/active_learning.py " + " ".join(sys.argv[1:]),
                             "initial": args.initial, "similarity": SIMILARITY, "runs": results,
                             "mean_val_gain_over_random": summary})


if __name__ == "__main__":
    main()
