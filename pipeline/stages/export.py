"""export: models/model.keras + calibration -> models/export/ (SavedModel, TFLite x3, ONNX) + reports/export.json.

The fine-tuned model, its temperature built in (calibrate: its output layer's weights
divided by it, so every file serves calibrated probabilities), in every format an
application needs, each with ``labels.txt`` (class names in output order) and
``calibration.json`` (the temperature, and the unknown threshold on the top
probability) beside it:

- ``model.keras``: the Keras model itself, for Python;
- ``saved_model/``: for TensorFlow Serving and other SavedModel hosts; its default
  signature takes encoded images (JPEG/PNG bytes) and returns class names,
  probabilities and the unknown flag (formats.py);
- ``model_float32.tflite``, ``model_float16.tflite`` (half-size weights) and
  ``model_int8.tflite`` (integer ops, uint8 pixels in, calibrated on
  ``export.representative_images`` training images): for phones and edge devices,
  with labels and input normalization embedded as metadata, so MediaPipe Tasks'
  ``ImageClassifier`` loads them as they are;
- ``model.onnx``: for onnxruntime and other ONNX runtimes.

Every format is then scored on the test split, decoded exactly as
``pipeline.predict`` does (the SavedModel's image-bytes signature decodes the files
itself; the TFLite files run on LiteRT and again through MediaPipe): accuracy,
agreement with the Keras model (share of identical top-1 predictions) and file size
go to the DVC metrics file, with each file's speed through its runtime on the machine
that ran the stage: latency at batch 1 (median and 95th percentile of
``export.timing_runs`` calls) and throughput at ``evaluate.batch_size``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.lib import artifacts, confidence, formats, inference, models, params, shards, sources
from pipeline.lib.exports import FORMATS, TFLITE_KINDS, file_name

PARAMS = ["export.representative_images", "export.timing_runs", "evaluate.batch_size", "seed", "base.backbone",
          "ingest.max_unpacked_mb", "ingest.max_expansion_ratio"]  # sources.locate unpacks an archive source within them
log = logging.getLogger("pipeline.stages.export")


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 3)


def write_formats(model, labels: list[str], calibration: dict, folder: Path, description: str,
                  representative) -> dict[str, Path]:
    """Every format of ``model`` (calibrated) into ``folder``, labels.txt and calibration.json
    beside them: {metrics row: path}."""
    inference.write_labels(folder / inference.LABELS_FILE, labels)
    artifacts.write_json(folder / inference.CALIBRATION_FILE, {**calibration, "temperature_in_model": True})
    files = {name: folder / file_name(name) for name in ("keras", "saved_model", "onnx")}
    models.save(model, files["keras"])
    formats.saved_model(model, labels, files["saved_model"], calibration["unknown_threshold"])
    for kind in TFLITE_KINDS:
        path = files[f"tflite_{kind}"] = folder / file_name(f"tflite_{kind}")
        log.info("converting to %s", path.name)
        formats.tflite(files["saved_model"], path, kind, representative)
        formats.add_metadata(path, folder / inference.LABELS_FILE, description)
    log.info("converting to %s", files["onnx"].name)
    formats.onnx(model, files["onnx"])
    return files


class EncodedFiles(inference.Classifier):
    """The SavedModel's image-bytes signature as a Classifier of ``len(batch)`` of ``files``
    (the pixels themselves unused), so that it is timed as an application calls it: the
    files read and decoded by the model."""

    def __init__(self, saved_model: inference.SavedModelClassifier, files: list[Path]):
        self.saved_model, self.files = saved_model, files

    def probabilities(self, batch):
        paths = [self.files[i % len(self.files)] for i in range(len(batch))]
        return self.saved_model.classify_files(paths, len(paths))[1]


def score(files: dict[str, Path], pixels, test_files: list[Path], labels: list[str], threshold: float,
          batch_size: int, runs: int) -> tuple[dict[str, np.ndarray], dict[str, dict], dict[str, str]]:
    """Each file's probabilities on the test images through the runtime an app would use
    (metrics row -> array), its speed (metrics row -> inference.timing), and the rows left out
    with the reason."""
    predictions, speed, refused, not_checked = {}, {}, {}, {}
    for name, path in files.items():
        classifier = inference.load(path)
        predictions[name] = classifier.predict(pixels, batch_size)
        refused[name] = getattr(classifier, "xnnpack_refused", False)
        speed[name] = inference.timing(classifier, pixels, batch_size, runs)
    saved_model = inference.SavedModelClassifier(files["saved_model"])
    names, predictions["saved_model_bytes"], unknown = saved_model.classify_files(test_files, batch_size)
    if names != [labels[i] for i in predictions["saved_model_bytes"].argmax(axis=1)]:
        raise artifacts.StageError("the SavedModel's classes output does not match its probabilities")
    if not np.array_equal(unknown, predictions["saved_model_bytes"].max(axis=1) < threshold):
        raise artifacts.StageError("the SavedModel's unknown output does not match its probabilities and threshold")
    speed["saved_model_bytes"] = inference.timing(EncodedFiles(saved_model, test_files), pixels, batch_size, runs)
    for kind in TFLITE_KINDS:
        row, path = f"mediapipe_{kind}", files[f"tflite_{kind}"]
        if refused[f"tflite_{kind}"]:  # MediaPipe would abort the whole process on it
            not_checked[row] = (f"XNNPACK refuses {path.name}'s graph, so MediaPipe cannot run it "
                                "(LiteRT fell back to its own kernels)")
            log.warning("%s not checked: %s", row, not_checked[row])
            continue
        mediapipe = inference.MediaPipeClassifier(path, labels)
        predictions[row] = mediapipe.predict(pixels)
        speed[row] = inference.timing(mediapipe, pixels, batch_size, runs)
        mediapipe.close()
    return predictions, speed, not_checked


def main() -> None:
    args = artifacts.start(__doc__, "model", "calibration", "augmented", "source", "split", "out", "metrics",
                           writes=("out", "metrics"))
    p = params.load(PARAMS)
    models.log_devices()
    source = sources.locate(str(args.source), p.ingest)
    models.set_seed(p.seed)
    calibration = confidence.read_calibration(args.calibration)
    model = models.apply_temperature(models.load(args.model), calibration["temperature"])
    rows, pixels, y, labels = inference.load_split(source, args.split, int(model.input_shape[1]))
    threshold = calibration["unknown_threshold"]
    description = (f"{p.base.backbone} fine-tuned to classify {len(labels)} classes; RGB pixels in [0, 255] "
                   f"at {model.input_shape[1]} px; calibrated probabilities (temperature "
                   f"{calibration['temperature']:.4g}): treat a top probability below {threshold:.4g} as unknown "
                   "(MediaPipe: score_threshold)")

    def representative():
        # The first images of a seeded shuffle of the training shards: the same sample every run, but
        # not stratified by class (with many shards it comes from the few read first): a rare class
        # may be missing from it.
        with shards.reading(args.augmented):
            for image, _ in shards.dataset(args.augmented, "train", 1, shuffle_seed=p.seed).take(
                    p.export.representative_images):
                yield [image.numpy()]

    with artifacts.atomic_dir(args.out) as tmp:
        files = write_formats(model, labels, calibration, tmp, description, representative)
        predictions, speed, not_checked = score(files, pixels, [source / r["path"] for r in rows], labels,
                                                threshold, p.evaluate.batch_size, p.export.timing_runs)
        files.update(saved_model_bytes=files["saved_model"],
                     **{f"mediapipe_{kind}": files[f"tflite_{kind}"] for kind in TFLITE_KINDS})
        sizes = {name: size_mb(path) for name, path in files.items()}

    # The reference is the model this stage loaded from --model and calibrated, in memory; the keras
    # row is the exported copy, reloaded from its own file: a file that does not load back the same fails.
    reference = inference.KerasClassifier(model).predict(pixels, p.evaluate.batch_size).argmax(axis=1)
    metrics = {}
    for name in (name for name in FORMATS if name in predictions):
        pred = predictions[name].argmax(axis=1)
        metrics[name] = {"accuracy": float(np.mean(pred == y)), "agreement": float(np.mean(pred == reference)),
                         "size_mb": sizes[name], **speed[name]}
        log.info("%-17s %8.2f MB  test accuracy %.4f  agreement with Keras %.4f  %7.2f ms at batch 1 (p95 %.2f)  "
                 "%7.1f images/s at batch %d", name, metrics[name]["size_mb"], metrics[name]["accuracy"],
                 metrics[name]["agreement"], speed[name]["latency_ms_median"], speed[name]["latency_ms_p95"],
                 speed[name]["images_per_s"], p.evaluate.batch_size)
        if metrics[name]["agreement"] < FORMATS[name].min_agreement:
            hint = (" For int8: ship model_float16.tflite instead, or try another calibration sample "
                    f"(export.representative_images, now {p.export.representative_images}; on the clothing "
                    "photos, 50 to 1,000 images moved agreement no more than the sample's seed did: "
                    "docs/export.md#when-int8-disagrees)" if "int8" in name else "")
            log.warning("%s agrees with the Keras model on only %.1f%% of the test images: check it "
                        "before shipping it.%s", name, 100 * metrics[name]["agreement"], hint)
    artifacts.write_json(args.metrics, {**metrics, "test_images": len(rows), "timing_batch_size": p.evaluate.batch_size,
                                        "not_checked": not_checked})


if __name__ == "__main__":
    artifacts.run(main)
