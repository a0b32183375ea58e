"""Figures of the calibrate stage: reliability and coverage, precision-recall per class, the known score's histograms."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.lib.plots import plt, save

def calibration(bins: dict[str, list[dict]], coverage: list[dict], threshold: float, path: Path, title: str) -> None:
    """Left: the reliability diagram (accuracy against confidence per bin) of each model of
    ``bins`` ({name: confidence.reliability rows}). Right: accuracy against coverage, the
    unknown threshold marked."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    left.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for name, rows in bins.items():
        used = [r for r in rows if r["images"]]
        left.plot([r["confidence"] for r in used], [r["accuracy"] for r in used], marker="o", markersize=4, label=name)
    left.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence (top probability, per bin)", ylabel="accuracy",
             title="Reliability on the test split")
    left.legend(loc="upper left")
    right.plot([r["coverage"] for r in coverage], [r["accuracy"] for r in coverage])
    kept = min(coverage, key=lambda r: abs(r["threshold"] - threshold))
    right.scatter([kept["coverage"]], [kept["accuracy"]], color="red", zorder=3,
                  label=f"unknown below {threshold:.2f}: {kept['coverage']:.0%} kept, {kept['accuracy']:.1%} right")
    right.set(xlim=(0, 1.02), xlabel="coverage (share of test images above the threshold)",
              ylabel="accuracy on the images kept", title="Accuracy against coverage")
    right.legend(loc="lower left")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save(fig, path)


def precision_recall(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path, title: str) -> None:
    """One precision-recall curve per class ({class: (recall, precision, average precision)})."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for label, (recall, precision, ap) in curves.items():
        ax.plot(recall, precision, label=f"{label} (AP {ap:.2f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
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
