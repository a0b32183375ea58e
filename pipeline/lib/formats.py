"""The exported formats: a SavedModel that takes image bytes, TFLite files with metadata, ONNX.

Each file runs without this project's code. The SavedModel decodes images itself;
the TFLite files carry their labels, input normalization and a description, so
MediaPipe Tasks' ``ImageClassifier`` loads them as they are; the ONNX file is a
plain graph for onnxruntime. Every model takes RGB pixels in [0, 255] and does its
backbone's preprocessing inside.
"""
from __future__ import annotations

import gc
import logging
import sys
import types
import warnings
from pathlib import Path

import keras
import tensorflow as tf

from pipeline.lib import compat, models, multilabel
from pipeline.lib.errors import StageError

BYTES_SIGNATURE = "serving_default"  # encoded images -> {"classes", "probabilities", "known", "unknown"}
PIXELS_SIGNATURE = "serving_pixels"  # (n, size, size, 3) float32 pixels -> {"probabilities", "known"}


def decode_image(data: tf.Tensor, size: int) -> tf.Tensor:
    """One encoded image (a tf.string scalar) -> ``(size, size, 3)`` uint8, as ``images.load_image``.

    JPEG is decoded at the reduced DCT scale Pillow's ``draft`` picks (the largest of
    1/2, 1/4, 1/8 that keeps both sides at least ``size``), other formats in full;
    grey becomes RGB, transparency is composited on white, and the resize is bilinear
    with antialiasing, as Pillow's. The pixels then match Pillow's to within one level
    (rounding). Not done here: EXIF orientation, so send upright images.
    """
    def jpeg():
        shape = tf.image.extract_jpeg_shape(data)
        scale = tf.minimum(shape[0] // size, shape[1] // size)
        branch = tf.add_n([tf.cast(scale >= s, tf.int32) for s in (2, 4, 8)])
        return tf.switch_case(branch, [
            (lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r, dct_method="INTEGER_ACCURATE"))
            for r in (1, 2, 4, 8)])

    def other():  # PNG, GIF, BMP: 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels
        image = tf.io.decode_image(data, expand_animations=False)
        channels = tf.shape(image)[-1]
        x = tf.cast(image, tf.float32)
        rgb = tf.cond(channels <= 2, lambda: tf.repeat(x[..., :1], 3, axis=-1), lambda: x[..., :3])
        alpha = tf.cond(channels % 2 == 0, lambda: x[..., -1:] / 255, lambda: tf.ones_like(x[..., :1]))
        return tf.cast(tf.round(rgb * alpha + 255 * (1 - alpha)), tf.uint8)

    image = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    image.set_shape([None, None, 3])
    resized = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def saved_model(model: keras.Model, labels: list[str], path: Path, unknown_threshold: float = 0.0,
                label_thresholds: list[float] | None = None) -> None:
    """A SavedModel for TF Serving or any SavedModel host, with two signatures.

    ``serving_default`` takes ``image_bytes``, a batch of encoded JPEG/PNG/GIF/BMP files
    (TF Serving's REST API base64-decodes inputs named ``*_bytes``), and returns
    ``classes`` (the top class names), ``probabilities``, ``known`` (one value per image)
    and ``unknown`` (true where ``known`` is below ``unknown_threshold``: none of the classes,
    as far as the model can tell); ``serving_pixels`` takes decoded pixels and returns
    probabilities and known (one column). A model without ``known`` (``models.deployable``
    of an older calibration) has the rule on its top probability. The model itself is not
    ``track``ed: Keras would then store every weight twice, once per wrapper
    (keras-team/keras#23553), doubling the files. With ``label_thresholds`` (task: multi_label,
    one per label) ``classes`` is each image's label set, the labels whose probability reaches
    their threshold joined by ``|`` (``""``: none of them), and ``present`` holds the same as one
    true/false per label.
    """
    size = int(model.input_shape[1])
    names, threshold = tf.constant(labels), tf.constant(unknown_threshold, tf.float32)

    def pixels(x):
        probabilities, known = models.outputs(model(x, training=False))
        return {"probabilities": probabilities} if known is None else {"probabilities": probabilities, "known": known}

    def encoded(image_bytes):
        batch = tf.map_fn(lambda data: decode_image(data, size), image_bytes,
                          fn_output_signature=tf.TensorSpec((size, size, 3), tf.uint8))
        out = pixels(tf.cast(batch, tf.float32))
        probabilities = out["probabilities"]
        if label_thresholds is None:
            result = {"classes": tf.gather(names, tf.argmax(probabilities, axis=-1)), "probabilities": probabilities}
        else:
            present = probabilities >= tf.constant(label_thresholds, tf.float32)
            chosen = tf.ragged.boolean_mask(tf.tile(names[None], [tf.shape(present)[0], 1]), present)
            result = {"classes": tf.strings.reduce_join(chosen, axis=-1, separator=multilabel.SEP),
                      "present": present, "probabilities": probabilities}
        if "known" in out:
            result["known"] = known = out["known"][:, 0]
        else:
            known = tf.reduce_max(probabilities, axis=-1)
        return {**result, "unknown": known < threshold}

    archive = keras.export.ExportArchive()
    archive.add_endpoint(BYTES_SIGNATURE, encoded, [tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint(PIXELS_SIGNATURE, pixels, [tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")])
    archive.write_out(str(path), verbose=False)


def tflite(saved_model_dir: Path, path: Path, quantize: str, representative=None) -> None:
    """Convert the SavedModel's pixel signature to TFLite: ``float32``, ``float16`` weights or ``int8``.

    Only TFLite's built-in ops are allowed (no Flex/TF ops), so the files run on
    the plain LiteRT runtime of a phone or microcontroller.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[PIXELS_SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8  # pixels are 0..255 already; probabilities stay float
    try:
        path.write_bytes(converter.convert())
    except Exception as err:  # the converter raises ConverterError, RuntimeError, ValueError...
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StageError(f"converting the model to {path.name} failed: {message}. TFLite has no "
                         "built-in kernel for some operations of some backbones: try another "
                         "base.backbone") from err


def _metadata_writer():
    """MediaPipe's metadata writer module. The mediapipe wheels (0.10.3x, 1.x) leave out the
    compiled ``_pywrap_metadata_version`` it imports, whose one function computes the lowest
    metadata parser version that reads the result; for what ``add_metadata`` writes (image
    input, normalization, label file) that is the schema's first version, 1.0.0."""
    name = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
    try:
        __import__(name)
    except ImportError:
        compat.require("mediapipe", "1.2", "the TFLite metadata writer's stand-in for mediapipe's missing "
                       "_pywrap_metadata_version (pipeline/lib/formats.py)",
                       "check that metadata_writer still imports that module and calls only "
                       "GetMinimumMetadataParserVersion, and that 1.0.0 is still its answer for what "
                       "add_metadata writes")
        parts = name.split(".")
        for i in range(3, len(parts) + 1):
            sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        sys.modules[name].GetMinimumMetadataParserVersion = lambda *_: "1.0.0"
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer
    return metadata_writer


def output_shapes(path: Path) -> list[list[int]]:
    """The shapes of a .tflite file's outputs, in the order of its graph (MediaPipe's heads)."""
    from ai_edge_litert import interpreter as litert

    return [list(d["shape"]) for d in litert.Interpreter(model_path=str(path)).get_output_details()]


def add_metadata(path: Path, labels_file: Path, description: str) -> None:
    """Embed labels, input normalization and a description in a .tflite file, as MediaPipe
    Tasks and the LiteRT support library expect. The normalization is the identity (mean 0,
    std 1): the model takes pixels in [0, 255] and normalizes inside. A file with ``known`` has
    it as a second classification head of one category, ``known``. The converter, not the
    signature, orders the outputs, and the heads follow that order: checked, probabilities first."""
    writers = _metadata_writer()
    shapes = output_shapes(path)
    labels = labels_file.read_text().splitlines()
    if shapes[0][-1] != len(labels) or len(shapes) > 2 or (len(shapes) == 2 and shapes[1][-1] != 1):
        raise StageError(f"{path.name}: outputs of shapes {shapes}; the metadata expects the {len(labels)} "
                         "probabilities first, then at most the one known column")
    writer = writers.MetadataWriter.create(bytearray(path.read_bytes()))
    writer.add_general_info(path.stem, description)
    writer.add_image_input(norm_mean=[0.0], norm_std=[1.0])
    writer.add_classification_output(writers.Labels().add_from_file(str(labels_file)))
    if len(shapes) == 2:
        writer.add_classification_output(writers.Labels().add(["known"], exported_filename="known"), name="known",
                                         description="below the unknown threshold (calibration.json, 0.5 by "
                                                     "default): none of the classes")
    model, _ = writer.populate()
    path.write_bytes(model)
    del writer
    gc.collect()  # the writer sits in a reference cycle; collected at exit, its clean-up would fail loudly


def onnx(model: keras.Model, path: Path) -> None:
    """The model as ONNX (Keras' exporter, through tf2onnx): input ``pixels`` as ``serving_pixels``."""
    size = int(model.input_shape[1])
    try:
        # tf2onnx logs its versions, opset and graph optimizations at INFO; the stage log keeps warnings
        logging.getLogger("tf2onnx").setLevel(logging.WARNING)
        with warnings.catch_warnings():  # Keras' tf2onnx patch probes np.object, which NumPy 2 warns about
            warnings.simplefilter("ignore", FutureWarning)
            model.export(str(path), format="onnx", verbose=False,
                         input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")])
    except Exception as err:  # tf2onnx raises many types for an op it cannot convert
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StageError(f"converting the model to {path.name} failed: {message}") from err
