"""The image gallery with a caption under each image (the audit's findings, evaluate's mistakes)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.lib.plots import CAPTION_CHARS, fit, plt, save

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
    save(fig, path, dpi=80)
