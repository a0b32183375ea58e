"""Backbones, heads and their assembly, following the Keras transfer-learning recipe.

Every model takes float RGB pixels in [0, 255] at ``base.image_size`` and does
the backbone's own ``preprocess_input`` inside itself (a registered layer, not
a Lambda, so saved files load in Keras' safe mode).
"""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

from pipeline.lib import keras_cache
from pipeline.lib.errors import StageError

log = logging.getLogger("pipeline.lib.models")
# The names of the two parts the pipeline builds and assembles: layers of models/model.keras that
# rank, Grad-CAM and the backbone look-up find again by name.
EXTRACTOR, HEAD = "extractor", "head"


def embedding(extractor, x):
    """What the audit, split and rank compare images by: the sum of the extractor's features of the
    images ``x`` and of their mirror images, so a mirrored copy has the very same embedding."""
    return extractor(x, training=False) + extractor(tf.reverse(x, [2]), training=False)


def views(extractor, x):
    """``(features, embedding)`` of the images ``x`` from one pass per view: the extractor's features
    of the images as they are (what the head trains on), and ``embedding``'s sum with their mirror
    images' features. embed computes both, so extract_features never runs an original again."""
    features = extractor(x, training=False)
    return features, features + extractor(tf.reverse(x, [2]), training=False)


def fingerprint(model: keras.Model) -> str:
    """A hash of ``model``'s weights: two stages whose extractors have the same fingerprint (and the
    same base.* params) compute the same features, whatever weights file or seed made them."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(keras.ops.convert_to_numpy(weight).tobytes())
    return digest.hexdigest()[:16]


def backbones() -> dict[str, Callable]:
    """Every ``keras.applications`` model constructor, by name (MobileNetV2, ResNet50, ...)."""
    apps = keras.applications
    return {name: getattr(apps, name) for name in dir(apps) if name[0].isupper()}


def preprocess_function(backbone: str) -> Callable:
    """The ``preprocess_input`` of the module that defines ``backbone`` (e.g. ``mobilenet_v2``)."""
    module = backbones()[backbone].__module__.rsplit(".", 1)[-1]
    return getattr(keras.applications, module).preprocess_input


@keras.saving.register_keras_serializable(package="pipeline")
class Preprocess(keras.layers.Layer):
    """The named backbone's ``preprocess_input`` as a layer, so it travels inside the model."""

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self._fn = preprocess_function(backbone)

    def call(self, x):
        return self._fn(keras.ops.cast(x, "float32"))

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": self.backbone}


def build_extractor(base: SimpleNamespace) -> keras.Model:
    """Frozen ``base.backbone`` with its preprocessing and pooling: images -> feature vectors."""
    constructors = backbones()
    if base.backbone not in constructors:
        raise StageError(f"base.backbone {base.backbone!r} is not a keras.applications model; "
                         f"valid names: {', '.join(sorted(constructors))}")
    weights = {"imagenet": "imagenet", "none": None}.get(base.weights, base.weights)
    if weights not in ("imagenet", None) and not Path(weights).is_file():
        raise StageError(f"base.weights {base.weights!r}: no such file (use imagenet, none or a weights path)")
    shape = (base.image_size, base.image_size, 3)
    try:
        backbone = constructors[base.backbone](include_top=False, weights=weights, input_shape=shape,
                                               pooling=base.pooling)
    except Exception as err:  # Keras raises a bare Exception for a failed weights download
        if weights not in ("imagenet", None):  # h5py, zipfile and Keras each raise their own types
            first = (str(err).strip().splitlines() or [""])[0][:300]
            raise StageError(f"base.weights {base.weights!r} is not a readable Keras weights file for "
                             f"{base.backbone} without its top at {base.image_size} px "
                             f"({type(err).__name__}: {first})") from err
        url = re.search(r"https?://\S+", str(err))
        if "URL fetch failure" not in str(err) or not url:
            raise
        cache = keras_cache.keras_cache_dir() / "models"
        raise StageError(f"could not download {base.backbone} ImageNet weights from {url.group(0)}. "
                         f"Offline? Put that file at {cache / url.group(0).rsplit('/', 1)[-1]} "
                         "(set KERAS_HOME to use another cache)") from err
    backbone.trainable = False
    inputs = keras.Input(shape, name="image")
    features = backbone(Preprocess(base.backbone)(inputs), training=False)
    return keras.Model(inputs, features, name=EXTRACTOR)


