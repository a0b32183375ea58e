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

from pipeline.lib import artifacts, formats, inference, models, params, shards, sources
from pipeline.lib.exports import FORMATS, TFLITE_KINDS, file_name

PARAMS = ["export.representative_images", "evaluate.batch_size", "seed", "base.backbone",
          "ingest.max_unpacked_mb", "ingest.max_expansion_ratio"]  # sources.locate unpacks an archive source within them
log = logging.getLogger("pipeline.stages.export")


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 3)


def write_formats(model_file: Path, model, labels: list[str], folder: Path, description: str,
                  representative) -> dict[str, Path]:
    """Every format of ``model`` (loaded from ``model_file``) into ``folder``, labels.txt beside
    them: {metrics row: path}."""
    inference.write_labels(folder / inference.LABELS_FILE, labels)
    files = {name: folder / file_name(name) for name in ("keras", "saved_model", "onnx")}
    shutil.copyfile(model_file, files["keras"])
    formats.saved_model(model, labels, files["saved_model"])
    for kind in TFLITE_KINDS:
        path = files[f"tflite_{kind}"] = folder / file_name(f"tflite_{kind}")
        log.info("converting to %s", path.name)
        formats.tflite(files["saved_model"], path, kind, representative)
        formats.add_metadata(path, folder / inference.LABELS_FILE, description)
    log.info("converting to %s", files["onnx"].name)
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
    args = artifacts.start(__doc__, "model", "augmented", "source", "split", "out", "metrics")
    p = params.load(PARAMS)
    models.log_devices()
    source = sources.locate(str(args.source), p.ingest)
    models.set_seed(p.seed)
    model = models.load(args.model)
    rows, pixels, y, labels = inference.load_test_split(source, args.split, int(model.input_shape[1]))
    description = (f"{p.base.backbone} fine-tuned to classify {len(labels)} classes; RGB pixels in [0, 255] "
                   f"at {model.input_shape[1]} px")

    def representative():
        # The first images of a seeded shuffle of the training shards: the same sample every run, but
        # not stratified by class (with many shards it comes from the few read first): a rare class
        # may be missing from it.
        for image, _ in shards.dataset(args.augmented, "train", 1, shuffle_seed=p.seed).take(
                p.export.representative_images):
            yield [image.numpy()]

    with artifacts.atomic_dir(args.out) as tmp:
        files = write_formats(args.model, model, labels, tmp, description, representative)
        predictions, not_checked = score(files, pixels, [source / r["path"] for r in rows], labels,
                                         p.evaluate.batch_size)
        files.update(saved_model_bytes=files["saved_model"],
                     **{f"mediapipe_{kind}": files[f"tflite_{kind}"] for kind in TFLITE_KINDS})
        sizes = {name: size_mb(path) for name, path in files.items()}

    # The reference is the model this stage loaded from --model, in memory; the keras row is the
    # exported copy, reloaded from its own file: a file that does not load back the same fails.
    reference = inference.KerasClassifier(model).predict(pixels, p.evaluate.batch_size).argmax(axis=1)
    metrics = {}
    for name in (name for name in FORMATS if name in predictions):
        pred = predictions[name].argmax(axis=1)
        metrics[name] = {"accuracy": float(np.mean(pred == y)), "agreement": float(np.mean(pred == reference)),
                         "size_mb": sizes[name]}
        log.info("%-17s %8.2f MB  test accuracy %.4f  agreement with Keras %.4f", name,
                 metrics[name]["size_mb"], metrics[name]["accuracy"], metrics[name]["agreement"])
        if metrics[name]["agreement"] < FORMATS[name].min_agreement:
            log.warning("%s agrees with the Keras model on only %.1f%% of the test images: check it "
                        "before shipping it", name, 100 * metrics[name]["agreement"])
    artifacts.write_json(args.metrics, {**metrics, "test_images": len(rows), "not_checked": not_checked})


if __name__ == "__main__":
    artifacts.run(main)
