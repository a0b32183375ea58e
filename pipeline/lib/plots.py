"""Matplotlib figures written by the stages (PNG, so they render offline and in `dvc plots`)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on CI machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
    _save(fig, path)


def training_curves(history: dict[str, list[float]], path: Path, title: str) -> None:
    """Loss and accuracy per epoch, training and validation, the kept (lowest val loss) epoch marked."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    best = int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else None
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            if history.get(key):
                ax.plot(epochs, history[key], marker="o", markersize=3, label=label)
        if best:
            ax.axvline(best, color="grey", linestyle=":", label=f"kept (epoch {best})")
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    _save(fig, path)


def per_class_f1(scores: dict[str, dict[str, float]], path: Path, title: str) -> None:
    """Grouped bars: F1 per class for each model (``{model: {class: f1}}``)."""
    labels = list(next(iter(scores.values())))
    width = 0.8 / len(scores)
    fig, ax = plt.subplots(figsize=(2 + 0.6 * len(labels) * len(scores), 4))
    for i, (name, f1) in enumerate(scores.items()):
        ax.bar(np.arange(len(labels)) + (i - (len(scores) - 1) / 2) * width, [f1[k] for k in labels],
               width, label=name)
    ax.set(xticks=range(len(labels)), ylim=(0, 1.15), yticks=np.linspace(0, 1, 6),
           ylabel="F1 on the test split", title=title)
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncol=len(scores), frameon=False)  # above the bars, in the headroom
    _save(fig, path)


def gallery(thumbnails: list[np.ndarray], captions: list[str], path: Path, title: str, columns: int = 4,
            empty: str = "no mistakes") -> None:
    """A grid of images with a caption under each (at least one cell, so the file always exists)."""
    rows = max(1, -(-len(thumbnails) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, thumbnails, captions):
        ax.imshow(image)
        ax.set_title(caption, fontsize=9)
    if not thumbnails:
        axes[0, 0].text(0.5, 0.5, empty, ha="center", va="center", fontsize=14)
    fig.suptitle(title)
    _save(fig, path, dpi=80)


def lr_range(rates: np.ndarray, losses: np.ndarray, suggested: float, path: Path, title: str) -> None:
    """Smoothed loss against a log-scale learning rate, the suggested rate marked."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(rates, losses)
    ax.axvline(suggested, color="red", linestyle="--", label=f"suggested {suggested:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    _save(fig, path)


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
    _save(fig, path)


def precision_recall(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path, title: str) -> None:
    """One precision-recall curve per class ({class: (recall, precision, average precision)})."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for label, (recall, precision, ap) in curves.items():
        ax.plot(recall, precision, label=f"{label} (AP {ap:.2f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)


def score_histograms(scores: dict[str, np.ndarray], threshold: float, path: Path, title: str) -> None:
    """Histograms of the top calibrated probability of each image set ({name: scores})."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in scores.items():
        ax.hist(values, bins=np.linspace(0, 1, 41), alpha=0.55, density=True, label=f"{name} ({len(values)})")
    ax.axvline(threshold, color="red", linestyle="--", label=f"unknown below {threshold:.2f}")
    ax.set(xlabel="top calibrated probability", ylabel="density", title=title)
    ax.legend()
    _save(fig, path)


def _save(fig, path: Path, dpi: int = 100) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)
