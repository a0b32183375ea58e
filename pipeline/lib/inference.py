"""Saved classifiers (Keras, SavedModel, TFLite, ONNX) as one thing: uint8 images -> class probabilities.

Evaluation, the export parity check and ``pipeline.predict`` all go through
``load_images`` and ``Classifier.predict``, so the metrics are measured on
exactly what a user of the exported model gets: the training decode and resize
(``images.load_image``), then the model's own preprocessing inside it. TFLite
files run on LiteRT (``ai_edge_litert``), the runtime that replaces
``tf.lite.Interpreter``, or through MediaPipe Tasks' image classifier.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import tensorflow as tf
from ai_edge_litert import interpreter as litert

from pipeline.lib import artifacts, formats, images, models

LABELS_FILE = "labels.txt"  # one class name per line, in output order; written beside exported models
# {"temperature", "temperature_in_model", "unknown_score", "unknown_threshold"}: written by calibrate
# (models/, temperature not yet in the model) and export (beside the files, temperature built in)
CALIBRATION_FILE = "calibration.json"


class Classifier:
    """A loaded model: ``image_size`` and ``probabilities(uint8 batch) -> (n, classes) float32``."""

    image_size: int

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, pixels: np.ndarray, batch_size: int = 64, tta: bool = False) -> np.ndarray:
        """Probabilities for any number of images, ``batch_size`` at a time; with ``tta``, the
        mean of each image's and its left-right mirror's (test-time augmentation)."""
        def run(x):
            parts = [self.probabilities(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
            return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        return (run(pixels) + run(pixels[:, :, ::-1])) / 2 if tta else run(pixels)


class KerasClassifier(Classifier):
    def __init__(self, model):
        self.model = model
        self.image_size = int(model.input_shape[1])

    def probabilities(self, batch):
        return np.asarray(self.model.predict_on_batch(batch.astype(np.float32)), dtype=np.float32)


class SavedModelClassifier(Classifier):
    """A SavedModel folder: its pixel signature (``serving_pixels``, or ``serving_default`` in
    exports from before the image-bytes signature) and, if it has one, the image-bytes one."""

    def __init__(self, path: Path):
        signatures = tf.saved_model.load(str(path)).signatures
        self.serve = signatures.get(formats.PIXELS_SIGNATURE) or signatures["serving_default"]
        self.serve_bytes = signatures["serving_default"] if formats.PIXELS_SIGNATURE in signatures else None
        spec = next(iter(self.serve.structured_input_signature[1].values()))
        self.image_size = int(spec.shape[1])

    def probabilities(self, batch):
        out = self.serve(tf.constant(batch, tf.float32))
        return next(iter(out.values())).numpy().astype(np.float32)

    def classify_files(self, paths: list[Path], batch_size: int = 64) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(top class names, probabilities, unknown flags) for image files, decoded by the
        SavedModel itself. Exports from before the flag have none: all false."""
        names, parts, unknown = [], [], []
        for i in range(0, len(paths), batch_size):
            out = self.serve_bytes(image_bytes=tf.constant([Path(p).read_bytes() for p in paths[i:i + batch_size]]))
            names += [name.decode() for name in out["classes"].numpy()]
            parts.append(out["probabilities"].numpy().astype(np.float32))
            unknown.append(out["unknown"].numpy() if "unknown" in out else np.zeros(len(parts[-1]), bool))
        return names, np.concatenate(parts), np.concatenate(unknown)


class TFLiteClassifier(Classifier):
    """A .tflite file; integer (quantized) inputs and outputs are converted with their scale and zero point."""

    def __init__(self, path: Path):
        self.path = path
        self.interpreter = self._interpreter()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.image_size = int(self.input["shape"][1])
        self.batch = None
        self.xnnpack_refused = False  # set when XNNPACK (the fast CPU delegate) refused the graph

    def _interpreter(self, delegates: bool = True):
        resolver = litert.OpResolverType
        return litert.Interpreter(model_path=str(self.path), num_threads=os.cpu_count(),
                                  experimental_op_resolver_type=resolver.AUTO if delegates
                                  else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)

    def probabilities(self, batch):
        if self.batch != len(batch):  # the file is converted for batch 1; any batch size works after a resize
            shape = [len(batch), *self.input["shape"][1:]]
            self.interpreter.resize_tensor_input(self.input["index"], shape)
            try:
                self.interpreter.allocate_tensors()
            except RuntimeError as err:
                # XNNPACK (the fast CPU delegate) refuses some quantized graphs, e.g. int8 scales
                # far below 1e-6 from a randomly initialised backbone; TFLite's own kernels run them.
                logging.getLogger("pipeline.lib.inference").warning(
                    "%s: %s; running on TFLite's reference kernels instead", self.path.name, err)
                self.xnnpack_refused = True
                self.interpreter = self._interpreter(delegates=False)
                self.interpreter.resize_tensor_input(self.input["index"], shape)
                self.interpreter.allocate_tensors()
            self.batch = len(batch)
        x = batch.astype(np.float32)
        dtype = self.input["dtype"]
        if np.issubdtype(dtype, np.integer):
            scale, zero = self.input["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        self.interpreter.set_tensor(self.input["index"], x.astype(dtype))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"]).astype(np.float32)
        if np.issubdtype(self.output["dtype"], np.integer):
            scale, zero = self.output["quantization"]
            out = (out - zero) * scale
        return out


