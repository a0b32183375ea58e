"""Figures of training: loss and accuracy per epoch (train_head, finetune), the learning-rate range test (lr_find)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.lib.plots import plt, save

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
    save(fig, path)


def lr_range(rates: np.ndarray, losses: np.ndarray, suggested: float, path: Path, title: str) -> None:
    """Smoothed loss against a log-scale learning rate, the suggested rate marked."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(rates, losses)
    ax.axvline(suggested, color="red", linestyle="--", label=f"suggested {suggested:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save(fig, path)
