"""The ``augment.*`` transforms: the augment stage's copies and finetune's online augmentation.

One function of the images and ``DRAWS`` uniform numbers in [0, 1) per image (``apply``): a flip,
one affine warp for rotation, zoom and translation, and a contrast change. Where the numbers come
from is the only difference between the two uses:

- the augment stage draws each copy's numbers from the image's own content hash, the copy's
  number and ``seed`` (``draws``), so an image's augmented copies never depend on the other
  images: a rerun on a few more images writes the same copies of the rest, and extract_features
  reuses their features (pipeline/lib/reuse.py);
- finetune draws them per batch from a seeded generator (``online_augmentation``).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import keras
import numpy as np

# Columns of the uniform draws: flip left-right, flip up-down, angle, zoom, shift x, shift y, contrast
DRAWS = 7


def apply(augment: SimpleNamespace, images, u):
    """``images`` (n, height, width, 3), float in [0, 255], transformed by the uniform draws ``u``
    (n, DRAWS). The ranges are keras.layers.RandomFlip's, RandomRotation's (a fraction of a full
    turn), RandomZoom's (1 +/- zoom, aspect kept), RandomTranslation's (a fraction of the size)
    and RandomContrast's; a zero factor leaves its transform out, and the warp is one bilinear,
    reflect-filled resampling instead of three: less blur and less work."""
    ops = keras.ops
    u = ops.cast(u, "float32")

    def chosen(column):  # (n, 1, 1, 1): whether each image flips
        return ops.reshape(u[:, column] < 0.5, (-1, 1, 1, 1))
    if augment.flip in ("horizontal", "horizontal_and_vertical"):
        images = ops.where(chosen(0), ops.flip(images, axis=2), images)
    if augment.flip in ("vertical", "horizontal_and_vertical"):
        images = ops.where(chosen(1), ops.flip(images, axis=1), images)
    if augment.rotation or augment.zoom or augment.translation:
        images = warp(images, *(2 * u[:, c] - 1 for c in (2, 3, 4, 5)), augment)
    if augment.contrast:
        factor = ops.reshape(1 + (2 * u[:, 6] - 1) * augment.contrast, (-1, 1, 1, 1))
        mean = ops.mean(images, axis=(1, 2), keepdims=True)
        images = ops.clip((images - mean) * factor + mean, 0, 255)
    return images


def warp(images, angle, zoom, dx, dy, augment: SimpleNamespace):
    """Rotation, zoom and translation as one affine warp; ``angle`` ... ``dy`` in [-1, 1] per image."""
    ops = keras.ops
    shape = ops.shape(images)  # dynamic: tf.data batches may have unknown sizes
    height, width = ops.cast(shape[1], "float32"), ops.cast(shape[2], "float32")
    angle = angle * augment.rotation * 2 * np.pi
    scale = 1 + zoom * augment.zoom  # > 1 samples a larger area: zooms out
    dx, dy = dx * augment.translation * width, dy * augment.translation * height
    cx, cy = (width - 1) / 2, (height - 1) / 2
    # Output pixel p samples the input at A (p - d - c) + c, with A = scale * rotation.
    cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
    transform = ops.stack([cos, -sin, cx - cos * (cx + dx) + sin * (cy + dy),
                           sin, cos, cy - sin * (cx + dx) - cos * (cy + dy),
                           ops.zeros_like(cos), ops.zeros_like(cos)], axis=1)
    return ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="reflect")


def draws(sha256: str, copy: int, seed: int) -> np.ndarray:
    """The uniform draws of augmented copy ``copy`` of the image whose content hash is ``sha256``."""
    return np.random.default_rng([seed, copy, int(sha256[:32], 16)]).random(DRAWS)


def online_augmentation(augment: SimpleNamespace, seed: int) -> Callable:
    """The transforms as a function of a batch, drawn from a generator seeded by ``seed``: for
    tf.data's map."""
    generator = keras.random.SeedGenerator(seed)

    def transform(images):
        n = keras.ops.shape(images)[0]
        return apply(augment, images, keras.random.uniform((n, DRAWS), seed=generator))
    return transform
