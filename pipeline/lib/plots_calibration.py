"""Figures of the calibrate stage: reliability and coverage, precision-recall per class, the known score's histograms."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.lib.plots import plt, save

def calibration(bins: dict[str, list[dict]], coverage: list[dict], threshold: float, path: Path, title: str,
                multi_label: bool = False) -> None:
    """Left: the reliability diagram (accuracy against confidence per bin) of each model of
    ``bins`` ({name: confidence.reliability rows}). Right: accuracy against coverage, the
    unknown threshold marked. ``multi_label``: every label's probability pooled against the share
    present (``confidence.label_reliability``), and exact-match accuracy against the known score."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    left.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for name, rows in bins.items():
        used = [r for r in rows if r["images"]]
        left.plot([r["confidence"] for r in used], [r["accuracy"] for r in used], marker="o", markersize=4, label=name)
    left.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="share of labels present" if multi_label else "accuracy",
             xlabel="label probability (every label, per bin)" if multi_label else "confidence (top probability, per bin)",
             title="Reliability on the test split")
    left.legend(loc="upper left")
    right.plot([r["coverage"] for r in coverage], [r["accuracy"] for r in coverage])
    kept = min(coverage, key=lambda r: abs(r["threshold"] - threshold))
    right.scatter([kept["coverage"]], [kept["accuracy"]], color="red", zorder=3,
                  label=f"unknown below {threshold:.2f}: {kept['coverage']:.0%} kept, {kept['accuracy']:.1%} right")
    right.set(xlim=(0, 1.02), xlabel="coverage (share of test images above the threshold)",
              ylabel=f"{'exact-match ' * multi_label}accuracy on the images kept", title="Accuracy against coverage")
    right.legend(loc="lower left")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save(fig, path)


LEGEND_ROWS = 24  # legend entries per column beside the precision-recall axes


def precision_recall(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path, title: str) -> None:
    """One precision-recall curve per class ({class: (recall, precision, average precision)}). The
    legend stands beside the axes, a column per LEGEND_ROWS classes, so at 30 or 50 classes it
    covers no curve and the figure grows wider and taller with it."""
    columns = max(1, -(-len(curves) // LEGEND_ROWS))
    rows = min(len(curves), LEGEND_ROWS)
    fig, ax = plt.subplots(figsize=(6 + 2.4 * columns, max(5.0, 1.2 + 0.19 * rows)), layout="constrained")
    for label, (recall, precision, ap) in curves.items():
        ax.plot(recall, precision, label=f"{label} (AP {ap:.2f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=columns, frameon=False)
    save(fig, path)


def score_histograms(scores: dict[str, np.ndarray], threshold: float, path: Path, title: str) -> None:
    """Histograms of the known score (0 to 1) of each image set ({name: scores}), the threshold marked."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in scores.items():
        ax.hist(values, bins=np.linspace(0, 1, 41), alpha=0.55, density=True, label=f"{name} ({len(values)})")
    ax.axvline(threshold, color="red", linestyle="--", label=f"unknown below {threshold:.2f}")
    ax.set(xlabel="known", ylabel="density", title=title)
    ax.legend()
    save(fig, path)
