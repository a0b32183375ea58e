"""Grad-CAM heat maps: which part of an image the classifier's decision rests on.

Grad-CAM (Selvaraju et al., 2017) weights the backbone's last convolutional
feature map by the gradient of one class's probability, averaged over the map,
and keeps the positive part. It needs the Keras model (the exported formats
carry no gradients) built as this pipeline builds it: an ``extractor`` holding the
backbone, whose last layer is the global pooling, then the ``head``.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from matplotlib import colormaps
from PIL import Image

from pipeline.lib import models
from pipeline.lib.errors import StageError


class GradCam:
    def __init__(self, model: keras.Model):
        try:
            extractor, self.head = model.get_layer(models.EXTRACTOR), model.get_layer(models.HEAD)
            backbone = models.backbone_of(model)
        except ValueError as err:
            raise StageError(f"Grad-CAM needs a model built by this pipeline (extractor + head): {err}") from err
        # A deployable model (models.deployable) has a head that ends in its logits, the softmax after it
        self.logits = models.last_layer(self.head).get_config().get("activation") == "linear"
        self.pool = backbone.layers[-1]
        if not isinstance(self.pool, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)):
            raise StageError(f"Grad-CAM needs the backbone to end in global pooling, not {type(self.pool).__name__}")
        self.before = []  # the extractor's layers ahead of the backbone: its preprocessing
        for layer in extractor.layers:
            if layer is backbone:
                break
            if not isinstance(layer, keras.layers.InputLayer):
                self.before.append(layer)
        self.conv = keras.Model(backbone.inputs, self.pool.input)  # pixels -> last feature map
        self.step = tf.function(self._maps)

    def _maps(self, pixels, classes):
        x = tf.cast(pixels, tf.float32)
        for layer in self.before:
            x = layer(x)
        with tf.GradientTape() as tape:
            features = self.conv(x, training=False)
            tape.watch(features)
            probabilities = self.head(self.pool(features), training=False)
            if self.logits:
                probabilities = tf.nn.softmax(probabilities)
            classes = tf.where(classes < 0, tf.argmax(probabilities, axis=1, output_type=tf.int32), classes)
            chosen = tf.gather(probabilities, classes, batch_dims=1)
        weights = tf.reduce_mean(tape.gradient(chosen, features), axis=(1, 2), keepdims=True)
        maps = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))
        return maps / (tf.reduce_max(maps, axis=(1, 2), keepdims=True) + 1e-12), probabilities

    def __call__(self, pixels: np.ndarray, classes: np.ndarray | None = None,
                 batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(heat maps in [0, 1] at the feature map's resolution, probabilities) for uint8 images;
        each map is for ``classes[i]``, by default the predicted class."""
        if not len(pixels):  # e.g. a model with no mistakes to explain
            return np.zeros((0, 0, 0), np.float32), np.zeros((0, 0), np.float32)
        classes = np.full(len(pixels), -1) if classes is None else np.asarray(classes)
        maps, probs = [], []
        for i in range(0, len(pixels), batch_size):
            m, p = self.step(tf.constant(pixels[i:i + batch_size]), tf.constant(classes[i:i + batch_size], tf.int32))
            maps.append(m.numpy())
            probs.append(p.numpy())
        return np.concatenate(maps), np.concatenate(probs)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The heat map, stretched to the image (the model sees the image squashed to a square, so
    the stretch maps it back) and coloured with matplotlib's ``jet``, blended over the image as
    strongly as it is hot: where the map is cold the photo shows untouched (a uniform blend tinted
    every photo blue and hid it)."""
    h, w = image.shape[:2]
    heat = np.clip(np.asarray(Image.fromarray(np.float32(heat)).resize((w, h), Image.Resampling.BILINEAR)), 0, 1)
    colours = colormaps["jet"](heat)[..., :3] * 255
    weight = alpha * heat[..., None]
    return np.uint8(np.clip((1 - weight) * image + weight * colours, 0, 255))
