"""What the model knows it does not know: calibration, "unknown", operating points, what to label next.

NumPy, SciPy and scikit-learn only (no TensorFlow), so the arithmetic is tested on
synthetic logits in milliseconds. The calibrate stage, the export stage,
``pipeline.predict``, ``pipeline.rank`` and bench/active_learning.py all go through it.

- **Temperature scaling** (Guo et al. 2017, "On calibration of modern neural networks"):
  one scalar T > 0 divides the logits, chosen to minimise the negative log-likelihood on
  the validation split. It never reorders the classes of an image.
- **Out-of-distribution scores**, higher meaning "more like the training data": the
  maximum (calibrated) probability, the maximum logit, and the negative free energy
  ``logsumexp(logits)`` (Liu et al. 2020, "Energy-based out-of-distribution detection").
  What ships is ``known``: the energy, centred on the unknown threshold and squashed to
  (0, 1) (``models.Known`` computes it inside every exported file).
- **Uncertainty ranking** for active learning: margin (1 minus the gap between the two
  most probable classes) or entropy, skipping near duplicates of images ranked above.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, logsumexp, softmax
from sklearn.metrics import roc_auc_score, roc_curve

from pipeline.lib import errors, schemas

BINS = 15  # equal-width confidence bins of the expected calibration error, as in Guo et al.
TEMPERATURES = (0.05, 20.0)  # the search range of the fitted temperature
TINY = 1e-30  # floor of a probability before its log: float32 softmax outputs can be exactly 0


# The unknown scores a calibration file may name: "known" (the models' second output, from the
# energy) since the export stage builds it into every format; "probability" (the top calibrated
# probability) in calibrations and exports from before.
SCORES = ("known", "probability")
KNOWN_THRESHOLD = 0.5  # known is centred on the unknown threshold: below 0.5, unknown
ROBUST_SD = 1.4826  # the median absolute deviation times this estimates a normal distribution's SD


def read_calibration(path: Path) -> dict:
    """A ``calibration.json`` as the calibrate or export stage writes it, checked as input: a
    temperature that is a finite number > 0 (a negative one would reverse every ranking), an
    unknown threshold in [0, 1], ``temperature_in_model`` true or false; with ``task: multi_label``,
    a temperature, a ``shift`` and a ``label_thresholds`` entry per label. Anything else is
    ``damaged``, naming the file and the key, never applied."""
    data = schemas.read_json(path, dict)
    if data.get("task", "single_label") not in ("single_label", "multi_label"):
        raise errors.damaged(path, f"task is {str(data['task'])[:40]!r}; it must be 'single_label' or 'multi_label'")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    checks = {"temperature": (lambda v: number(v) and v > 0, "a finite number above 0"),
              "temperature_in_model": (lambda v: isinstance(v, bool), "true or false"),
              "unknown_threshold": (lambda v: number(v) and 0 <= v <= 1, "a number from 0 to 1"),
              "unknown_score": (lambda v: v in SCORES, " or ".join(map(repr, SCORES)))}
    if data.get("unknown_score") == "known":
        checks.update(known_center=(number, "a finite number"),
                      known_scale=(lambda v: number(v) and v > 0, "a finite number above 0"))
    if data.get("task") == "multi_label":  # a temperature and a threshold per label, in labels.txt's order
        numbers = lambda v, ok: isinstance(v, list) and bool(v) and all(number(x) and ok(x) for x in v)  # noqa: E731
        checks.update(temperature=(lambda v: numbers(v, lambda x: x > 0), "a list of finite numbers above 0"),
                      shift=(lambda v: numbers(v, lambda x: True) and len(v) == len(data.get("temperature") or []),
                             "a list of finite numbers, one per temperature"),
                      label_thresholds=(lambda v: numbers(v, lambda x: 0 <= x <= 1) and len(v) == len(
                          data.get("temperature") or []), "a list of numbers from 0 to 1, one per temperature"))
    for key, (ok, allowed) in checks.items():
        if key not in data:
            raise errors.damaged(path, f"no {key}")
        if not ok(data[key]):
            raise errors.damaged(path, f"{key} is {str(data[key])[:40]!r}; it must be {allowed}")
    return data


def logits_of(probabilities: np.ndarray) -> np.ndarray:
    """Log-probabilities: the logits up to a per-image constant, which softmax ignores."""
    return np.log(np.maximum(np.asarray(probabilities, np.float64), TINY))


def calibrated(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of ``logits / temperature`` (float64)."""
    return softmax(np.asarray(logits, np.float64) / temperature, axis=1)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes."""
    logp = log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the NLL of ``logits`` (validation images) for labels ``y``.
    Searched over log T, where the NLL is smooth and unimodal in practice."""
    if not len(y):
        raise ValueError("no images to fit a temperature on")
    result = minimize_scalar(lambda log_t: nll(logits, y, float(np.exp(log_t))),
                             bounds=np.log(TEMPERATURES), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(result.x))


