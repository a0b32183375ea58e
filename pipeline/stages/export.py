"""export: models/model.keras + calibration -> models/export/ (SavedModel, TFLite x3, ONNX) + reports/export.json.

The fine-tuned model as ``models.deployable`` makes it, in every format an application
needs: two outputs, ``probabilities`` (its temperature built in: the output layer's
weights divided by it) and ``known`` (from the energy of the logits; below the unknown
threshold, 0.5, the image is none of the classes), each with ``labels.txt`` (class names
in output order) and ``calibration.json`` (the temperature, the energy's centre and
scale, the threshold) beside it:

- ``model.keras``: the Keras model itself, for Python;
- ``saved_model/``: for TensorFlow Serving and other SavedModel hosts; its default
  signature takes encoded images (JPEG/PNG bytes) and returns class names,
  probabilities, known and the unknown flag (formats.py);
- ``model_float32.tflite``, ``model_float16.tflite`` (half-size weights) and
  ``model_int8.tflite`` (integer ops, uint8 pixels in, calibrated on
  ``export.representative_images`` training images): for phones and edge devices,
  with labels and input normalization embedded as metadata, so MediaPipe Tasks'
  ``ImageClassifier`` loads them as they are (known is its second head);
- ``model.onnx``: for onnxruntime and other ONNX runtimes.

Every format is then scored on the test split, decoded exactly as
``pipeline.predict`` does (the SavedModel's image-bytes signature decodes the files
itself; the TFLite files run on LiteRT and again through MediaPipe): accuracy,
agreement with the Keras model (share of identical top-1 predictions), then on the test
and out-of-distribution (``--ood``) images together the share with Keras' unknown verdict,
the false-positive rate at 95% true-positive rate of its known, and file size
go to the DVC metrics file, with each file's speed through its runtime on the machine
that ran the stage: latency at batch 1 (median and 95th percentile of
``export.timing_runs`` calls) and throughput at ``evaluate.batch_size``.

A task: multi_label model ships a calibrated probability per label (a temperature per
label built in) and ``label_thresholds`` in calibration.json; the SavedModel applies them
(``classes``: each image's label set, joined by ``|``; ``present``: one true/false per
label). Each format is scored on label sets instead of top classes: exact match and
micro-F1 against the truth, agreement as the share of test images given the very same
set as the Keras model, label_agreement as the share of (image, label) decisions the same.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.lib import artifacts, cli, confidence, errors, formats, images, inference, keras_files, models, multilabel, params, runtime, shards, sources
from pipeline.lib.exports import FORMATS, TFLITE_KINDS, file_name

PARAMS = ["export.representative_images", "export.timing_runs", "evaluate.batch_size", "seed", "base.backbone"]
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
    keras_files.save(model, files["keras"])
    formats.saved_model(model, labels, files["saved_model"], calibration["unknown_threshold"],
                        calibration.get("label_thresholds"))
    for kind in TFLITE_KINDS:
        path = files[f"tflite_{kind}"] = folder / file_name(f"tflite_{kind}")
        log.info("converting to %s", path.name)
        formats.tflite(files["saved_model"], path, kind, representative)
        formats.add_metadata(path, folder / inference.LABELS_FILE, description)
    log.info("converting to %s", files["onnx"].name)
    formats.onnx(model, files["onnx"])
    return files


class Images(NamedTuple):
    encoded: list[bytes]  # each file's bytes, read once (the test images checked against their hash)
    pixels: np.ndarray  # the same images decoded as predict decodes them


class EncodedImages:
    """The SavedModel's image-bytes signature as a classifier for ``inference.latency``, of
    ``len(batch)`` of ``encoded`` (the pixels themselves unused), so that it is timed as an
    application calls it: the images decoded by the model."""

    def __init__(self, saved_model: inference.SavedModelClassifier, encoded: list[bytes]):
        self.saved_model, self.encoded = saved_model, encoded

    def probabilities(self, batch):
        return self.saved_model.classify_bytes([self.encoded[i % len(self.encoded)] for i in range(len(batch))],
                                               len(batch))[1]


class Outputs(NamedTuple):
    probabilities: np.ndarray  # the test images'
    known: np.ndarray  # the test images', then the out-of-distribution images'


def outputs(name: str, classifier: inference.Classifier, test, ood, batch_size: int) -> Outputs:
    (probabilities, known), (_, ood_known) = (classifier.classify(pixels, batch_size) for pixels in (test, ood))
    if known is None:
        raise errors.StageError(f"{name}: the exported file has no known output")
    return Outputs(probabilities, np.concatenate([known, ood_known]))


def scored(name: str, classifier: inference.Classifier, test, ood, batch_size: int) -> tuple[Outputs, float]:
    """``outputs`` and the images per second it ran at (``inference.Stopwatch``)."""
    classifier.outputs = stopwatch = inference.Stopwatch(classifier.outputs, len)
    try:
        return outputs(name, classifier, test, ood, batch_size), stopwatch.images_per_s()
    finally:
        del classifier.outputs  # the class's own again


def answers(probabilities: np.ndarray, cut: np.ndarray | None) -> np.ndarray:
    """Each image's answer: its top class, or (a threshold per label in ``cut``) its label set as 0/1 per label."""
    return probabilities.argmax(axis=1) if cut is None else probabilities >= cut


