"""export: models/model.keras -> models/export/ (SavedModel, TFLite x3, ONNX, labels) + reports/export.json.

The fine-tuned model in every format an application needs, each with
``labels.txt`` (class names in output order) beside it:

- ``model.keras``: the Keras model itself, for Python;
- ``saved_model/``: for TensorFlow Serving and other SavedModel hosts; its default
  signature takes encoded images (JPEG/PNG bytes) and returns class names and
  probabilities (formats.py);
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
go to the DVC metrics file.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from pipeline.lib import artifacts, formats, inference, models, params, shards

PARAMS = ["export.representative_images", "evaluate.batch_size", "seed", "base.backbone"]
# Below these shares of identical top-1 answers, a file is not the model it claims to be (float32
# formats are the same network; the image-bytes signature decodes within one grey level of Pillow;
# half precision and int8 round). A warning, not a failure: the numbers are in the metrics, for a
# person or a CI check to judge.
MIN_AGREEMENT = {"keras": 1.0, "saved_model": 0.99, "saved_model_bytes": 0.98, "onnx": 0.99,
                 "tflite_float32": 0.99, "tflite_float16": 0.95, "tflite_int8": 0.9,
                 "mediapipe_float32": 0.99, "mediapipe_float16": 0.95, "mediapipe_int8": 0.9}
TFLITE_KINDS = ("float32", "float16", "int8")
log = logging.getLogger("pipeline.stages.export")


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 3)


def write_formats(model_file: Path, model, labels: list[str], folder: Path, description: str,
                  representative) -> dict[str, Path]:
    """Every format of ``model`` (loaded from ``model_file``) into ``folder``, labels.txt beside
    them: {metrics row: path}."""
    inference.write_labels(folder / inference.LABELS_FILE, labels)
    files = {"keras": folder / "model.keras", "saved_model": folder / "saved_model"}
    shutil.copyfile(model_file, files["keras"])
    formats.saved_model(model, labels, files["saved_model"])
    for kind in TFLITE_KINDS:
        path = files[f"tflite_{kind}"] = folder / f"model_{kind}.tflite"
        log.info("converting to %s", path.name)
        formats.tflite(files["saved_model"], path, kind, representative)
        formats.add_metadata(path, folder / inference.LABELS_FILE, description)
    log.info("converting to model.onnx")
    files["onnx"] = folder / "model.onnx"
    formats.onnx(model, files["onnx"])
    return files


def score(files: dict[str, Path], pixels, test_files: list[Path], labels: list[str],
          batch_size: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Each file's probabilities on the test images through the runtime an app would use
    (metrics row -> array), and the rows left out with the reason."""
    predictions, refused, not_checked = {}, {}, {}
    for name, path in files.items():
        classifier = inference.load(path)
        predictions[name] = classifier.predict(pixels, batch_size)
        refused[name] = getattr(classifier, "xnnpack_refused", False)
    names, predictions["saved_model_bytes"] = inference.SavedModelClassifier(
        files["saved_model"]).classify_files(test_files, batch_size)
    if names != [labels[i] for i in predictions["saved_model_bytes"].argmax(axis=1)]:
        raise artifacts.StageError("the SavedModel's classes output does not match its probabilities")
    for kind in TFLITE_KINDS:
        row, path = f"mediapipe_{kind}", files[f"tflite_{kind}"]
        if refused[f"tflite_{kind}"]:  # MediaPipe would abort the whole process on it
            not_checked[row] = (f"XNNPACK refuses {path.name}'s graph, so MediaPipe cannot run it "
                                "(LiteRT fell back to its own kernels)")
            log.warning("%s not checked: %s", row, not_checked[row])
            continue
        mediapipe = inference.MediaPipeClassifier(path, labels)
        predictions[row] = mediapipe.predict(pixels)
        mediapipe.close()
    return predictions, not_checked


def main() -> None:
    args = artifacts.start(__doc__, "model", "augmented", "raw", "split", "out", "metrics")
    p = params.load(PARAMS)
    models.set_seed(p.seed)
    model = models.load(args.model)
    rows, pixels, y, labels = inference.load_test_split(args.raw, args.split, int(model.input_shape[1]))
    description = (f"{p.base.backbone} fine-tuned to classify {len(labels)} classes; RGB pixels in [0, 255] "
                   f"at {model.input_shape[1]} px")

    def representative():
        # Shuffled with the seed, so the calibration sample spans every class and is the same each run.
        for image, _ in shards.dataset(args.augmented, "train", 1, shuffle_seed=p.seed).take(
                p.export.representative_images):
            yield [image.numpy()]

    with artifacts.atomic_dir(args.out) as tmp:
        files = write_formats(args.model, model, labels, tmp, description, representative)
        predictions, not_checked = score(files, pixels, [args.raw / r["path"] for r in rows], labels,
                                         p.evaluate.batch_size)
        files.update(saved_model_bytes=files["saved_model"],
                     **{f"mediapipe_{kind}": files[f"tflite_{kind}"] for kind in TFLITE_KINDS})
        sizes = {name: size_mb(path) for name, path in files.items()}

    reference = predictions["keras"].argmax(axis=1)
    metrics = {}
    for name in (name for name in MIN_AGREEMENT if name in predictions):
        pred = predictions[name].argmax(axis=1)
        metrics[name] = {"accuracy": float(np.mean(pred == y)), "agreement": float(np.mean(pred == reference)),
                         "size_mb": sizes[name]}
        log.info("%-17s %8.2f MB  test accuracy %.4f  agreement with Keras %.4f", name,
                 metrics[name]["size_mb"], metrics[name]["accuracy"], metrics[name]["agreement"])
        if metrics[name]["agreement"] < MIN_AGREEMENT[name]:
            log.warning("%s agrees with the Keras model on only %.1f%% of the test images: check it "
                        "before shipping it", name, 100 * metrics[name]["agreement"])
    artifacts.write_json(args.metrics, {**metrics, "test_images": len(rows), "not_checked": not_checked})


if __name__ == "__main__":
    artifacts.run(main)
