"""The stages' PNG figures stay readable whatever the number of classes or the images' shape:
gallery captions never run under the tile above, long file names are shortened, the per-class
figure grows down the page (not across it) and writes every value, zero included."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.lib import plots, plots_evaluation, plots_gallery


@pytest.fixture
def drawn(monkeypatch):
    """Each figure the plots modules save, written to its PNG by plots.save as the stages write it,
    then kept open (instead of closed) for measuring the layout that was saved."""
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    yield figures
    monkeypatch.undo()
    for fig in figures:
        plots.plt.close(fig)


@pytest.mark.parametrize("shape", [(128, 128, 3), (200, 150, 3), (150, 200, 3), (128, 264, 3), (200, 60, 3)],
                         ids=["square", "tall", "wide", "pair", "narrow"])
def test_gallery_captions_never_run_under_the_tile_above(drawn, shape, tmp_path):
    captions = ["0123456789abcdef0123.png\ntrue: square\npredicted: circle (99%)"] * 12
    plots_gallery.gallery([np.full(shape, 128, np.uint8)] * 12, captions, tmp_path / "g.png", "title\nsecond line")
    fig = drawn[0]
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    for above, below in zip(axes, axes[4:]):  # 4 columns: each cell and the one under it
        tile = above.images[0].get_window_extent(renderer)
        caption = below.title.get_window_extent(renderer)
        assert caption.y1 <= tile.y0, (shape, caption.y1, tile.y0)  # display y grows upwards


def test_long_file_names_keep_their_start_and_end():
    name = "a-very-long-file-name-from-a-camera-export-0001234.jpeg"
    short = plots.fit(f"{name}\ntrue: x", 40)
    first = short.split("\n")[0]
    assert len(first) == 40 and first.startswith("a-very-long") and first.endswith("0001234.jpeg")
    assert short.split("\n")[1] == "true: x"
    assert plots.fit("short\nlines", 40) == "short\nlines"


@pytest.mark.parametrize("classes", [5, 25])
def test_per_class_f1_grows_down_and_shows_a_zero(drawn, classes, tmp_path):
    labels = [f"class_{i:02d}" for i in range(classes)]
    scores = {"head only": {k: 0.5 for k in labels}, "fine-tuned": {k: 0.8 for k in labels}}
    scores["fine-tuned"]["class_03"] = 0.0
    plots_evaluation.per_class_f1(scores, tmp_path / "f1.png", "F1")
    fig = drawn[0]
    width, height = Image.open(tmp_path / "f1.png").size
    assert width <= 1000  # one page wide at any class count
    assert height >= 12 * classes * 2  # about a line of text per bar
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("0.00") == 1 and texts.count("0.80") == classes - 1 and texts.count("0.50") == classes