def score(files: dict[str, Path], test: Images, ood: Images, labels: list[str], threshold: float, batch_size: int,
          runs: int, cut: np.ndarray | None = None) -> tuple[dict[str, Outputs], dict[str, dict], dict[str, str]]:
    """Each file's outputs on the test and out-of-distribution images through the runtime an app
    would use (metrics row -> Outputs), its speed on the test images (metrics row ->
    inference.latency and the scoring pass's throughput), and the rows left out with the reason."""
    found, speed, refused, not_checked = {}, {}, {}, {}
    for name, path in files.items():
        classifier = inference.load(path)
        found[name], images_per_s = scored(name, classifier, test.pixels, ood.pixels, batch_size)
        refused[name] = getattr(classifier, "xnnpack_refused", False)
        speed[name] = {**inference.latency(classifier, test.pixels, runs), "images_per_s": images_per_s}
    saved_model = inference.SavedModelClassifier(files["saved_model"])
    saved_model.serve_bytes = stopwatch = inference.Stopwatch(saved_model.serve_bytes,
                                                              lambda image_bytes: len(image_bytes))
    (names, probabilities, known, unknown), (_, _, ood_known, ood_unknown) = (
        saved_model.classify_bytes(part.encoded, batch_size) for part in (test, ood))
    saved_model.serve_bytes = stopwatch.call
    found["saved_model_bytes"] = Outputs(probabilities, np.concatenate([known, ood_known]))
    expected = ([labels[i] for i in probabilities.argmax(axis=1)] if cut is None else
                [multilabel.encode(np.asarray(labels)[row]) for row in answers(probabilities, cut)])
    if names != expected:
        raise errors.StageError("the SavedModel's classes output does not match its probabilities")
    if not np.array_equal(np.concatenate([unknown, ood_unknown]), found["saved_model_bytes"].known < threshold):
        raise errors.StageError("the SavedModel's unknown output does not match its known output and threshold")
    speed["saved_model_bytes"] = {**inference.latency(EncodedImages(saved_model, test.encoded), test.pixels, runs),
                                  "images_per_s": stopwatch.images_per_s()}
    for kind in TFLITE_KINDS:
        row, path = f"mediapipe_{kind}", files[f"tflite_{kind}"]
        if refused[f"tflite_{kind}"]:  # MediaPipe would abort the whole process on it
            not_checked[row] = (f"XNNPACK refuses {path.name}'s graph, so MediaPipe cannot run it "
                                "(LiteRT fell back to its own kernels)")
            log.warning("%s not checked: %s", row, not_checked[row])
            continue
        mediapipe = inference.MediaPipeClassifier(path, labels)
        found[row], images_per_s = scored(row, mediapipe, test.pixels, ood.pixels, batch_size)
        speed[row] = {**inference.latency(mediapipe, test.pixels, runs), "images_per_s": images_per_s}
        mediapipe.close()
    return found, speed, not_checked


