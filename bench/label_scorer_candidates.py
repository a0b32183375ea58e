"""Two more candidate scorers for the audit's wrong labels, against the shipped one, on the same
injected flips (docs/performance.md#the-data-audit).

    python bench/label_scorer_candidates.py [--seeds 1 2 3]    # after `make repro`, in this checkout

Per seed, 5% or 10% of the training labels are flipped (uniformly, or to the class's look-alike,
as bench/audit.py does) and each scorer ranks the training images by 1 - its probability of the
given label (or by its margin); reported: accuracy against the clean labels, precision at recall
0.8 (mean and minimum over seeds), and for the probabilities the flagged set at
audit.label_issue_probability.

- multi-view: the out-of-fold logistic regression fitted on both views of each training image
  (its embedding and its augmented copy's cached feature, data/features) and predicting the mean
  of the two; with the neighbour vote, as shipped.
- area under the margin (Pleiss et al. 2020), cheaply: a softmax head trained by SGD on every
  image's embedding with the given labels, each image's margin (its label's logit minus the
  largest other) averaged over the epochs; alone, and its rank averaged with the shipped score's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
from bench.audit import flipped, precision_at_recall  # noqa: E402
from bench.common import ROOT, save, table  # noqa: E402
from pipeline.lib import audit, confidence, params, schemas, shards  # noqa: E402

SETTINGS = {"uniform 5%": ("uniform", 0.05), "uniform 10%": ("uniform", 0.10), "look-alike 5%": ("look-alike", 0.05)}
AUM_EPOCHS = (5, 20)


def interleaved(sizes: list[int], cycle: int) -> list[tuple[int, int]]:
    """(file, record) of each element in the order tf.data's deterministic interleave (block length 1)
    yields them: an exhausted slot takes the next file, and the turn passes to the next slot. Measured
    on TensorFlow 2.21 (shards.dataset, unshuffled); augmented_views() checks it against the embeddings
    and stops if another version orders them otherwise."""
    pending = list(range(len(sizes)))
    slots = [[f, 0] for f in pending[:cycle]]
    pending = pending[cycle:]
    out = []
    while any(slots):
        for k, slot in enumerate(slots):
            if not slot:
                continue
            if slot[1] >= sizes[slot[0]]:
                slots[k] = [pending.pop(0), 0] if pending else None
                continue
            out.append((slot[0], slot[1]))
            slot[1] += 1
    return out


def augmented_views(rows: list[dict], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image's row in data/features/train_x.npy's augmented copies (-1 if none), and that array,
    normalised: the features come in shards.dataset's interleaved order."""
    train = schemas.read_csv(ROOT / "data/split/train.csv", schemas.SPLIT_FIELDS)
    augmented = ROOT / "data/augmented"
    sizes = []  # records per shard file, in file order: the writer fills each file to SHARD_SIZE
    for name in ("train", "train_aug"):
        n = shards.count(augmented, name)
        sizes += [min(shards.SHARD_SIZE, n - start) for start in range(0, n, shards.SHARD_SIZE)]
    first = np.concatenate([[0], np.cumsum(sizes)])
    where = {r["path"]: i for i, r in enumerate(rows)}
    features = audit.normalized(np.load(ROOT / "data/features/train_x.npy"))
    view = np.full(len(rows), -1)
    original = np.full(len(rows), -1)
    for k, (f, r) in enumerate(interleaved(sizes, min(len(sizes), shards.PARALLEL_READS))):
        at = first[f] + r  # position in train, then train_aug, each in the order of train.csv
        image = where[train[at % len(train)]["path"]]
        (view if at >= len(train) else original)[image] = k
    has = original >= 0
    agree = (features[original[has]] * x[has]).sum(axis=1)
    if agree.min() < 0.8:  # the order is not the one assumed: see interleaved()
        raise SystemExit(f"data/features does not line up with data/embeddings (lowest similarity {agree.min():.2f})")
    return view, features


def multi_view(x, xa, view, y, c, folds, seed) -> np.ndarray:
    has = view >= 0
    probs = np.zeros((len(y), c))
    for fit_on, held in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
        extra = fit_on[has[fit_on]]
        fit_x, fit_y = np.vstack([x[fit_on], xa[view[extra]]]), np.concatenate([y[fit_on], y[extra]])
        scale = StandardScaler().fit(fit_x)
        model = LogisticRegression(C=audit.PROBE_C, max_iter=1000).fit(scale.transform(fit_x), fit_y)
        p = model.predict_proba(scale.transform(x[held]))
        two = has[held]
        p[two] = (p[two] + model.predict_proba(scale.transform(xa[view[held[two]]]))) / 2
        probs[np.ix_(held, model.classes_)] = p
    return probs


