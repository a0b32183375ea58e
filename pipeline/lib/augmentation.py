"""The ``augment.*`` transforms as seeded Keras layers: the augment stage's copies and finetune's
online augmentation, one affine warp for rotation, zoom and translation."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import keras
import numpy as np


class RandomAffine(keras.layers.Layer):
    """Random rotation, zoom and translation as ONE affine warp per image.

    The same ranges as keras.layers.RandomRotation (a fraction of a full turn),
    RandomZoom (1 +/- zoom, aspect kept) and RandomTranslation (a fraction of
    the size), reflect-filled, but one bilinear resampling instead of three:
    less blur and less work, which on a CPU shares the cores with fine-tuning
    (bench/README.md has the figures).
    """

    def __init__(self, rotation: float, zoom: float, translation: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.translation = rotation, zoom, translation
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        ops = keras.ops
        shape = ops.shape(images)  # dynamic: tf.data batches may have unknown sizes
        n, height, width = shape[0], ops.cast(shape[1], "float32"), ops.cast(shape[2], "float32")

        def uniform(limit):
            return keras.random.uniform((n,), -limit, limit, seed=self.generator)

        angle = uniform(self.rotation * 2 * np.pi)
        scale = 1 + uniform(self.zoom)  # > 1 samples a larger area: zooms out
        dx, dy = uniform(self.translation) * width, uniform(self.translation) * height
        cx, cy = (width - 1) / 2, (height - 1) / 2
        # Output pixel p samples the input at A (p - d - c) + c, with A = scale * rotation.
        cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
        transform = ops.stack([cos, -sin, cx - cos * (cx + dx) + sin * (cy + dy),
                               sin, cos, cy - sin * (cx + dx) - cos * (cy + dy),
                               ops.zeros_like(cos), ops.zeros_like(cos)], axis=1)
        return ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="reflect")

    def compute_output_shape(self, input_shape):
        return input_shape  # lets Keras build it on symbolic inputs of unknown size (tf.data)


def augmenter(augment: SimpleNamespace, seed: int) -> keras.Sequential:
    """The ``augment.*`` transforms as seeded Keras layers (zero factors left out)."""
    layers = []
    if augment.flip != "none":
        layers.append(keras.layers.RandomFlip(augment.flip, seed=seed))
    if augment.rotation or augment.zoom or augment.translation:
        layers.append(RandomAffine(augment.rotation, augment.zoom, augment.translation, seed=seed + 1))
    if augment.contrast:
        # Each layer its own seed. +4, not +2: rotation, zoom and translation were once three layers
        # (+1 to +3); kept so that the same params still give the same data/augmented bytes.
        layers.append(keras.layers.RandomContrast(augment.contrast, seed=seed + 4))
    return keras.Sequential(layers, name="augmenter")


def online_augmentation(augment: SimpleNamespace, seed: int) -> Callable:
    """The augmenter as a function of a batch, always in training mode: for tf.data's map."""
    layers = augmenter(augment, seed)
    return lambda images: layers(images, training=True)