def recalibrated(probabilities: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``probabilities`` sharpened or softened by the temperature that fits them best to labels ``y``."""
    logits = logits_of(probabilities)
    return calibrated(logits, fit_temperature(logits, y))


def binned(confidence: np.ndarray, outcome: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per equal-width bin of ``confidence`` (in [0, 1]): its range, count, mean confidence and the
    mean of ``outcome`` (1 right, 0 wrong) there, the rows of a reliability diagram."""
    confidence, outcome = np.asarray(confidence, np.float64), np.asarray(outcome, np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (lo, hi] bins
    rows = []
    for b in range(bins):
        mask = which == b
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "images": int(mask.sum()),
                     "confidence": float(confidence[mask].mean()) if mask.any() else None,
                     "accuracy": float(outcome[mask].mean()) if mask.any() else None})
    return rows


def gap(rows: list[dict]) -> float:
    """Expected calibration error of ``binned`` rows: the count-weighted mean gap between confidence
    and outcome."""
    total = max(sum(r["images"] for r in rows), 1)
    return float(sum(r["images"] / total * abs(r["confidence"] - r["accuracy"]) for r in rows if r["images"]))


def reliability(probabilities: np.ndarray, y: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per equal-width confidence bin: its range, image count, mean confidence and accuracy."""
    return binned(probabilities.max(axis=1), probabilities.argmax(axis=1) == y, bins)


def ece(probabilities: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: the image-weighted mean gap between confidence and accuracy."""
    return gap(reliability(probabilities, y, bins))


def brier(probabilities: np.ndarray, y: np.ndarray) -> float:
    """Mean squared distance of the probability vector from the one-hot truth (summed over classes)."""
    onehot = np.eye(probabilities.shape[1])[y]
    return float(((probabilities - onehot) ** 2).sum(axis=1).mean())


def quality(logits: np.ndarray, y: np.ndarray, temperature: float) -> dict[str, float]:
    """ECE, NLL, Brier score and accuracy of ``logits`` at ``temperature``."""
    p = calibrated(logits, temperature)
    return {"ece": ece(p, y), "nll": nll(logits, y, temperature), "brier": brier(p, y),
            "accuracy": float(np.mean(p.argmax(axis=1) == y))}


def scores(logits: np.ndarray, temperature: float) -> dict[str, np.ndarray]:
    """Out-of-distribution scores per image, higher = more in-distribution: ``probability``
    (the top calibrated probability), ``max_logit`` and ``energy`` (logsumexp of the raw
    logits, i.e. minus the free energy at temperature 1, as Liu et al. use it)."""
    logits = np.asarray(logits, np.float64)
    return {"probability": calibrated(logits, temperature).max(axis=1), "max_logit": logits.max(axis=1),
            "energy": logsumexp(logits, axis=1)}


def robust_scale(values: np.ndarray) -> float:
    """The spread of ``values`` as a normal SD, from the median absolute deviation (1 where they
    are all equal): outliers among the validation images do not stretch it."""
    values = np.asarray(values, np.float64)
    mad = ROBUST_SD * float(np.median(np.abs(values - np.median(values))))
    return mad if mad > 0 else float(values.std()) or 1.0


def known(logits: np.ndarray, center: float, scale: float) -> np.ndarray:
    """``models.Known`` in NumPy, from the raw logits: sigmoid((energy - center) / scale), in (0, 1),
    0.5 where the energy equals ``center``."""
    return expit((logsumexp(np.asarray(logits, np.float64), axis=1) - center) / scale)


def separation(inside: np.ndarray, outside: np.ndarray) -> dict[str, float]:
    """How well a score (higher = in-distribution) separates in- from out-of-distribution images:
    AUROC, and the share of outside images kept when 95% of inside ones are (FPR at 95% TPR)."""
    truth = np.r_[np.ones(len(inside)), np.zeros(len(outside))]
    values = np.r_[inside, outside]
    fpr, tpr, _ = roc_curve(truth, values)
    return {"auroc": float(roc_auc_score(truth, values)), "fpr_at_95_tpr": float(fpr[np.argmax(tpr >= 0.95)])}


def looks_like_training(auroc: float) -> bool:
    """The out-of-distribution set scores as in-distribution as the test images, or more (AUROC at
    or below chance): it holds images like the training data, and its unknown figures mean nothing."""
    return auroc <= 0.5


def threshold_for(values: np.ndarray, keep: float) -> float:
    """The largest threshold that keeps (``value >= threshold``) at least ``keep`` of ``values``."""
    ordered = np.sort(np.asarray(values, np.float64))[::-1]
    return float(ordered[max(int(np.ceil(keep * len(ordered))) - 1, 0)])


def coverage_curve(confidence: np.ndarray, correct: np.ndarray, points: int = 101) -> list[dict]:
    """Accuracy (the mean of ``correct``) on the images whose ``confidence`` reaches each threshold,
    and the share kept: the operating points of an "unknown" threshold."""
    rows = []
    for t in np.linspace(0, 1, points):
        kept = confidence >= t
        if kept.any():
            rows.append({"threshold": round(float(t), 4), "coverage": float(kept.mean()),
                         "accuracy": float(correct[kept].mean())})
    return rows


def threshold_distance(p: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """Per image and label, how far its probability is from the label's threshold ``cut``, as a
    share of the way to 1 (above it) or to 0 (below it): 0 at the threshold, 1 at 0 or 1."""
    p, cut = np.asarray(p, np.float64), np.asarray(cut, np.float64)
    return np.abs(p - cut) / np.maximum(np.where(p >= cut, 1 - cut, cut), TINY)


def uncertainty(probabilities: np.ndarray, by: str = "margin", cut: np.ndarray | None = None) -> np.ndarray:
    """Per image, higher = less sure: ``margin`` (1 - (p1 - p2)) or ``entropy`` (in nats). With
    ``cut``, a threshold per label (a sigmoid per label), each label is a yes/no question:
    ``margin`` is 1 minus the distance of the label nearest its threshold, as a share of the way
    to 0 or 1 (1: a label right at its threshold), ``entropy`` the sum of each label's binary entropy."""
    p = np.asarray(probabilities, np.float64)
    if cut is not None and by == "margin":
        return 1 - threshold_distance(p, cut).min(axis=1)
    if cut is not None and by == "entropy":
        q = np.clip(p, TINY, 1 - 1e-12)
        return -(q * np.log(q) + (1 - q) * np.log(1 - q)).sum(axis=1)
    if by == "margin":
        top = np.sort(p, axis=1)[:, ::-1]
        return 1 - (top[:, 0] - (top[:, 1] if p.shape[1] > 1 else 0))
    if by == "entropy":
        return -(p * np.log(np.maximum(p, TINY))).sum(axis=1)
    raise ValueError(f"uncertainty by {by!r}: use margin or entropy")


def rank(probabilities: np.ndarray, features: np.ndarray, similarity: float, by: str = "margin",
         limit: int | None = None, cut: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices, most uncertain first, of the images to label; their uncertainty, ``uncertainty``
    with ``cut`` for a multi-label model). An image whose
    feature vector has cosine similarity >= ``similarity`` with one ranked above it is skipped,
    so the top of the list is diverse. Stops after ``limit`` images (default: all that are kept)."""
    u = uncertainty(probabilities, by, cut)
    f = np.asarray(features, np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    order = np.argsort(-u, kind="stable")
    limit = len(order) if limit is None else min(limit, len(order))
    kept: list[int] = []
    chosen = np.empty((limit, f.shape[1]), np.float32)  # the kept images' features, in rank order
    for i in order:
        if len(kept) >= limit:
            break
        if kept and float((chosen[:len(kept)] @ f[i]).max()) >= similarity:
            continue
        chosen[len(kept)] = f[i]
        kept.append(int(i))
    return np.array(kept, dtype=int), u[kept]


# Multi-label (task: multi_label): a sigmoid per label, each label a yes/no question of its own.

def label_probabilities(logits: np.ndarray, temperatures, shift=0.0) -> np.ndarray:
    """``sigmoid(logits / T + shift)``, a temperature and a shift per label (float64)."""
    return expit(np.asarray(logits, np.float64) / np.asarray(temperatures, np.float64) + np.asarray(shift, np.float64))


def platt_nll(params: np.ndarray, z: np.ndarray, target: np.ndarray) -> float:
    """Mean cross-entropy of ``sigmoid(z / exp(log_t) + shift)`` against soft ``target``s."""
    log_t, shift = params
    x = z / np.exp(log_t) + shift
    return float(np.mean(np.logaddexp(0, x) - target * x))


def fit_label_platt(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per label, Platt scaling (Platt 1999) fitted on ``(logits, y)`` (validation): the temperature
    T > 0 and shift b of ``sigmoid(logit / T + b)`` that minimise the cross-entropy against Platt's
    smoothed targets ((N+ + 1) / (N+ + 2) for a present label, 1 / (N- + 2) for an absent one), which
    keep a label with few images from being fitted to certainty. The shift undoes what a
    temperature cannot: probabilities moved up or down as a whole (per-label class weights move a
    rare label's up). A label present in all or none of the validation images keeps T = 1, b = 0."""
    from scipy.optimize import minimize

    temperature, shift = np.ones(y.shape[1]), np.zeros(y.shape[1])
    for j in range(y.shape[1]):
        positive = int(y[:, j].sum())
        if 0 < positive < len(y):
            target = np.where(y[:, j] > 0, (positive + 1) / (positive + 2), 1 / (len(y) - positive + 2))
            bounds = [tuple(np.log(TEMPERATURES)), (-20.0, 20.0)]
            result = minimize(platt_nll, np.zeros(2), args=(np.asarray(logits[:, j], np.float64), target),
                              method="L-BFGS-B", bounds=bounds)
            temperature[j], shift[j] = float(np.exp(result.x[0])), float(result.x[1])
    return temperature, shift


def binary_ece(p: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """One label's expected calibration error: over equal-width bins of its probability, the
    image-weighted gap between the mean probability and the share of images that carry it."""
    return gap(binned(p, y, bins))


def label_quality(logits: np.ndarray, y: np.ndarray, temperatures, labels: list[str], shift=0.0) -> dict:
    """Per label and averaged over labels: ECE, binary NLL and Brier score of ``label_probabilities``."""
    p = label_probabilities(logits, temperatures, shift)
    log_p, log_q = np.log(np.maximum(p, TINY)), np.log(np.maximum(1 - p, TINY))
    per = {label: {"ece": binary_ece(p[:, j], y[:, j]),
                   "nll": float(-np.mean(np.where(y[:, j] > 0, log_p[:, j], log_q[:, j]))),
                   "brier": float(np.mean((p[:, j] - y[:, j]) ** 2))} for j, label in enumerate(labels)}
    return {**{k: float(np.mean([m[k] for m in per.values()])) for k in ("ece", "nll", "brier")}, "per_label": per}


def label_reliability(p: np.ndarray, y: np.ndarray, bins: int = BINS) -> list[dict]:
    """``reliability`` of every label's probability pooled: in each bin, the mean probability
    (confidence) against the share of those (image, label) pairs that are present (accuracy)."""
    return binned(np.ravel(p), np.ravel(y), bins)


def joint_energy(logits: np.ndarray) -> np.ndarray:
    """The multi-label energy score of the raw logits, higher = more like the training data:
    ``sum_k log(1 + exp(z_k))`` (JointEnergy, Wang et al. 2021, "Can multi-label classification
    networks know what they don't know?")."""
    return np.logaddexp(0, np.asarray(logits, np.float64)).sum(axis=1)


def label_scores(logits: np.ndarray, temperatures, shift=0.0) -> dict[str, np.ndarray]:
    """``scores`` for a sigmoid per label: ``probability`` (the top calibrated label probability),
    ``max_logit`` and ``energy`` (``joint_energy``, what ships as known)."""
    logits = np.asarray(logits, np.float64)
    return {"probability": label_probabilities(logits, temperatures, shift).max(axis=1), "max_logit": logits.max(axis=1),
            "energy": joint_energy(logits)}


def label_known(logits: np.ndarray, center: float, scale: float) -> np.ndarray:
    """``models.Known(joint=True)`` in NumPy: sigmoid((joint_energy - center) / scale)."""
    return expit((joint_energy(logits) - center) / scale)
