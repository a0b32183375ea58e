"""Images with any number of labels (``task: multi_label``, docs/multilabel.md): how a label set is
written in the manifest and split CSVs, turned into 0/1 targets, split stratified per label, and
scored. TensorFlow-free, like the CSVs it reads.

A set is written as its labels, sorted, joined by ``SEP`` (``"dress|floral"``); ``""`` is the empty
set, "none of these labels", which is a valid answer in this mode.
"""
from __future__ import annotations

import collections
from typing import Iterable

import numpy as np

SEP = "|"


def encode(labels: Iterable[str]) -> str:
    """A label set as the CSVs hold it: sorted, distinct, joined by SEP."""
    return SEP.join(sorted(set(labels)))


def decode(text: str) -> list[str]:
    """The labels of an encoded set (``""``: none)."""
    return text.split(SEP) if text else []


def counts(rows: Iterable[dict]) -> collections.Counter:
    """Images per label (an image counts once under each of its labels)."""
    return collections.Counter(label for r in rows for label in decode(r["label"]))


def targets(rows: Iterable[dict], labels: list[str]) -> np.ndarray:
    """The ``rows``' label sets as a ``len(rows) x len(labels)`` 0/1 uint8 matrix."""
    index = {label: i for i, label in enumerate(labels)}
    rows = list(rows)
    y = np.zeros((len(rows), len(labels)), np.uint8)
    for i, r in enumerate(rows):
        for label in decode(r["label"]):
            y[i, index[label]] = 1
    return y


def stratify(units: list[list[dict]], fractions: dict[str, float], order: list[float],
             where: list[str | None]) -> list[str]:
    """Each unit (a near-duplicate group of rows) to a split, stratified for every label at once:
    iterative stratification (Sechidis, Tsoumakas and Vlahavas 2011), stable.

    ``where[i]`` is the unit's split if the last run placed it (kept, and counted as that split's),
    None if new. ``fractions`` gives the evaluation splits' shares, train the rest. The new units are
    placed label by label, rarest label first: each goes to a split that has no image of that label
    yet, else to the one that lacks the most images of it (then of all images), ties broken by the
    split order; a unit with no label goes
    where images are lacking most. Units are taken in ``order`` (seeded hashes of their content),
    so the answer depends on the data and the seed, never on file order."""
    shares = {**fractions, "train": 1.0 - sum(fractions.values())}
    names = list(shares)
    sets = [{label for r in unit for label in decode(r["label"])} for unit in units]
    total = collections.Counter(label for s, unit in zip(sets, units) for label in s for _ in unit)
    n = sum(map(len, units))
    # What each split still lacks, of each label and of images, to reach its share of all of them.
    want = {name: {label: share * total[label] for label in total} for name, share in shares.items()}
    want_all = {name: share * n for name, share in shares.items()}
    out = list(where)
    held = {name: collections.Counter() for name in names}  # images of each label a split holds
    for i, name in enumerate(where):
        if name is not None:
            take(want, want_all, held, name, sets[i], len(units[i]))
    pending = sorted((i for i, name in enumerate(where) if name is None), key=lambda i: order[i])
    remaining = collections.Counter(label for i in pending for label in sets[i])
    while remaining:
        label = min(remaining, key=lambda x: (remaining[x], x))
        for i in [i for i in pending if out[i] is None and label in sets[i]]:
            # a split without an image of the label first, so every label can be evaluated
            name = max(names, key=lambda s: (not held[s][label], want[s][label], want_all[s], -names.index(s)))
            out[i] = name
            take(want, want_all, held, name, sets[i], len(units[i]))
            remaining.subtract(sets[i])
        remaining = +remaining  # drop labels with no unit left
    for i in pending:
        if out[i] is None:  # no label: "none of these" images, placed by the images each split lacks
            out[i] = max(names, key=lambda s: (want_all[s], -names.index(s)))
            want_all[out[i]] -= len(units[i])
    return out


def take(want: dict, want_all: dict, held: dict, name: str, labels: set[str], size: int) -> None:
    for label in labels:
        want[name][label] -= size
        held[name][label] += size
    want_all[name] -= size


def average_precision(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each label's average precision (NaN for a label with no positive image)."""
    from sklearn.metrics import average_precision_score
    return np.array([average_precision_score(y[:, j], scores[:, j]) if y[:, j].any() else np.nan
                     for j in range(y.shape[1])])


def thresholds(y: np.ndarray, scores: np.ndarray, precision_target: float | None = None) -> np.ndarray:
    """Per label, the score threshold chosen on ``(y, scores)`` (validation): the one of highest F1,
    or with ``precision_target`` the lowest threshold whose precision reaches it (highest F1 when
    none does). A label with no positive image gets 0.5."""
    from sklearn.metrics import precision_recall_curve
    out = np.full(y.shape[1], 0.5)
    for j in range(y.shape[1]):
        if not y[:, j].any():
            continue
        precision, recall, cut = precision_recall_curve(y[:, j], scores[:, j])
        precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        ok = np.flatnonzero(precision >= precision_target) if precision_target is not None else []
        best = ok[0] if len(ok) else int(np.argmax(f1))
        out[j] = float(cut[best])
    return out


def micro_f1(y: np.ndarray, predicted: np.ndarray) -> float:
    """F1 over every (image, label) pair: predicted sets against the truth, 0/1 matrices."""
    y, predicted = np.asarray(y, bool), np.asarray(predicted, bool)
    found = (y & predicted).sum()
    return float(2 * found / max(y.sum() + predicted.sum(), 1))


def scores(y: np.ndarray, probabilities: np.ndarray, cut: np.ndarray, labels: list[str]) -> dict:
    """Test metrics of predicted label sets (``probabilities >= cut``, per label) against ``y``:
    mean AP, micro and macro F1, exact-match accuracy, Hamming loss, and per label AP, precision,
    recall, F1 and the number of test images that carry it."""
    from sklearn.metrics import f1_score, precision_recall_fscore_support
    predicted = (probabilities >= cut).astype(np.uint8)
    ap = average_precision(y, probabilities)
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, average=None, zero_division=0)
    return {
        "mean_average_precision": float(np.nanmean(ap)),
        "micro_f1": float(f1_score(y, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y, predicted, average="macro", zero_division=0)),
        "exact_match": float(np.mean((predicted == y).all(axis=1))),
        "hamming_loss": float(np.mean(predicted != y)),
        "per_label": {label: {"average_precision": None if np.isnan(ap[j]) else float(ap[j]),
                              "precision": float(precision[j]), "recall": float(recall[j]),
                              "f1": float(f1[j]), "threshold": float(cut[j]), "images": int(support[j])}
                      for j, label in enumerate(labels)},
    }
