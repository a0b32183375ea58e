"""Per-image work done once per image content: a stage reuses what its previous output holds.

embed and extract_features compute one result per image (a backbone forward pass). Their outputs
are ``persist: true`` in dvc.yaml, so when such a stage reruns it finds its previous output in
place. If that output was made by the same recipe (the params a per-image result depends on, the
source of the modules that compute it, and the TensorFlow and Keras versions: ``RECIPE``), each image whose key (a content hash) it holds is
copied from it and only the rest go through the backbone: adding 1% more images costs about 1% of
the work. The result is the one a run from scratch writes, byte for byte (tests/test_reuse.py),
because an image's result never depends on the other images of its batch: every batch runs at
one shape (``Padded``), and a CPU or GPU kernel computes each image of a batch on its own. A
previous output of another recipe, or none (a fresh clone before `dvc pull`), is ignored: every
image is computed, as before.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np

RECIPE = "recipe.json"  # written into the output: what its per-image results were computed with
CHUNK = 4096  # rows copied at a time: memory holds a chunk, never the whole previous output
log = logging.getLogger("pipeline.lib.reuse")


def recipe(code: list, **parts) -> dict:
    """What a per-image result depends on: ``parts`` (the stage's params), the source of the
    ``code`` modules that compute it (a changed function must not be reused), and the library
    versions (another TensorFlow may compute other float bits). A change anywhere else in the
    stage's code reruns the stage, which then copies every image: the per-image work is the same."""
    import keras
    import tensorflow as tf
    files = [Path(getattr(c, "__file__", c)) for c in code]  # modules, or a stage's own __file__
    sources = {f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in files}
    return {**parts, "code": sources, "tensorflow": tf.__version__, "keras": keras.__version__}


def made_by(folder: Path) -> dict | None:
    """The recipe ``folder``'s output was made by, or None where it has none or it is unreadable (logged)."""
    try:
        made = json.loads((Path(folder) / RECIPE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.info("not reusing %s: its %s is unreadable (%s)", folder, RECIPE, err)
        return None
    return made if isinstance(made, dict) else None


def previous(folder: Path, wanted: dict) -> Path | None:
    """``folder`` if it holds an earlier output made by the ``wanted`` recipe, else None (logged)."""
    made = made_by(folder)
    if made is None:
        return None
    if made != wanted:
        changed = sorted(k for k in set(made) | set(wanted) if made.get(k) != wanted.get(k))
        log.info("not reusing %s: made with other %s; computing every image", folder, ", ".join(changed))
        return None
    return Path(folder)


def write_recipe(folder: Path, made: dict) -> None:
    (Path(folder) / RECIPE).write_text(json.dumps(made, indent=2, sort_keys=True) + "\n")


def matches(keys: list, old_keys: list) -> tuple[np.ndarray, np.ndarray]:
    """``(new, old)`` row indices: row ``new[i]`` of ``keys`` is row ``old[i]`` of ``old_keys``."""
    where = {k: i for i, k in enumerate(old_keys)}
    pairs = [(i, where[k]) for i, k in enumerate(keys) if k in where]
    found = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return found[:, 0], found[:, 1]


def copy_rows(dest, rows: np.ndarray, source, from_rows: np.ndarray) -> None:
    """``dest[rows] = source[from_rows]`` (a ``rows.Writer`` and a ``rows.Reader``), a chunk at a
    time: memory holds a chunk, never the whole previous output."""
    for start in range(0, len(rows), CHUNK):
        dest.write(rows[start:start + CHUNK], source.take(from_rows[start:start + CHUNK]))


class Padded:
    """``forward`` on batches padded to ``size`` rows, so every call runs at one shape (a kernel
    may pick another algorithm for another batch size, and with it other float bits)."""

    def __init__(self, forward: Callable, size: int):
        self.forward, self.size = forward, size

    def __call__(self, images):
        """``forward``'s output for ``images``, or a tuple of them where it returns several."""
        images = np.asarray(images)  # a batch of tf.data's or of NumPy's
        n = len(images)
        if n < self.size:
            images = np.concatenate([images, np.zeros((self.size - n, *images.shape[1:]), images.dtype)])
        out = self.forward(images)
        return tuple(np.asarray(o)[:n] for o in out) if isinstance(out, (tuple, list)) else np.asarray(out)[:n]
