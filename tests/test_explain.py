"""Grad-CAM on a model built as the pipeline builds it, trained where one coloured shape decides the class."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.lib import explain, models
from pipeline.lib.errors import StageError

SIZE = 64
COLOURS = np.array([[220, 30, 30], [30, 200, 30], [30, 60, 230]])  # class = the square's colour


def scenes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, classes, square masks): grey noise with one coloured 16 px square somewhere."""
    rng = np.random.default_rng(seed)
    images = rng.integers(90, 160, (n, SIZE, SIZE, 1)).repeat(3, axis=-1)
    classes, masks = rng.integers(0, 3, n), np.zeros((n, SIZE, SIZE), bool)
    for image, cls, mask in zip(images, classes, masks):
        top, left = rng.integers(0, SIZE - 16, 2)
        image[top:top + 16, left:left + 16] = COLOURS[cls]
        mask[top:top + 16, left:left + 16] = True
    return images.astype(np.uint8), classes, masks


@pytest.fixture(scope="module")
def trained():
    """extractor (Preprocess + a small conv backbone ending in global pooling) + head, as models.assemble."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)  # 16 x 16 map
    backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="tiny_backbone")
    image = keras.Input((SIZE, SIZE, 3), name="image")
    extractor = keras.Model(image, backbone(models.Preprocess("MobileNetV2")(image)), name="extractor")
    features = keras.Input((32,), name="features")
    head = keras.Model(features, keras.layers.Dense(3, activation="softmax")(features), name="head")
    model = models.assemble(extractor, head)
    x, y, _ = scenes(600, seed=0)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x.astype("float32"), y, epochs=8, batch_size=32, verbose=0)
    return model


def test_the_heat_is_on_the_shape_that_decides_the_class(trained):
    x, y, masks = scenes(30, seed=1)
    maps, probs = explain.GradCam(trained)(x)
    assert (probs.argmax(axis=1) == y).mean() >= 0.9  # the model did learn the task
    assert maps.shape == (30, 16, 16) and maps.min() >= 0 and maps.max() <= 1
    hits, contrast = 0, []
    for heat, mask in zip(maps, masks):
        big = np.kron(heat, np.ones((4, 4)))  # back to 64 px: each map cell covers 4 x 4 pixels
        peak = np.unravel_index(big.argmax(), big.shape)
        hits += bool(np.pad(mask, 4)[peak[0]:peak[0] + 9, peak[1]:peak[1] + 9].any())  # within a cell
        contrast.append(big[mask].mean() / max(big[~mask].mean(), 1e-6))
    assert hits >= 27, hits  # the hottest point lies on (or touches) the square
    assert np.median(contrast) > 3, contrast


def test_a_map_for_another_class_differs_and_overlay_keeps_the_image_size(trained):
    x, y, _ = scenes(4, seed=2)
    cam = explain.GradCam(trained)
    own, _ = cam(x)
    other, _ = cam(x, classes=(y + 1) % 3)
    assert not np.allclose(own, other)
    tile = explain.overlay(x[0][:40], own[0])  # any image shape: the map is stretched onto it
    assert tile.shape == (40, SIZE, 3) and tile.dtype == np.uint8


def test_the_overlay_leaves_the_photo_untouched_where_the_map_is_cold():
    photo = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0  # one hot corner cell
    tile = explain.overlay(photo, heat)
    assert np.array_equal(tile[-8:, -8:], photo[-8:, -8:])  # the cold corner: the photo as it is
    assert np.abs(tile[:2, :2].astype(int) - photo[:2, :2]).mean() > 20  # the hot one: coloured


def test_no_images_give_no_maps(trained):
    """A model with no test mistakes hands the gallery no images (the evaluate stage crashed here)."""
    maps, probs = explain.GradCam(trained)(scenes(1, seed=3)[0][:0])
    assert len(maps) == 0 and len(probs) == 0


def test_a_model_not_built_by_the_pipeline_is_refused_with_a_reason():
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    with pytest.raises(StageError, match="built by this pipeline"):
        explain.GradCam(plain)