def area_under_margin(x, y, c, seed, epochs, lr=0.05, batch=64, decay=1e-3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    n = len(y)
    w, b, total = np.zeros((z.shape[1], c)), np.zeros(c), np.zeros(n)
    for _ in range(epochs):
        for s in np.array_split(rng.permutation(n), n // batch):
            logits = z[s] @ w + b
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(s)), y[s]] -= 1
            w -= lr * (z[s].T @ p / len(s) + decay * w)
            b -= lr * p.mean(axis=0)
        logits = z @ w + b
        own = logits[np.arange(n), y].copy()
        logits[np.arange(n), y] = -np.inf
        total += own - logits.max(axis=1)
    return total / epochs


def rank(v: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(v)) / (len(v) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    p = params.load(["audit"], ROOT / "params.yaml").audit
    split = ROOT / "data/split"
    labels = schemas.read_labels(split / "labels.json")
    rows = [{**r, "split": name} for name in schemas.SPLITS for r in schemas.read_csv(split / f"{name}.csv", schemas.SPLIT_FIELDS)]
    _, x = audit.read_embeddings(ROOT / "data/embeddings", rows)
    x = audit.normalized(x)
    view, xa = augmented_views(rows, x)
    given = np.array([labels.index(r["label"]) for r in rows])
    train = np.array([r["split"] == "train" for r in rows])
    c = len(labels)
    idx, sim = audit.nearest(x, x, p.neighbours, same=True)

    def probabilities(y, seed):
        vote = audit.neighbour_votes(idx, sim, y, c)
        return {"shipped": (audit.out_of_sample_probabilities(x, y, c, p.folds, seed) + vote) / 2,
                "multi-view + vote": (multi_view(x, xa, view, y, c, p.folds, seed) + vote) / 2}

    clean = probabilities(given, 0)
    confused = np.zeros((c, c))
    np.add.at(confused, (given, clean["shipped"].argmax(axis=1)), 1)
    np.fill_diagonal(confused, -1)
    lookalike = confused.argmax(axis=1)
    test = np.array([r["split"] == "test" for r in rows])
    result = {"train": int(train.sum()), "clean_test_accuracy": {k: float((v.argmax(axis=1) == given)[test].mean())
                                                                for k, v in clean.items()}, "settings": {}}
    for setting, (kind, rate) in SETTINGS.items():
        found: dict[str, list] = {}
        for seed in args.seeds:
            y, truth = flipped(given, train, kind, rate, lookalike, seed)
            shipped_score = None
            for name, q in probabilities(y, seed).items():
                score = 1 - q[np.arange(len(y)), y]
                shipped_score = score if name == "shipped" else shipped_score
                wrong = audit.wrong_label_probability(confidence.recalibrated(q, y), y)[0]
                flagged = (wrong >= p.label_issue_probability) & train
                hits = int((flagged & truth).sum())
                found.setdefault(name, []).append({"accuracy": float((q.argmax(axis=1) == given).mean()),
                                                   "precision_at_recall_0.8": precision_at_recall(score[train], truth[train]),
                                                   "flagged": int(flagged.sum()), "precision": hits / max(1, flagged.sum()),
                                                   "recall": hits / int(truth.sum())})
            for epochs in AUM_EPOCHS:
                score = -area_under_margin(x, y, c, seed, epochs)
                for name, s in {f"area under the margin, {epochs} epochs": score,
                                f"its rank + shipped's, {epochs} epochs": rank(score) + rank(shipped_score)}.items():
                    found.setdefault(name, []).append({"precision_at_recall_0.8": precision_at_recall(s[train], truth[train])})
        result["settings"][setting] = {
            name: {"precision_at_recall_0.8": {"mean": float(np.mean([r["precision_at_recall_0.8"] for r in runs])),
                                               "min": float(np.min([r["precision_at_recall_0.8"] for r in runs]))},
                   **{k: float(np.mean([r[k] for r in runs])) for k in runs[0] if k != "precision_at_recall_0.8"}}
            for name, runs in found.items()}
    for setting, r in result["settings"].items():
        table(f"{setting}, {len(args.seeds)} seeds, on the {int(train.sum())} training images",
              ["scorer", "accuracy (clean)", "precision at recall 0.8 (mean, min)", "flagged", "precision", "recall"],
              [[name, v.get("accuracy", "-"), f"{v['precision_at_recall_0.8']['mean']:.2f}, {v['precision_at_recall_0.8']['min']:.2f}",
                v.get("flagged", "-"), v.get("precision", "-"), v.get("recall", "-")] for name, v in r.items()])
    print("\ntest accuracy on the clean labels:", result["clean_test_accuracy"])
    save("label_scorer_candidates", result)


if __name__ == "__main__":
    main()
