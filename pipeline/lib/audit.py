"""The data audit's methods, on the frozen backbone's embeddings: nearest neighbours (near
duplicates, leakage, outliers) and the probability that a given label is wrong. NumPy, SciPy and
scikit-learn only, no TensorFlow: split and audit never pay its import.

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

from pipeline.lib import errors, quality, schemas
from pipeline.lib.errors import StageError

# Similarities held at once while searching neighbours; the search's scratch (their top-k partition's
# int64 indices) takes twice this beside them, so memory stays bounded at any number of images.
BLOCK_BYTES = 64 << 20
# The k-fold classifier's inverse regularisation. Strong: its ranking of the given labels is what
# finds label issues, and an over-confident probe ranks worse (bench/audit.py chose it).
PROBE_C = 0.003
# Neighbour votes weigh exp((similarity - 1) / VOTE_WIDTH): a neighbour at similarity 0.95 counts
# e^-1 as much as an identical one, so the nearest decide. VOTE_FLOOR keeps every class possible.
VOTE_WIDTH, VOTE_FLOOR = 0.05, 1e-3
# The noise estimate's expectation-maximisation: its start (the share of wrong labels) and rounds. It
# is stopped early on purpose: run to convergence it overestimates look-alike noise (bench/audit.py).
EM_START, EM_ROUNDS = 0.1, 3


def read_embeddings(folder: Path, rows: list[dict]) -> tuple[list[dict], np.ndarray]:
    """Embed's record (``images.csv``: manifest fields and measured quality) and embedding of each of
    ``rows``, checked by path and content hash to be embed's output for these very images."""
    recorded = schemas.read_csv(folder / "images.csv", schemas.MANIFEST_FIELDS + quality.QUALITY_FIELDS)
    by_path = {r["path"]: i for i, r in enumerate(recorded)}
    for row in rows:
        i = by_path.get(row["path"])
        if i is None or recorded[i]["sha256"] != row["sha256"]:
            raise StageError(f"{folder} has no embedding of {row['path']} as recorded here (embed ran on other "
                             "images): run `dvc repro`")
    at = [by_path[r["path"]] for r in rows]
    features = schemas.read_npy(folder / "features.npy", "float32", 2, mmap=True)
    if len(features) != len(recorded):
        raise errors.damaged(folder / "features.npy", f"{len(features):,} embeddings for the "
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


def neighbour_votes(idx: np.ndarray, sim: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Each image's class probabilities from its nearest neighbours' given labels (never its own),
    each vote weighed by how alike the two are (SimiFeat, Zhu, Dong and Liu 2022)."""
    weights = np.exp((sim - 1) / VOTE_WIDTH)
    votes = np.full((len(idx), n_classes), VOTE_FLOOR)
    np.add.at(votes, (np.repeat(np.arange(len(idx)), idx.shape[1]), y[idx].ravel()), weights.ravel())
    return votes / votes.sum(axis=1, keepdims=True)


def label_probabilities(x: np.ndarray, y: np.ndarray, idx: np.ndarray, sim: np.ndarray, n_classes: int,
                        folds: int, seed: int) -> np.ndarray:
    """What the audit believes each image shows, from evidence that never saw its given label: the
    mean of the out-of-sample logistic regression's probabilities and the neighbours' vote
    (bench/audit.py compared these and others: docs/performance.md#the-data-audit)."""
    return (out_of_sample_probabilities(x, y, n_classes, folds, seed) + neighbour_votes(idx, sim, y, n_classes)) / 2


def wrong_label_probability(q: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The probability that each image's given label ``y`` is wrong, from ``q``: out-of-sample class
    probabilities, learnt from the same, partly wrong, labels and calibrated to them
    (``confidence.recalibrated``). Returns ``(p_wrong, posterior, noise)``.

    1. The labels are modelled as drawn from the true class t through a noise matrix
       F[t, g] = P(given g | true t); then q = c F, where c is the true class's probability,
       so c = q F^-1 (clipped, renormalised), and P(true t | image, given g) = c_t F[t, g] / sum.
    2. F is estimated by expectation-maximisation: from a start where 1 label in 10 is wrong,
       EM_ROUNDS rounds of posterior -> F -> posterior (``noise`` is the last F).

    ``p_wrong`` is 1 - P(true = given); its sum estimates how many labels are wrong."""
    n, c = q.shape
    noise = np.full((c, c), EM_START / max(1, c - 1))
    np.fill_diagonal(noise, 1 - EM_START)
    for _ in range(EM_ROUNDS):
        true = np.clip(q @ np.linalg.pinv(noise), 1e-6, None)
        true /= true.sum(axis=1, keepdims=True)
        posterior = true * noise[:, y].T
        posterior /= posterior.sum(axis=1, keepdims=True)
        joint = np.zeros((c, c))  # joint[g, t]: expected images given label g whose true class is t
        np.add.at(joint, y, posterior)
        seen = joint.sum(axis=0) > 0
        noise[seen] = (joint[:, seen] / joint[:, seen].sum(axis=0)).T
    return 1 - posterior[np.arange(n), y], posterior, noise


def robust_z(values: np.ndarray) -> np.ndarray:
    """How many robust standard deviations (1.4826 MAD) each value lies above the median."""
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median))
    return (values - median) / max(mad, 1e-9)