@keras.saving.register_keras_serializable(package="pipeline")
class Standardize(keras.layers.Layer):
    """Per-feature ``(x - mean) / std`` with statistics fitted once on the training features.

    Backbones differ wildly in feature scale (randomly initialised MobileNetV2
    features are around 1e-12), and a linear head learns far better on unit
    variance. Unlike ``keras.layers.Normalization`` there is no 1e-7 floor on
    the std, which would flatten such features to nothing.
    """

    def build(self, input_shape):
        dim = (input_shape[-1],)
        self.mean = self.add_weight(shape=dim, initializer="zeros", trainable=False, name="mean")
        self.inv_std = self.add_weight(shape=dim, initializer="ones", trainable=False, name="inv_std")

    def fit(self, features) -> None:
        """Fit on ``features``: an array, or a ``rows.Reader`` read twice a chunk at a time (memory
        holds a chunk, whatever the number of images)."""
        def chunks():
            return (part for _, part in features.chunks()) if hasattr(features, "chunks") else [features]
        n = len(features)
        mean = sum(part.sum(axis=0, dtype=np.float64) for part in chunks()) / max(n, 1)
        std = np.sqrt(sum(np.square(part - mean).sum(axis=0) for part in chunks()) / max(n, 1))
        self.mean.assign(mean.astype("float32"))
        self.inv_std.assign(np.where(std > 0, 1 / np.where(std > 0, std, 1), 1).astype("float32"))

    def call(self, x):
        return (x - self.mean) * self.inv_std


def build_head(train_features, n_classes: int, hidden_units: int, dropout: float,
               multi_label: bool = False) -> keras.Model:
    """Standardize, dropout, optional hidden layer, softmax (``multi_label``: a sigmoid per label):
    the classifier on cached features (an array or a ``rows.Reader``)."""
    inputs = keras.Input(train_features.shape[1:], name="features")
    standardize = Standardize(name="standardize")
    x = standardize(inputs)
    standardize.fit(train_features)
    x = keras.layers.Dropout(dropout)(x)
    if hidden_units:
        x = keras.layers.Dense(hidden_units, activation="relu")(x)
        x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(n_classes, activation="sigmoid" if multi_label else "softmax",
                                 name="probabilities")(x)
    return keras.Model(inputs, outputs, name=HEAD)


def assemble(extractor: keras.Model, head: keras.Model) -> keras.Model:
    """images -> probabilities: the extractor (frozen backbone) followed by the trained head."""
    inputs = keras.Input(extractor.input_shape[1:], name="image")
    return keras.Model(inputs, head(extractor(inputs, training=False)), name="classifier")


def backbone_of(model: keras.Model) -> keras.Model:
    """The ``keras.applications`` model nested in an extractor or a classifier."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer if layer.name not in (EXTRACTOR, HEAD) else backbone_of(layer)
    raise ValueError(f"{model.name} holds no backbone model")


def unfreeze_top(backbone: keras.Model, n_layers: int) -> int:
    """Make the top ``n_layers`` trainable, BatchNorm excepted; return the trainable layer count.

    BatchNorm stays in inference mode by being non-trainable: under Keras 3, the
    training step's ``model(x, training=True)`` reaches every inner layer once
    they are trainable, the base's own ``training=False`` call argument
    notwithstanding (keras-team/keras#20285), and the moving statistics would drift.
    """
    backbone.trainable = True
    cut = len(backbone.layers) - n_layers
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(layer.trainable and bool(layer.weights) for layer in backbone.layers)


def with_precision(model: keras.Model, precision: str) -> keras.Model:
    """The same model and weights with every layer computing in ``precision`` (a Keras dtype policy
    name: distribution.precision) except the output layer, which stays float32 so the softmax and
    the loss are computed in float32. Variables are float32 under every policy, so a model trained
    under a mixed one converts back to float32 exactly (``save`` does)."""
    if precision == "float32" and set(_policies(model)) == {"float32"}:
        return model
    output = last_layer(model)

    def clone(layer):
        config = {**layer.get_config(), "dtype": "float32" if layer is output else precision}
        return layer.__class__.from_config(config)

    converted = keras.models.clone_model(model, clone_function=clone, recursive=True)
    converted.set_weights(model.get_weights())
    return converted


def _policies(model: keras.Model) -> Iterator[str]:
    for layer in model.layers:
        yield layer.dtype_policy.name
        if isinstance(layer, keras.Model):
            yield from _policies(layer)


def last_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer that ends ``model``, looked for in the nested head as well."""
    layer = model.layers[-1]
    while isinstance(layer, keras.Model):  # the head nested in a classifier
        layer = layer.layers[-1]
    return layer


def is_multi_label(model: keras.Model) -> bool:
    """Whether ``model`` ends in a sigmoid per label (task: multi_label) rather than a softmax."""
    return last_layer(model).get_config().get("activation") == "sigmoid"


def output_layer(model: keras.Model) -> keras.layers.Dense:
    """The Dense layer that ends a classifier (``build_head``'s ``probabilities``: a softmax, or a
    sigmoid per label for task: multi_label), looked for in the nested head as well."""
    layer = last_layer(model)
    if not isinstance(layer, keras.layers.Dense) or layer.get_config()["activation"] not in ("softmax", "sigmoid"):
        raise StageError(f"{model.name} does not end in a softmax or sigmoid Dense layer (it ends in {layer.name}, "
                         f"{type(layer).__name__}): not a classifier built by this pipeline")
    return layer


def logits(model: keras.Model) -> keras.Model:
    """A copy of ``model`` that returns its logits: the same weights, the output layer's softmax
    (or sigmoid) left out (cloned from its config with a linear activation, as ``with_precision`` clones)."""
    output = output_layer(model)

    def clone(layer):
        config = layer.get_config()
        if layer is output:  # renamed: the activation that ``deployable`` puts after it is the probabilities
            config = {**config, "activation": "linear", "name": "logits"}
        return layer.__class__.from_config(config)

    converted = keras.models.clone_model(model, clone_function=clone, recursive=True)
    converted.set_weights(model.get_weights())
    return converted


@keras.saving.register_keras_serializable(package="pipeline")
class Known(keras.layers.Layer):
    """How much an image looks like the training classes, from the calibrated logits ``z``:
    ``sigmoid((E - center) / scale)``, where ``E`` is the energy score of the raw logits
    ``temperature * (z - shift)``: ``logsumexp`` over the classes (Liu et al. 2020), or with ``joint``
    (a sigmoid per label, a temperature and a shift per label) ``sum_k log(1 + exp)`` over the labels
    (JointEnergy, Wang et al. 2021). The calibrate stage picks ``center`` (the energy that keeps
    ``calibrate.unknown_keep`` of the validation images, so 0.5 is the unknown threshold) and
    ``scale`` (the energy's robust spread over them). ``confidence.known`` and
    ``confidence.label_known`` are the same arithmetic in NumPy."""

    def __init__(self, temperature, center: float, scale: float, joint: bool = False, shift=0.0, **kwargs):
        super().__init__(**kwargs)
        as_floats = lambda v: [float(x) for x in v] if isinstance(v, (list, tuple)) else float(v)  # noqa: E731
        self.temperature, self.shift = as_floats(temperature), as_floats(shift)
        self.center, self.scale, self.joint = float(center), float(scale), bool(joint)

    def call(self, z):
        raw = ((keras.ops.cast(z, "float32") - keras.ops.convert_to_tensor(self.shift, "float32"))
               * keras.ops.convert_to_tensor(self.temperature, "float32"))
        if self.joint:  # softplus written out of ops every runtime has (LiteRT has no softplus kernel)
            softplus = keras.ops.relu(raw) + keras.ops.log(1 + keras.ops.exp(-keras.ops.abs(raw)))
            energy = keras.ops.sum(softplus, axis=-1, keepdims=True)
        else:
            energy = keras.ops.logsumexp(raw, axis=-1, keepdims=True)
        return keras.ops.sigmoid((energy - self.center) / self.scale)

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature, "center": self.center, "scale": self.scale,
                "joint": self.joint, "shift": self.shift}


