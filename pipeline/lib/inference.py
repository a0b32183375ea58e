"""Saved classifiers (Keras, SavedModel, TFLite, ONNX) as one thing: uint8 images -> class probabilities
and, from exports with it, ``known`` (below the unknown threshold: none of the classes).

Evaluation, calibration and the export parity check (``load_split``: each image's
bytes checked against the hash ingest recorded) and ``pipeline.predict``
(``load_images``) decode with the same function and run a ``Classifier``, so the
metrics are measured on exactly what a user of the exported model gets: the
training decode and resize (``images.load_image``), then the model's own
preprocessing inside it. TFLite
files run on LiteRT (``ai_edge_litert``), the runtime that replaces
``tf.lite.Interpreter``, or through MediaPipe Tasks' image classifier.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf
from ai_edge_litert import interpreter as litert

from pipeline.lib import artifacts, errors, formats, images, keras_files, multilabel, pools, schemas

LABELS_FILE = "labels.txt"  # one class name per line, in output order; written beside exported models
# {"temperature", "temperature_in_model", "unknown_score", "unknown_threshold"}: written by calibrate
# (models/, temperature not yet in the model) and export (beside the files, temperature built in)
CALIBRATION_FILE = "calibration.json"


class Classifier:
    """A loaded model: ``image_size`` and ``outputs(uint8 batch) -> ((n, classes) probabilities,
    (n,) known or None)``, all float32; None where the file has no ``known`` output."""

    image_size: int

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs(batch)[0]

    def classify(self, pixels: np.ndarray, batch_size: int = 64,
                 tta: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, known or None) for any number of images, ``batch_size`` at a time; with
        ``tta``, the mean of each image's and its left-right mirror's (test-time augmentation)."""
        def run(x):
            parts = [self.outputs(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
            if not parts:
                return np.zeros((0, 0), np.float32), None
            known = None if parts[0][1] is None else np.concatenate([k for _, k in parts])
            return np.concatenate([p for p, _ in parts]), known
        if not tta:
            return run(pixels)
        (p1, k1), (p2, k2) = run(pixels), run(pixels[:, :, ::-1])
        return (p1 + p2) / 2, None if k1 is None else (k1 + k2) / 2

    def predict(self, pixels: np.ndarray, batch_size: int = 64, tta: bool = False) -> np.ndarray:
        """The probabilities of ``classify``."""
        return self.classify(pixels, batch_size, tta)[0]


def _by_shape(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """(probabilities, known or None) from a file's outputs in any order: known is the one column."""
    arrays = [np.asarray(a, np.float32) for a in arrays]
    if len(arrays) == 1:
        return arrays[0], None
    known = next(i for i, a in enumerate(arrays) if a.shape[-1] == 1)
    return arrays[1 - known], arrays[known].reshape(-1)


class KerasClassifier(Classifier):
    def __init__(self, model):
        self.model = model
        self.image_size = int(model.input_shape[1])

    def outputs(self, batch):
        result = self.model.predict_on_batch(batch.astype(np.float32))
        return _by_shape(result if isinstance(result, (list, tuple)) else [result])


class SavedModelClassifier(Classifier):
    """A SavedModel folder: its pixel signature (``serving_pixels``, or ``serving_default`` in
    exports from before the image-bytes signature) and, if it has one, the image-bytes one."""

    def __init__(self, path: Path):
        signatures = tf.saved_model.load(str(path)).signatures
        self.serve = signatures.get(formats.PIXELS_SIGNATURE) or signatures["serving_default"]
        self.serve_bytes = signatures["serving_default"] if formats.PIXELS_SIGNATURE in signatures else None
        spec = next(iter(self.serve.structured_input_signature[1].values()))
        self.image_size = int(spec.shape[1])

    def outputs(self, batch):
        return _by_shape([v.numpy() for v in self.serve(tf.constant(batch, tf.float32)).values()])

    def classify_files(self, paths: list[Path], batch_size: int = 64) -> tuple[list[str], np.ndarray,
                                                                              np.ndarray | None, np.ndarray]:
        """``classify_bytes`` of image files."""
        return self.classify_bytes([Path(p).read_bytes() for p in paths], batch_size)

    def classify_bytes(self, encoded: list[bytes], batch_size: int = 64) -> tuple[list[str], np.ndarray,
                                                                                 np.ndarray | None, np.ndarray]:
        """(top class names, probabilities, known or None, unknown flags) for encoded images (JPEG,
        PNG, ...), decoded by the SavedModel itself. Exports from before the flag have none: all false."""
        names, parts, known, unknown = [], [], [], []
        for i in range(0, len(encoded), batch_size):
            out = self.serve_bytes(image_bytes=tf.constant(encoded[i:i + batch_size]))
            names += [name.decode() for name in out["classes"].numpy()]
            parts.append(out["probabilities"].numpy().astype(np.float32))
            known.append(out["known"].numpy().astype(np.float32) if "known" in out else None)
            unknown.append(out["unknown"].numpy() if "unknown" in out else np.zeros(len(parts[-1]), bool))
        return (names, np.concatenate(parts), None if known[0] is None else np.concatenate(known),
                np.concatenate(unknown))


class TFLiteClassifier(Classifier):
    """A .tflite file; integer (quantized) inputs and outputs are converted with their scale and zero point."""

    def __init__(self, path: Path):
        self.path = path
        self.interpreter = self._interpreter()
        self.input = self.interpreter.get_input_details()[0]
        self.output_details = self.interpreter.get_output_details()
        self.image_size = int(self.input["shape"][1])
        self.batch = None
        self.xnnpack_refused = False  # set when XNNPACK (the fast CPU delegate) refused the graph

    def _interpreter(self, delegates: bool = True):
        resolver = litert.OpResolverType
        return litert.Interpreter(model_path=str(self.path), num_threads=os.cpu_count(),
                                  experimental_op_resolver_type=resolver.AUTO if delegates
                                  else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)

    def outputs(self, batch):
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
        found = []
        for detail in self.output_details:
            out = self.interpreter.get_tensor(detail["index"]).astype(np.float32)
            if np.issubdtype(detail["dtype"], np.integer):
                scale, zero = detail["quantization"]
                out = (out - zero) * scale
            found.append(out)
        return _by_shape(found)


class OnnxClassifier(Classifier):
    """An ``.onnx`` file on onnxruntime's CPU provider."""

    def __init__(self, path: Path):
        import onnxruntime  # only where ONNX files are scored

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.image_size = int(self.input.shape[1])

    def outputs(self, batch):
        return _by_shape(self.session.run(None, {self.input.name: batch.astype(np.float32)}))


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

    def outputs(self, batch):
        out, known = np.zeros((len(batch), len(self.labels)), np.float32), np.zeros(len(batch), np.float32)
        heads = 1
        for i, (row, image) in enumerate(zip(out, batch)):
            result = self.classifier.classify(self.mp.Image(image_format=self.mp.ImageFormat.SRGB,
                                                            data=np.ascontiguousarray(image, dtype=np.uint8)))
            for category in result.classifications[0].categories:
                if category.category_name != self.labels[category.index]:
                    raise errors.StageError(f"{self.path.name}: MediaPipe read label {category.category_name!r} for output "
                                     f"{category.index}, not {self.labels[category.index]!r}")
                row[category.index] = category.score
            heads = len(result.classifications)
            if heads > 1:  # the second head: known, one category
                known[i] = result.classifications[1].categories[0].score
        return out, known if heads > 1 else None

    def close(self) -> None:
        self.classifier.close()


# What ``load`` reads (the exported formats are exports.FORMATS, a table of its rows)
LOADABLE = "a .keras, .tflite or .onnx file or a SavedModel folder"


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
        return KerasClassifier(keras_files.load(path))  # keras_files.load names a damaged file itself
    else:
        raise errors.StageError(f"{path}: not {LOADABLE}")
    try:
        return kind(path)
    except Exception as err:  # TensorFlow, LiteRT and onnxruntime each raise their own types
        message = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise errors.damaged(path, f"{kind.__name__[:-len('Classifier')]} cannot load it: "
                                      f"{type(err).__name__}: {message}") from err


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
    for i, result in enumerate(pools.parallel_map(decode, list(paths))):
        if isinstance(result, str):
            errors[i] = result
        else:
            pixels.append(result)
            ok.append(i)
    array = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
    return array, ok, errors


def load_ood(folder: Path, size: int) -> tuple[list[Path], np.ndarray]:
    """(files, pixels) of the readable images of an out-of-distribution folder (calibrate and
    export measure "unknown" on it), decoded as predict does; the unreadable ones warned about."""
    log = logging.getLogger("pipeline.lib.inference")
    deep: list = []
    files = images.image_files(folder, deep)
    if deep:
        log.warning("%s: %d folder(s) nested deeper than %d levels not read, e.g. %s", folder, len(deep),
                    artifacts.MAX_DEPTH, str(deep[0])[:200])
    pixels, ok, errors = load_images(files, size)
    for i, error in errors.items():
        log.warning("%s: not a readable image, left out of the out-of-distribution set (%s)", files[i], error)
    if not len(pixels):
        raise errors.StageError(f"{folder}: no readable image: the out-of-distribution set needs images of "
                                   "things that are none of the classes (docs/evaluation.md#the-out-of-distribution-set)")
    return [files[i] for i in ok], pixels


def load_split(source: Path, split: Path, size: int, part: str = "test",
               multi: bool = False) -> tuple[list[dict], np.ndarray, np.ndarray, list[str]]:
    """(rows of split ``part``: train, val or test; their pixels decoded as predict does, integer
    labels (``multi``: one 0/1 per label, ``multilabel.targets``), class names). The images are read
    from the source folder ``source``, each checked against the hash ingest recorded."""
    labels = schemas.read_labels(split / "labels.json")
    rows = schemas.read_csv(split / f"{part}.csv", schemas.SPLIT_FIELDS)

    decode = functools.partial(images.decode_recorded, source, size)
    batches = [image for batch in pools.process_batches(decode, rows, 256) for image in batch]
    pixels = np.stack(batches) if batches else np.zeros((0, size, size, 3), np.uint8)
    if multi:
        return rows, pixels, multilabel.targets(rows, labels), labels
    index = {label: i for i, label in enumerate(labels)}
    return rows, pixels, np.array([index[r["label"]] for r in rows], dtype=int), labels


def latency(classifier: Classifier, pixels: np.ndarray, runs: int, warmup: int = 3) -> dict[str, float]:
    """Latency at batch 1: median and 95th percentile of ``runs`` calls on the first image, in ms,
    after ``warmup`` untimed calls, on this machine: the runtime as an application calls it."""
    for _ in range(warmup):
        classifier.probabilities(pixels[:1])
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        classifier.probabilities(pixels[:1])
        times.append(time.perf_counter() - start)
    return {"latency_ms_median": round(float(np.median(times)) * 1e3, 3),
            "latency_ms_p95": round(float(np.percentile(times, 95)) * 1e3, 3)}


class Stopwatch:
    """``call`` (a bound method of a loaded model), timed on every batch it is given, so that a
    pass that scores images also measures the throughput: no file runs its images twice.
    ``size(*args, **kwargs)`` is the number of images of a call."""

    def __init__(self, call: Callable, size: Callable):
        self.call, self.size, self.calls = call, size, []

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.call(*args, **kwargs)
        self.calls.append((self.size(*args, **kwargs), time.perf_counter() - start))
        return out

    def images_per_s(self) -> float:
        """The median rate of the calls at the largest batch size, the first call (which pays for
        any warm-up) left out where there are others."""
        largest = max(n for n, _ in self.calls)
        full = [call for call in self.calls if call[0] == largest]
        full = full[1:] if len(full) > 1 and full[0] is self.calls[0] else full
        return round(float(np.median([n / max(t, 1e-9) for n, t in full])), 1)
