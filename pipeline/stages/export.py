"""export: models/model.keras -> models/export/ (SavedModel, TFLite float32/float16/int8, labels) + reports/export.json.

The fine-tuned model in every format an application needs, each with
``labels.txt`` (class names in output order) beside it:

- ``model.keras``: the Keras model itself, for Python;
- ``saved_model/``: Keras 3's ``model.export``, for TensorFlow Serving and TF.js;
- ``model_float32.tflite``, ``model_float16.tflite`` (half-size weights) and
  ``model_int8.tflite`` (integer ops, uint8 pixels in, calibrated on
  ``export.representative_images`` training images): for phones and edge devices.

Every format is then scored on the test split, decoded exactly as
``pipeline.predict`` does: accuracy, agreement with the Keras model (share of
identical top-1 predictions) and file size go to the DVC metrics file.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline.lib import artifacts, inference, models, params, shards

PARAMS = ["export.representative_images", "evaluate.batch_size", "seed"]
# Below these shares of identical top-1 answers, a file is not the model it claims to be (float32
# formats are the same network; half-precision and int8 round). A warning, not a failure: the
# numbers are in the metrics, for a person or a CI check to judge.
MIN_AGREEMENT = {"keras": 1.0, "saved_model": 0.99, "tflite_float32": 0.99, "tflite_float16": 0.95,
                 "tflite_int8": 0.9}
log = logging.getLogger("pipeline.stages.export")


def tflite(saved_model: Path, path: Path, quantize: str, representative=None) -> None:
    """Convert the SavedModel to a TFLite file: ``float32``, ``float16`` weights, or ``int8``.

    Only TFLite's built-in ops are allowed (no Flex/TF ops), so the files run on
    the plain LiteRT runtime of a phone or microcontroller.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
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
        raise artifacts.StageError(f"converting the model to {path.name} failed: {message}. TFLite has no "
                                   "built-in kernel for some operations of some backbones: try another "
                                   "base.backbone") from None


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 3)


def main() -> None:
    args = artifacts.start(__doc__, "model", "augmented", "raw", "split", "out", "metrics")
    p = params.load(PARAMS)
    models.set_seed(p.seed)
    model = models.load(args.model)
    rows, pixels, y, labels = inference.load_test_split(args.raw, args.split, int(model.input_shape[1]))

    def representative():
        # Shuffled with the seed, so the calibration sample spans every class and is the same each run.
        for image, _ in shards.dataset(args.augmented, "train", 1, shuffle_seed=p.seed).take(
                p.export.representative_images):
            yield [image.numpy()]

    with artifacts.atomic_dir(args.out) as tmp:
        files = {"keras": tmp / "model.keras", "saved_model": tmp / "saved_model"}
        shutil.copyfile(args.model, files["keras"])
        model.export(str(files["saved_model"]), format="tf_saved_model", verbose=False)
        for kind in ("float32", "float16", "int8"):
            files[f"tflite_{kind}"] = tmp / f"model_{kind}.tflite"
            log.info("converting to %s", files[f"tflite_{kind}"].name)
            tflite(files["saved_model"], files[f"tflite_{kind}"], kind, representative)
        inference.write_labels(tmp / inference.LABELS_FILE, labels)

        metrics, reference = {}, None
        for name, path in files.items():
            pred = inference.load(path).predict(pixels, p.evaluate.batch_size).argmax(axis=1)
            reference = pred if reference is None else reference  # the Keras model comes first
            metrics[name] = {"accuracy": float(np.mean(pred == y)),
                             "agreement": float(np.mean(pred == reference)), "size_mb": size_mb(path)}
            log.info("%-15s %8.2f MB  test accuracy %.4f  agreement with Keras %.4f", name,
                     metrics[name]["size_mb"], metrics[name]["accuracy"], metrics[name]["agreement"])
            if metrics[name]["agreement"] < MIN_AGREEMENT[name]:
                log.warning("%s agrees with the Keras model on only %.1f%% of the test images: check it "
                            "before shipping it", path.name, 100 * metrics[name]["agreement"])
    artifacts.write_json(args.metrics, {**metrics, "test_images": len(rows)})


if __name__ == "__main__":
    artifacts.run(main)
