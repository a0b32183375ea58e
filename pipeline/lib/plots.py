"""What every figure the pipeline draws shares: matplotlib without a display, saving as PNG (so the
figures render offline and beside `dvc plots`), captions that fit their cell.

The figures themselves live with the stages that draw them, one module each (plots_training,
plots_gallery, plots_evaluation, plots_calibration), so that changing one figure reruns only the
stages that draw it; a change here reruns them all."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on CI machines
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "save", "fit", "CAPTION_CHARS"]

CAPTION_CHARS = 40  # what a 3-inch gallery cell holds at 9 pt


def fit(caption: str, chars: int) -> str:
    """Each caption line at most ``chars`` long: a longer one (a long file name) keeps its start and
    end around an ellipsis, so it never runs into the next cell."""
    return "\n".join(line if len(line) <= chars else f"{line[:chars // 2 - 1]}…{line[-(chars - chars // 2):]}"
                     for line in caption.split("\n"))


def save(fig, path: Path, dpi: int = 100) -> None:
    """Lay ``fig`` out (tight, unless it has a layout engine of its own), write it to ``path`` as a PNG,
    close it."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)