def main() -> None:
    args = cli.start(__doc__, "model", "calibration", "augmented", "source", "split", "ood", "out", "metrics",
                           writes=("out", "metrics"))
    p = params.load(PARAMS)
    source = sources.locate(str(args.source))
    runtime.log_devices()
    runtime.set_seed(p.seed)
    calibration = confidence.read_calibration(args.calibration)
    if calibration["unknown_score"] != "known":
        raise errors.StageError(f"{args.calibration} is from before the known score: run the calibrate stage "
                                   "again (dvc repro calibrate)")
    model = models.deployable(keras_files.load(args.model), calibration)
    multi = calibration.get("task") == "multi_label"
    size = int(model.input_shape[1])
    rows, pixels, y, labels = inference.load_split(source, args.split, size, multi=multi)
    cut = np.asarray(calibration["label_thresholds"]) if multi else None
    if multi and len(cut) != len(labels):
        raise errors.damaged(args.calibration, f"{len(cut)} label thresholds for {len(labels)} labels")
    # Every read of a source image checks its hash, the SavedModel's bytes too: read once, here
    test = Images([images.read_recorded(source, r).getvalue() for r in rows], pixels)
    ood_files, ood_pixels = inference.load_ood(args.ood, size)
    ood = Images([f.read_bytes() for f in ood_files], ood_pixels)
    threshold = calibration["unknown_threshold"]
    if multi:
        description = (f"{p.base.backbone} fine-tuned to tag {len(labels)} labels, any number per image; RGB pixels "
                       f"in [0, 255] at {size} px; a calibrated probability per label (a temperature per label); a "
                       "label is present where its probability reaches its threshold (calibration.json, "
                       f"label_thresholds: {', '.join(f'{label} {t:.3g}' for label, t in zip(labels, cut))}"[:900]
                       + f"); a second output, known: below {threshold:.4g} the image is unlike the training data "
                       "(MediaPipe: the second head's one score)")
    else:
        description = (f"{p.base.backbone} fine-tuned to classify {len(labels)} classes; RGB pixels in [0, 255] "
                       f"at {size} px; calibrated probabilities (temperature {calibration['temperature']:.4g}); "
                       f"a second output, known: below {threshold:.4g} the image is none of the classes (MediaPipe: "
                       "the second head's one score)")

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
        found, speed, not_checked = score(files, test, ood, labels, threshold, p.evaluate.batch_size,
                                          p.export.timing_runs, cut)
        files.update(saved_model_bytes=files["saved_model"],
                     **{f"mediapipe_{kind}": files[f"tflite_{kind}"] for kind in TFLITE_KINDS})
        sizes = {name: size_mb(path) for name, path in files.items()}

    # The reference is the model this stage loaded from --model and calibrated, in memory; the keras
    # row is the exported copy, reloaded from its own file: a file that does not load back the same fails.
    reference = outputs("the model", inference.KerasClassifier(model), test.pixels, ood.pixels, p.evaluate.batch_size)
    metrics = {}
    for name in (name for name in FORMATS if name in found):
        pred, known = answers(found[name].probabilities, cut), found[name].known
        same = pred == answers(reference.probabilities, cut)
        quality = ({"exact_match": float(np.mean((pred == y.astype(bool)).all(axis=1))),
                    "micro_f1": multilabel.micro_f1(y, pred), "label_agreement": float(np.mean(same))}
                   if multi else {"accuracy": float(np.mean(pred == y))})
        metrics[name] = {**quality, "agreement": float(np.mean(same.all(axis=1) if multi else same)),
                         "unknown_agreement": float(np.mean((known < threshold) == (reference.known < threshold))),
                         "ood_called_unknown": float(np.mean(known[len(y):] < threshold)),
                         "ood_fpr_at_95_tpr": confidence.separation(known[:len(y)], known[len(y):])["fpr_at_95_tpr"],
                         "size_mb": sizes[name], **speed[name]}
        m = metrics[name]
        log.info("%-17s %8.2f MB  test %s %.4f  agreement with Keras %.4f, on unknown %.4f  "
                 "%7.2f ms at batch 1 (p95 %.2f)  %7.1f images/s at batch %d", name, m["size_mb"],
                 *next(iter(quality.items())),
                 m["agreement"], m["unknown_agreement"], speed[name]["latency_ms_median"],
                 speed[name]["latency_ms_p95"], speed[name]["images_per_s"], p.evaluate.batch_size)
        for what, value in (("the test images' label set" if multi else "the test images' top class", m["agreement"]),
                            ("which test and out-of-distribution images are unknown", m["unknown_agreement"])):
            if value < FORMATS[name].min_agreement:
                hint = (" For int8: ship model_float16.tflite instead, or try another calibration sample "
                        f"(export.representative_images, now {p.export.representative_images}; on the clothing "
                        "photos, 50 to 1,000 images moved agreement no more than the sample's seed did: "
                        "docs/export.md#when-int8-disagrees)" if "int8" in name else "")
                log.warning("%s agrees with the Keras model on %s for only %.1f%% of them: check it before "
                            "shipping it.%s", name, what, 100 * value, hint)
    artifacts.write_json(args.metrics, {**metrics, **({"task": "multi_label"} if multi else {}),
                                        "test_images": len(y), "ood_images": len(ood.encoded),
                                        "timing_batch_size": p.evaluate.batch_size, "not_checked": not_checked})


if __name__ == "__main__":
    cli.run(main)
