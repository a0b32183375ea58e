"""Figures of the evaluate stage: the confusion matrix and F1 per class."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.lib.plots import plt, save

def confusion_png(matrix: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    """Row-normalized confusion matrix (each row: where that true class went), counts in cells."""
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    size = 2.5 + 0.55 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted", ylabel="true",
           title=title)
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_yticklabels(labels)
    if len(labels) <= 30:
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    save(fig, path)


def per_class_f1(scores: dict[str, dict[str, float]], path: Path, title: str) -> None:
    """Grouped horizontal bars: F1 per class for each model (``{model: {class: f1}}``), the value
    written at each bar's end (so an F1 of 0 shows as 0.00). Classes run down the page, so the
    figure grows in height, not width, with their number; the first class is at the top."""
    labels = list(next(iter(scores.values())))
    height = 0.8 / len(scores)
    fig, ax = plt.subplots(figsize=(8, 1.2 + (0.12 + 0.22 * len(scores)) * len(labels)))
    for i, (name, f1) in enumerate(scores.items()):
        bars = ax.barh(np.arange(len(labels)) + (i - (len(scores) - 1) / 2) * height, [f1[k] for k in labels],
                       height, label=name)
        ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=7)
    ax.set(yticks=range(len(labels)), xlim=(0, 1.1), xticks=np.linspace(0, 1, 6), ylim=(len(labels) - 0.5, -0.5),
           xlabel="F1 on the test split", title=title)
    ax.set_yticklabels(labels)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0 + 0.4 / fig.get_figheight()), ncol=len(scores),
              frameon=False)
    save(fig, path)
