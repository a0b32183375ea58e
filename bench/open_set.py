"""Unknown against classes the model never saw: the open-set test (docs/performance.md#calibration-and-unknown).

    python bench/open_set.py [--pairs 3] [--seed 0]

Needs a finished run (`make repro`): the embed stage's embeddings and the split. For each of
``--pairs`` disjoint pairs of classes (drawn with ``--seed``), the train_head recipe (params.yaml's
train_head section: ``models.build_head``, Adam, early stopping on the validation loss) is trained
on the frozen backbone's embeddings of the other classes' training images, and its temperature is
fitted on their validation images. The held-out pair's images (all splits: none was trained on)
are then the unknowns, the other classes' test images the knowns, and each score the calibrate
stage measures (the top calibrated probability, the maximum logit, the energy that ``known`` is
made of) gives an AUROC and a false-positive rate at 95% true-positive rate. Two scores on the
features themselves are measured beside them, as candidates that would need more than the logits
in every exported file: the Mahalanobis distance to the nearest class mean (Lee et al. 2018; L2-normalised
features, one Ledoit-Wolf shrunk covariance) and the cosine similarity to the 10th nearest training
image (Sun et al. 2022).

What it does not measure: the fine-tuned network (fine-tuning three more models costs three
pipeline runs); the head on frozen features is the same recipe's first half. Results go to
bench/results/open_set.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
from bench.common import ROOT, save, table  # noqa: E402
from pipeline.lib import audit, confidence, params, schemas  # noqa: E402

SCORES = ("probability", "max_logit", "energy", "mahalanobis", "knn")
NEIGHBOUR = 10  # the k of the k-nearest-neighbour score, as Sun et al. use it


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def feature_scores(x: np.ndarray, y: np.ndarray, parts: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """{part: {"mahalanobis", "knn"}}, higher = more like the training features ``x`` (labels ``y``)."""
    from sklearn.covariance import LedoitWolf

    x = unit(x)
    means = np.stack([x[y == c].mean(axis=0) for c in range(y.max() + 1)])
    precision = LedoitWolf().fit(x - means[y]).precision_
    found = {}
    for name, features in parts.items():
        f = unit(features)
        distance = np.min([np.einsum("ij,jk,ik->i", f - m, precision, f - m) for m in means], axis=0)
        found[name] = {"mahalanobis": -distance, "knn": np.sort(f @ x.T, axis=1)[:, -NEIGHBOUR]}
    return found


def train(x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray], n: int, hp, seed: int):
    """The train_head recipe on feature vectors: the head and a model of its logits."""
    import keras

    from pipeline.lib import models, training

    keras.utils.set_random_seed(seed)
    head = models.build_head(x, n, hp.hidden_units, hp.dropout)
    head.compile(optimizer=keras.optimizers.Adam(hp.learning_rate), loss=training.loss(hp.label_smoothing))
    head.fit(x, y, batch_size=hp.batch_size, epochs=hp.epochs, validation_data=val, verbose=0,
             callbacks=[keras.callbacks.EarlyStopping(patience=hp.patience, restore_best_weights=True)])
    return models.logits(head)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    p = params.load(["train_head", "seed"], ROOT / "params.yaml")
    rows = {part: schemas.read_csv(ROOT / "data/split" / f"{part}.csv") for part in ("train", "val", "test")}
    records, features = {}, {}
    for part, found in rows.items():
        records[part], features[part] = audit.read_embeddings(ROOT / "data/embeddings", found)
    classes = sorted({r["label"] for r in rows["train"]})
    order = np.random.default_rng(args.seed).permutation(len(classes))
    pairs = [tuple(sorted(classes[i] for i in order[2 * k:2 * k + 2])) for k in range(args.pairs)]
    results, lines = [], []
    for pair in pairs:
        known = [c for c in classes if c not in pair]
        index = {c: i for i, c in enumerate(known)}
        part = {}
        for name in ("train", "val", "test"):
            labels = np.array([r["label"] for r in rows[name]])
            inside = np.isin(labels, known)
            part[name] = (features[name][inside], np.array([index[c] for c in labels[inside]]),
                          features[name][~inside])
        logits = train(part["train"][0], part["train"][1], part["val"][:2], len(known), p.train_head, p.seed)
        raw = {name: logits.predict(x, verbose=0).astype(np.float64) for name, x in
               (("val", part["val"][0]), ("test", part["test"][0]),
                ("unknown", np.concatenate([part[name][2] for name in ("train", "val", "test")])))}
        t = confidence.fit_temperature(raw["val"], part["val"][1])
        unknown = np.concatenate([part[name][2] for name in ("train", "val", "test")])
        extra = feature_scores(part["train"][0], part["train"][1], {"test": part["test"][0], "unknown": unknown})
        scores = {name: {**confidence.scores(raw[name], t), **extra[name]} for name in ("test", "unknown")}
        accuracy = float(np.mean(raw["test"].argmax(axis=1) == part["test"][1]))
        row = {"held_out": list(pair), "known_test_images": len(raw["test"]), "unknown_images": len(raw["unknown"]),
               "accuracy": accuracy,
               **{name: confidence.separation(scores["test"][name], scores["unknown"][name]) for name in SCORES}}
        results.append(row)
        lines.append([" + ".join(pair), f"{accuracy:.3f}", row["unknown_images"],
                      *[f"{row[s]['auroc']:.3f} / {row[s]['fpr_at_95_tpr']:.3f}" for s in SCORES]])
    table("Held-out classes as unknowns (AUROC / FPR at 95% TPR)",
          ["held out", "accuracy on the rest", "unknown images", *SCORES], lines)
    save("open_set", {"command": " ".join(["python bench/open_set.py", *sys.argv[1:]]), "pairs": results})


if __name__ == "__main__":
    main()
