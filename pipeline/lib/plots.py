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
    _save(fig, path)


def gallery(thumbnails: list[np.ndarray], captions: list[str], path: Path, title: str, columns: int = 4,
            empty: str = "no mistakes") -> None:
    """A grid of images with a caption under each (at least one cell, so the file always exists)."""
    rows = max(1, -(-len(thumbnails) // columns))
    lines = max((c.count("\n") + 1 for c in captions), default=1)
    # constrained layout sizes each cell around its caption; tight_layout let a square tile's
    # caption run under the tile above it
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows + 0.18 * lines * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, thumbnails, captions):
        ax.imshow(image)
        ax.set_title(fit(caption, CAPTION_CHARS), fontsize=9)
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
    """Histograms of the known score (0 to 1) of each image set ({name: scores}), the threshold marked."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in scores.items():
        ax.hist(values, bins=np.linspace(0, 1, 41), alpha=0.55, density=True, label=f"{name} ({len(values)})")
    ax.axvline(threshold, color="red", linestyle="--", label=f"unknown below {threshold:.2f}")
    ax.set(xlabel="known", ylabel="density", title=title)
    ax.legend()
    _save(fig, path)


CAPTION_CHARS = 40  # what a 3-inch gallery cell holds at 9 pt


def fit(caption: str, chars: int) -> str:
    """Each caption line at most ``chars`` long: a longer one (a long file name) keeps its start and
    end around an ellipsis, so it never runs into the next cell."""
    return "\n".join(line if len(line) <= chars else f"{line[:chars // 2 - 1]}…{line[-(chars - chars // 2):]}"
                     for line in caption.split("\n"))


def _save(fig, path: Path, dpi: int = 100) -> None:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)
