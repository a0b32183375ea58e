"""The data audit's methods, on the frozen backbone's embeddings: nearest neighbours (near
duplicates, leakage, outliers), out-of-sample label issues (confident learning) and image-quality
flags. NumPy and scikit-learn only, no TensorFlow: split and audit start in a second.

Similarities are cosine similarities of L2-normalised embeddings, computed a block of rows at a
time against all rows, so memory holds ``BLOCK_BYTES`` of similarities, never an N x N matrix.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from pipeline.lib import artifacts, images
from pipeline.lib.artifacts import StageError

# Similarities held at once while searching neighbours; the search's scratch (their top-k partition's
# int64 indices) takes twice this beside them, so memory stays bounded at any number of images.
BLOCK_BYTES = 64 << 20
# The k-fold classifier's inverse regularisation. Strong: its ranking of the given labels is what
# finds label issues, and an over-confident probe ranks worse (bench/audit.py chose it).
PROBE_C = 0.003


def read_embeddings(folder: Path, rows: list[dict]) -> tuple[list[dict], np.ndarray]:
    """Embed's record (``images.csv``: manifest fields and measured quality) and embedding of each of
    ``rows``, checked by path and content hash to be embed's output for these very images."""
    recorded = images.read_csv(folder / "images.csv", images.MANIFEST_FIELDS + images.QUALITY_FIELDS)
    by_path = {r["path"]: i for i, r in enumerate(recorded)}
    for row in rows:
        i = by_path.get(row["path"])
        if i is None or recorded[i]["sha256"] != row["sha256"]:
            raise StageError(f"{folder} has no embedding of {row['path']} as recorded here (embed ran on other "
                             "images): run `dvc repro`")
    at = [by_path[r["path"]] for r in rows]
    features = artifacts.read_npy(folder / "features.npy", "float32", 2, mmap=True)
    if len(features) != len(recorded):
        raise artifacts.damaged(folder / "features.npy", f"{len(features):,} embeddings for the "
                                f"{len(recorded):,} images of {folder / 'images.csv'}")
    return [recorded[i] for i in at], features[at]


def normalized(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def nearest(queries: np.ndarray, pool: np.ndarray, k: int, same: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar rows of ``pool`` to each row of ``queries`` (both normalised), most
    similar first: ``(indices, similarities)``, each ``len(queries) x k``. ``same``: queries is
    pool, and a row is never its own neighbour. Exact, blocked: O(len(queries) * len(pool)) time."""
    k = min(k, len(pool) - (1 if same else 0))
    if k <= 0 or not len(queries):
        return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
    block = max(1, BLOCK_BYTES // (4 * len(pool)))
    idx = np.empty((len(queries), k), np.int64)
    sim = np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), block):
        s = queries[start:start + block] @ pool.T
        if same:
            s[np.arange(len(s)), np.arange(start, start + len(s))] = -np.inf
        top = np.argpartition(s, -k, axis=1)[:, -k:]
        top_sim = np.take_along_axis(s, top, axis=1)
        order = np.lexsort((top, -top_sim), axis=1)  # by similarity, ties by index: deterministic
        idx[start:start + len(s)] = np.take_along_axis(top, order, axis=1)
        sim[start:start + len(s)] = np.take_along_axis(top_sim, order, axis=1)
    return idx, sim


def groups(idx: np.ndarray, sim: np.ndarray, threshold: float) -> np.ndarray:
    """Near-duplicate groups: images joined by any neighbour pair at or above ``threshold``
    (transitively, union-find). Returns a group number per image, the smallest member's index."""
    parent = np.arange(len(idx))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(sim >= threshold)):
        a, b = root(i), root(int(idx[i, j]))
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(len(idx))])


def out_of_sample_probabilities(x: np.ndarray, y: np.ndarray, n_classes: int, folds: int,
                                seed: int) -> np.ndarray:
    """Each image's class probabilities from a logistic regression that never saw it: ``folds``-fold,
    stratified and seeded, on standardised embeddings."""
    probs = np.zeros((len(y), n_classes))
    smallest = np.bincount(y, minlength=n_classes)
    splitter = StratifiedKFold(n_splits=max(2, min(folds, int(smallest[smallest > 0].max()))),
                               shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "the least populated class has only n members": expected, handled
        warnings.simplefilter("ignore", UserWarning)
        parts = list(splitter.split(x, y))
    for fit_on, held in parts:
        scale = StandardScaler().fit(x[fit_on])
        model = LogisticRegression(C=PROBE_C, max_iter=1000).fit(scale.transform(x[fit_on]), y[fit_on])
        probs[np.ix_(held, model.classes_)] = model.predict_proba(scale.transform(x[held]))
    return probs


def label_issues(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Confident learning (Northcutt, Jiang and Chuang, JAIR 2021), pruned by noise rate: a mask of
    the images whose given label ``y`` is probably wrong, given out-of-sample ``probs``.

    Per-class thresholds are the mean probability of each class over the images labelled so; an
    image counts towards the confident joint at (given, j) for the likeliest class j it reaches the
    threshold of. The joint, calibrated to the given label counts, estimates how many images of each
    given label truly belong to each other class; for each such pair, that many images, those with
    the widest margin p_j - p_given, are flagged. An image whose likeliest class is its given label
    is never flagged."""
    n, c = probs.shape
    counts = np.bincount(y, minlength=c)
    thresholds = np.array([probs[y == j, j].mean() if counts[j] else 1.0 for j in range(c)])
    above = probs >= thresholds - 1e-12
    confident = np.where(above.any(axis=1), np.argmax(np.where(above, probs, -1.0), axis=1), -1)
    joint = np.zeros((c, c))
    np.add.at(joint, (y[confident >= 0], confident[confident >= 0]), 1)
    rows = joint.sum(axis=1, keepdims=True)
    calibrated = np.divide(joint, rows, out=np.zeros_like(joint), where=rows > 0) * counts[:, None]
    flagged = np.zeros(n, bool)
    for given in range(c):
        members = np.flatnonzero(y == given)
        for true in range(c):
            take = int(round(calibrated[given, true]))
            if true == given or take == 0:
                continue
            margin = probs[members, true] - probs[members, given]
            flagged[members[np.argsort(-margin, kind="stable")[:take]]] = True
    flagged[np.argmax(probs, axis=1) == y] = False
    return flagged


def robust_z(values: np.ndarray) -> np.ndarray:
    """How many robust standard deviations (1.4826 MAD) each value lies above the median."""
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median))
    return (values - median) / max(mad, 1e-9)
