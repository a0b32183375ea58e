"""calibrate: models/model.keras + validation/test images + data/ood -> models/calibration.json + reports.

What the fine-tuned model knows it does not know (docs/evaluation.md):

- **Temperature.** One scalar that divides the logits, fitted on the validation
  split to minimise the negative log-likelihood (confidence.py). The export stage
  builds it into every exported file. ECE (15 bins), NLL and Brier score on the
  test split, before and after, go to the metrics, and the reliability diagram to
  ``calibration.png``. Top-1 accuracy cannot change: the temperature keeps the
  order of the classes.
- **Unknown.** An image whose top calibrated probability is below a threshold is
  "unknown"; the threshold keeps ``calibrate.unknown_keep`` of the validation images.
  Both scores, that probability and the energy of the logits, are measured on
  the test split against the out-of-distribution folder (``--ood``, images of
  anything but the classes): AUROC and the false-positive rate at 95% true-positive
  rate. The probability is what is deployed, as it is the one score every runtime
  has (MediaPipe's ``score_threshold`` applies it as it is).
- **Operating points.** Per-class precision-recall curves and accuracy against
  coverage (``coverage.csv``, a DVC plot), to pick a threshold by looking.

``models/calibration.json`` holds the temperature and the threshold, for export
and ``pipeline.predict``.
"""
from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

from pipeline.lib import artifacts, confidence, images, inference, models, params, plots, sources

PARAMS = ["calibrate.unknown_keep", "evaluate.batch_size", "ingest.max_unpacked_mb",
          "ingest.max_expansion_ratio"]  # sources.locate unpacks an archive source within them
log = logging.getLogger("pipeline.stages.calibrate")


def ood_pixels(folder, size: int) -> np.ndarray:
    """The readable images of the out-of-distribution folder, decoded as predict does."""
    deep: list = []
    files = images.image_files(folder, deep)
    if deep:
        log.warning("%s: %d folder(s) nested deeper than %d levels not read, e.g. %s", folder, len(deep),
                    artifacts.MAX_DEPTH, str(deep[0])[:200])
    pixels, _, errors = inference.load_images(files, size)
    for i, error in errors.items():
        log.warning("%s: not a readable image, left out of the out-of-distribution set (%s)", files[i], error)
    if not len(pixels):
        raise artifacts.StageError(f"{folder}: no readable image: the out-of-distribution set needs images of "
                                   "things that are none of the classes (docs/evaluation.md#the-out-of-distribution-set)")
    return pixels


def main() -> None:
    args = artifacts.start(__doc__, "source", "split", "ood", "model", "out", "metrics", "plots",
                           writes=("out", "metrics", "plots"))
    p = params.load(PARAMS)
    models.log_devices()
    source = sources.locate(str(args.source), p.ingest)
    model = inference.KerasClassifier(models.logits(models.load(args.model)))  # its outputs are now logits
    logits, y = {}, {}
    for part in ("val", "test"):
        _, pixels, y[part], labels = inference.load_split(source, args.split, model.image_size, part)
        if not len(y[part]):
            raise artifacts.StageError(f"{args.split / (part + '.csv')} holds no image: calibration needs "
                                       "validation and test images (split.val_fraction, split.test_fraction)")
        logits[part] = model.predict(pixels, p.evaluate.batch_size).astype(np.float64)
    logits["ood"] = model.predict(ood_pixels(args.ood, model.image_size), p.evaluate.batch_size).astype(np.float64)
    log.info("logits of %d validation, %d test and %d out-of-distribution images", len(y["val"]), len(y["test"]),
             len(logits["ood"]))

    t = confidence.fit_temperature(logits["val"], y["val"])
    before, after = (confidence.quality(logits["test"], y["test"], temp) for temp in (1.0, t))
    log.info("temperature %.3f: test ECE %.4f -> %.4f, NLL %.4f -> %.4f, Brier %.4f -> %.4f", t, before["ece"],
             after["ece"], before["nll"], after["nll"], before["brier"], after["brier"])

    score = {part: confidence.scores(logits[part], t) for part in logits}
    threshold = confidence.threshold_for(score["val"]["probability"], p.calibrate.unknown_keep)
    ood = {name: confidence.separation(score["test"][name], score["ood"][name]) for name in ("probability", "energy")}
    kept = score["test"]["probability"] >= threshold
    probabilities = confidence.calibrated(logits["test"], t)
    unknown = {"threshold": threshold,
               "validation_kept": float(np.mean(score["val"]["probability"] >= threshold)),
               "test_kept": float(kept.mean()),
               "test_accuracy_kept": float(np.mean(probabilities[kept].argmax(axis=1) == y["test"][kept]))
               if kept.any() else None,
               "ood_images": len(logits["ood"]),
               "ood_called_unknown": float(np.mean(score["ood"]["probability"] < threshold)),
               "ood_separation": ood}
    for name, m in ood.items():
        log.info("out-of-distribution score %-11s AUROC %.4f  FPR at 95%% TPR %.4f", name, m["auroc"],
                 m["fpr_at_95_tpr"])
    if confidence.looks_like_training(ood["probability"]["auroc"]):
        log.warning("%s looks like the training data: the model is as sure of its images as of the test images, "
                    "or surer (AUROC %.2f, 0.5 is chance), so its unknown figures mean nothing. Fill it with "
                    "images of none of the classes (docs/evaluation.md#the-out-of-distribution-set)",
                    args.ood, ood["probability"]["auroc"])
    log.info("unknown below %.4f: %.1f%% of test images kept, %.1f%% of out-of-distribution images called unknown",
             threshold, 100 * unknown["test_kept"], 100 * unknown["ood_called_unknown"])

    args.plots.mkdir(parents=True, exist_ok=True)
    coverage = confidence.coverage_curve(probabilities, y["test"])
    with artifacts.atomic_file(args.plots / "coverage.csv") as tmp:
        images.write_csv(tmp, coverage, ["threshold", "coverage", "accuracy"])
    with artifacts.atomic_file(args.plots / "calibration.png") as tmp:
        plots.calibration({"uncalibrated": confidence.reliability(confidence.calibrated(logits["test"], 1.0), y["test"]),
                           f"temperature {t:.2f}": confidence.reliability(probabilities, y["test"])},
                          coverage, threshold, tmp, f"Calibration on the test split ({len(y['test'])} images)")
    curves = {}
    for i, label in enumerate(labels):
        if (y["test"] == i).any():
            precision, recall, _ = precision_recall_curve(y["test"] == i, probabilities[:, i])
            curves[label] = (recall, precision, float(average_precision_score(y["test"] == i, probabilities[:, i])))
    with artifacts.atomic_file(args.plots / "precision_recall.png") as tmp:
        plots.precision_recall(curves, tmp, "Per-class precision and recall on the test split (calibrated)")
    with artifacts.atomic_file(args.plots / "unknown.png") as tmp:
        plots.score_histograms({"test images": score["test"]["probability"],
                                "out-of-distribution images": score["ood"]["probability"]}, threshold, tmp,
                               "Top calibrated probability: the classes against everything else")

    artifacts.write_json(args.out, {"temperature": t, "temperature_in_model": False, "unknown_score": "probability",
                                    "unknown_threshold": threshold})
    artifacts.write_json(args.metrics, {"temperature": t, "test_before": before, "test_after": after,
                                        "unknown": unknown, "average_precision": {k: v[2] for k, v in curves.items()}})


if __name__ == "__main__":
    artifacts.run(main)