def deployable(model: keras.Model, calibration: dict) -> keras.Model:
    """``model`` as it ships (export) and as ``pipeline.predict`` runs an un-exported one: two
    outputs, ``probabilities`` (calibrated: the output layer's weights divided by the temperature;
    for a multi-label model Platt scaling per label, ``logit / T + shift``) and ``known`` (``Known``, one value per image), from a copy
    of ``model`` whose last Dense layer gives the logits. Where ``calibration`` has no energy score
    (``unknown_score`` ``probability``, calibrations from before it), the temperature alone is applied."""
    if calibration["unknown_score"] != "known":
        return apply_temperature(model, calibration["temperature"])
    multi = is_multi_label(model)
    if multi != (calibration.get("task") == "multi_label"):
        raise StageError(f"the calibration is for a task: {calibration.get('task', 'single_label')} model, and "
                         f"{model.name} is not one: run `dvc repro calibrate` for this model")
    temperature, shift = calibration["temperature"], calibration.get("shift", 0.0)
    copy = logits(model)
    _divide(last_layer(copy), temperature)
    if multi:  # Platt scaling per label: logit / T + shift
        kernel, bias = last_layer(copy).get_weights()
        last_layer(copy).set_weights([kernel, bias + np.asarray(shift, np.float32)])
    z = copy.outputs[0]
    probabilities = (keras.layers.Activation("sigmoid", name="probabilities") if multi
                     else keras.layers.Softmax(name="probabilities"))(z)
    known = Known(temperature, calibration["known_center"], calibration["known_scale"], joint=multi,
                  shift=shift if multi else 0.0, name="known")(z)
    return keras.Model(copy.inputs, [probabilities, known], name=model.name)


def outputs(result) -> tuple:
    """(probabilities, known or None) from what a model returned: ``deployable`` models return
    both, the pipeline's other models (and exports from before ``known``) probabilities alone."""
    return (result[0], result[1]) if isinstance(result, (list, tuple)) else (result, None)


def apply_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """``model`` with its probabilities calibrated, in place: the output layer's kernel and bias
    divided by ``temperature``, so softmax(z / T) comes out of the very same architecture, and
    every exported format carries the calibration with no new operation."""
    _divide(output_layer(model), temperature)
    return model


def _divide(layer: keras.layers.Dense, temperature) -> None:
    """The layer's kernel and bias divided by ``temperature`` (a number, or one per output): its
    logits z become z / T."""
    layer.set_weights([w / np.asarray(temperature, np.float32) for w in layer.get_weights()])