class OnnxClassifier(Classifier):
    """An ``.onnx`` file on onnxruntime's CPU provider."""

    def __init__(self, path: Path):
        import onnxruntime  # only where ONNX files are scored

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.image_size = int(self.input.shape[1])

    def probabilities(self, batch):
        return self.session.run(None, {self.input.name: batch.astype(np.float32)})[0].astype(np.float32)


class MediaPipeClassifier(Classifier):
    """A ``.tflite`` file with metadata, through MediaPipe Tasks' ``ImageClassifier``: what an
    Android, iOS or web app using MediaPipe gets. Images of the model's size are not resized.
    MediaPipe runs on XNNPACK and aborts the process (no exception) on a graph XNNPACK refuses:
    check ``TFLiteClassifier.xnnpack_refused`` first."""

    def __init__(self, path: Path, labels: list[str]):
        import mediapipe  # only where the export is checked

        from mediapipe.tasks.python import BaseOptions, vision

        self.mp, self.labels, self.path = mediapipe, labels, path
        self.image_size = TFLiteClassifier(path).image_size
        options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=-1)
        self.classifier = vision.ImageClassifier.create_from_options(options)

    def probabilities(self, batch):
        out = np.zeros((len(batch), len(self.labels)), np.float32)
        for row, image in zip(out, batch):
            result = self.classifier.classify(self.mp.Image(image_format=self.mp.ImageFormat.SRGB,
                                                            data=np.ascontiguousarray(image, dtype=np.uint8)))
            for category in result.classifications[0].categories:
                if category.category_name != self.labels[category.index]:
                    raise artifacts.StageError(f"{self.path.name}: MediaPipe read label {category.category_name!r} for output "
                                     f"{category.index}, not {self.labels[category.index]!r}")
                row[category.index] = category.score
        return out

    def close(self) -> None:
        self.classifier.close()


FORMATS = "a .keras, .tflite or .onnx file or a SavedModel folder"


def load(path: Path) -> Classifier:
    """A ``.keras``, ``.tflite`` or ``.onnx`` file, or a SavedModel folder. A file of one of these
    formats that does not load is ``damaged``: one line naming it, whatever its runtime raised."""
    path = Path(path)
    if path.is_dir() and (path / "saved_model.pb").exists():
        kind = SavedModelClassifier
    elif path.suffix == ".tflite" and path.is_file():
        kind = TFLiteClassifier
    elif path.suffix == ".onnx" and path.is_file():
        kind = OnnxClassifier
    elif path.suffix == ".keras" and path.is_file():
        return KerasClassifier(models.load(path))  # models.load names a damaged file itself
    else:
        raise artifacts.StageError(f"{path}: not {FORMATS}")
    try:
        return kind(path)
    except Exception as err:  # TensorFlow, LiteRT and onnxruntime each raise their own types
        message = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise artifacts.damaged(path, f"{kind.__name__[:-len('Classifier')]} cannot load it: "
                                      f"{type(err).__name__}: {message}") from err


def read_labels(path: Path) -> list[str]:
    """Class names from ``labels.txt`` (one per line) or a JSON list (``labels.json``)."""
    return artifacts.read_labels(path)


def write_labels(path: Path, labels: Iterable[str]) -> None:
    Path(path).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")


def load_images(paths: Iterable[Path], size: int) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """Decode ``paths`` as in training: ``(pixels of the readable ones, their indices, {index: error})``."""
    def decode(path):
        try:
            return images.load_image(path, size)
        except Exception as err:  # Pillow raises many types for bad files
            return f"{type(err).__name__}: {err}"

    pixels, ok, errors = [], [], {}
    for i, result in enumerate(images.parallel_map(decode, list(paths))):
        if isinstance(result, str):
            errors[i] = result
        else:
            pixels.append(result)
            ok.append(i)
    array = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
    return array, ok, errors


def load_split(source: Path, split: Path, size: int, part: str = "test") -> tuple[list[dict], np.ndarray, np.ndarray, list[str]]:
    """(rows of split ``part``: train, val or test; their pixels decoded as predict does, integer
    labels, class names). The images are read from the source folder ``source``, each checked
    against the hash ingest recorded."""
    labels = artifacts.read_labels(split / "labels.json")
    rows = images.read_csv(split / f"{part}.csv", images.SPLIT_FIELDS)

    decode = functools.partial(images.decode_recorded, source, size)
    batches = [image for batch in images.process_batches(decode, rows, 256) for image in batch]
    pixels = np.stack(batches) if batches else np.zeros((0, size, size, 3), np.uint8)
    index = {label: i for i, label in enumerate(labels)}
    return rows, pixels, np.array([index[r["label"]] for r in rows], dtype=int), labels


def timing(classifier: Classifier, pixels: np.ndarray, batch_size: int, runs: int, warmup: int = 3) -> dict[str, float]:
    """Latency at batch 1 (median and 95th percentile of ``runs`` calls, in ms) and throughput
    at ``batch_size`` (images per second over ``runs`` // 4 batches, at least 2), each after
    ``warmup`` untimed calls, on this machine: the runtime as an application calls it."""
    def timed(batch, n):
        for _ in range(warmup):
            classifier.probabilities(batch)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            classifier.probabilities(batch)
            times.append(time.perf_counter() - start)
        return np.array(times)

    one = timed(pixels[:1], runs)
    batch = np.resize(pixels, (batch_size, *pixels.shape[1:]))  # the test images, repeated if fewer
    many = timed(batch, max(runs // 4, 2))
    return {"latency_ms_median": round(float(np.median(one)) * 1e3, 3),
            "latency_ms_p95": round(float(np.percentile(one, 95)) * 1e3, 3),
            "images_per_s": round(batch_size / float(np.median(many)), 1)}
