"""calibrate: models/model.keras + validation/test images + data/ood -> models/calibration.json + reports.

What the fine-tuned model knows it does not know (docs/evaluation.md):

- **Temperature.** One scalar that divides the logits, fitted on the validation
  split to minimise the negative log-likelihood (confidence.py). The export stage
  builds it into every exported file. ECE (15 bins), NLL and Brier score on the
  test split, before and after, go to the metrics, and the reliability diagram to
  ``calibration.png``. Top-1 accuracy cannot change: the temperature keeps the
  order of the classes.
- **Unknown.** The energy score of the logits (``logsumexp``, Liu et al. 2020) is
  centred on the value that keeps ``calibrate.unknown_keep`` of the validation images
  and scaled by its robust spread over them, then squashed: ``known``, in (0, 1), below
  0.5 "unknown". The export stage builds it into every file as a second output, so
  every runtime applies the same rule. Three scores, the top calibrated probability,
  the maximum logit and the energy, are measured on the test split against the
  out-of-distribution folder (``--ood``, images of anything but the classes): AUROC
  and the false-positive rate at 95% true-positive rate.
- **Operating points.** Per-class precision-recall curves and accuracy against
  coverage (``coverage.csv``, a DVC plot), to pick a threshold by looking.

``models/calibration.json`` holds the temperature, the energy's centre and scale and
the threshold, for export and ``pipeline.predict``.

A task: multi_label model (a sigmoid per label, docs/multilabel.md) gets Platt scaling
per label, ``sigmoid(logit / T + shift)``, each fitted on validation (a temperature alone
cannot undo the shift per-label class weights give a rare label's probabilities), and
ECE, NLL and Brier per label before and after; a threshold per label chosen on the
calibrated validation probabilities as evaluate chooses it (highest F1, or
``evaluate.label_precision``); and "unknown" from the multi-label energy (JointEnergy,
Wang et al. 2021: the sum over labels of ``log(1 + exp(logit))``). "None of the
labels" (no label above its threshold) and "unknown" are different answers: the
metrics count both on the test images and on the out-of-distribution ones.
"""
from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

from pipeline.lib import artifacts, cli, confidence, errors, inference, keras_files, models, multilabel, params, plots_calibration, runtime, schemas, sources

PARAMS = ["calibrate.unknown_keep", "evaluate.batch_size", "evaluate.label_precision"]
log = logging.getLogger("pipeline.stages.calibrate")


def main() -> None:
    args = cli.start(__doc__, "source", "split", "ood", "model", "out", "metrics", "plots",
                           writes=("out", "metrics", "plots"))
    p = params.load(PARAMS)
    source = sources.locate(str(args.source))
    runtime.log_devices()
    loaded = keras_files.load(args.model)
    multi = models.is_multi_label(loaded)
    model = inference.KerasClassifier(models.logits(loaded))  # its outputs are now logits
    logits, y = {}, {}
    for part in ("val", "test"):
        _, pixels, y[part], labels = inference.load_split(source, args.split, model.image_size, part, multi)
        if not len(y[part]):
            raise errors.StageError(f"{args.split / (part + '.csv')} holds no image: calibration needs "
                                       "validation and test images (split.val_fraction, split.test_fraction)")
        logits[part] = model.predict(pixels, p.evaluate.batch_size).astype(np.float64)
    logits["ood"] = model.predict(inference.load_ood(args.ood, model.image_size)[1],
                                  p.evaluate.batch_size).astype(np.float64)
    log.info("logits of %d validation, %d test and %d out-of-distribution images", len(y["val"]), len(y["test"]),
             len(logits["ood"]))

    if multi:
        return multi_label(args, p, logits, y, labels)
    t = confidence.fit_temperature(logits["val"], y["val"])
    before, after = (confidence.quality(logits["test"], y["test"], temp) for temp in (1.0, t))
    log.info("temperature %.3f: test ECE %.4f -> %.4f, NLL %.4f -> %.4f, Brier %.4f -> %.4f", t, before["ece"],
             after["ece"], before["nll"], after["nll"], before["brier"], after["brier"])

    score = {part: confidence.scores(logits[part], t) for part in logits}
    center = confidence.threshold_for(score["val"]["energy"], p.calibrate.unknown_keep)
    scale = confidence.robust_scale(score["val"]["energy"])
    known = {part: confidence.known(logits[part], center, scale) for part in logits}
    threshold = confidence.KNOWN_THRESHOLD
    ood = {name: confidence.separation(score["test"][name], score["ood"][name]) for name in score["test"]}
    kept = known["test"] >= threshold
    probabilities = confidence.calibrated(logits["test"], t)
    unknown = {"score": "known", "from": "energy", "threshold": threshold, "energy_center": center,
               "energy_scale": scale,
               "validation_kept": float(np.mean(known["val"] >= threshold)),
               "test_kept": float(kept.mean()),
               "test_accuracy_kept": float(np.mean(probabilities[kept].argmax(axis=1) == y["test"][kept]))
               if kept.any() else None,
               "ood_images": len(logits["ood"]),
               "ood_called_unknown": float(np.mean(known["ood"] < threshold)),
               "ood_separation": ood}
    log_separation(ood, args.ood)
    log.info("unknown where known < %.2f (energy below %.4f): %.1f%% of test images kept, %.1f%% of "
             "out-of-distribution images called unknown", threshold, center, 100 * unknown["test_kept"],
             100 * unknown["ood_called_unknown"])

    args.plots.mkdir(parents=True, exist_ok=True)
    coverage = confidence.coverage_curve(probabilities.max(axis=1), probabilities.argmax(axis=1) == y["test"])
    with artifacts.atomic_file(args.plots / "coverage.csv") as tmp:
        schemas.write_csv(tmp, coverage, ["threshold", "coverage", "accuracy"])
    with artifacts.atomic_file(args.plots / "calibration.png") as tmp:
        plots_calibration.calibration({"uncalibrated": confidence.reliability(confidence.calibrated(logits["test"], 1.0), y["test"]),
                           f"temperature {t:.2f}": confidence.reliability(probabilities, y["test"])},
                          coverage, threshold, tmp, f"Calibration on the test split ({len(y['test'])} images)")
    curves = {}
    for i, label in enumerate(labels):
        if (y["test"] == i).any():
            precision, recall, _ = precision_recall_curve(y["test"] == i, probabilities[:, i])
            curves[label] = (recall, precision, float(average_precision_score(y["test"] == i, probabilities[:, i])))
    with artifacts.atomic_file(args.plots / "precision_recall.png") as tmp:
        plots_calibration.precision_recall(curves, tmp, "Per-class precision and recall on the test split (calibrated)")
    with artifacts.atomic_file(args.plots / "unknown.png") as tmp:
        plots_calibration.score_histograms({"test images": known["test"], "out-of-distribution images": known["ood"]},
                               threshold, tmp, "Known (from the energy): the classes against everything else")

    artifacts.write_json(args.out, {"temperature": t, "temperature_in_model": False, "unknown_score": "known",
                                    "unknown_threshold": threshold, "known_center": center, "known_scale": scale})
    artifacts.write_json(args.metrics, {"temperature": t, "test_before": before, "test_after": after,
                                        "unknown": unknown, "average_precision": {k: v[2] for k, v in curves.items()}})


def log_separation(ood: dict, folder) -> None:
    """Each score's AUROC and FPR at 95% TPR, test against out-of-distribution images; a warning
    where the out-of-distribution folder looks like the training data."""
    for name, m in ood.items():
        log.info("out-of-distribution score %-11s AUROC %.4f  FPR at 95%% TPR %.4f%s", name, m["auroc"],
                 m["fpr_at_95_tpr"], "  (shipped as known)" if name == "energy" else "")
    if confidence.looks_like_training(ood["energy"]["auroc"]):
        log.warning("%s looks like the training data: the model finds its images as familiar as the test images, "
                    "or more (AUROC %.2f, 0.5 is chance), so its unknown figures mean nothing. Fill it with "
                    "images of none of the classes (docs/evaluation.md#the-out-of-distribution-set)",
                    folder, ood["energy"]["auroc"])


def multi_label(args, p, logits: dict, y: dict, labels: list[str]) -> None:
    """The calibration of a sigmoid per label (the module's docstring says what and why)."""
    t, shift = confidence.fit_label_platt(logits["val"], y["val"])
    before = confidence.label_quality(logits["test"], y["test"], 1.0, labels)
    after = confidence.label_quality(logits["test"], y["test"], t, labels, shift)
    log.info("Platt scaling per label, temperatures %s, shifts %s: test ECE (mean over labels) %.4f -> %.4f, "
             "NLL %.4f -> %.4f, Brier %.4f -> %.4f", np.round(t, 3).tolist(), np.round(shift, 3).tolist(),
             before["ece"], after["ece"], before["nll"], after["nll"], before["brier"], after["brier"])
    probabilities = {part: confidence.label_probabilities(logits[part], t, shift) for part in logits}
    cut = multilabel.thresholds(y["val"], probabilities["val"], p.evaluate.label_precision)
    score = {part: confidence.label_scores(logits[part], t, shift) for part in logits}
    center = confidence.threshold_for(score["val"]["energy"], p.calibrate.unknown_keep)
    scale = confidence.robust_scale(score["val"]["energy"])
    known = {part: confidence.label_known(logits[part], center, scale) for part in logits}
    threshold = confidence.KNOWN_THRESHOLD
    ood = {name: confidence.separation(score["test"][name], score["ood"][name]) for name in score["test"]}
    none = {part: ~(probabilities[part] >= cut).any(axis=1) for part in logits}
    unknown_of = {part: known[part] < threshold for part in logits}
    kept = ~unknown_of["test"]
    exact = (probabilities["test"] >= cut) == y["test"].astype(bool)
    truly_none = ~y["test"].any(axis=1)
    unknown = {"score": "known", "from": "joint energy", "threshold": threshold, "energy_center": center,
               "energy_scale": scale,
               "validation_kept": float(np.mean(~unknown_of["val"])),
               "test_kept": float(kept.mean()),
               "test_exact_match_kept": float(exact[kept].all(axis=1).mean()) if kept.any() else None,
               "ood_images": len(logits["ood"]),
               "ood_called_unknown": float(unknown_of["ood"].mean()),
               "ood_separation": ood}
    # "None of the labels" is an answer about a familiar image; "unknown" says the image is unlike the
    # training data. Each is counted where it is right and where it is not.
    answers = {"test_none_predicted": float(none["test"].mean()),
               "test_none_true": float(truly_none.mean()),
               "test_none_true_predicted_none": float(none["test"][truly_none].mean()) if truly_none.any() else None,
               "test_none_true_called_unknown": float(unknown_of["test"][truly_none].mean())
               if truly_none.any() else None,
               "ood_predicted_none": float(none["ood"].mean()),
               "ood_none_or_unknown": float((none["ood"] | unknown_of["ood"]).mean())}
    log_separation(ood, args.ood)
    log.info("unknown where known < %.2f: %.1f%% of test images kept, %.1f%% of out-of-distribution images called "
             "unknown; no label predicted for %.1f%% of test images (%.1f%% carry none) and %.1f%% of "
             "out-of-distribution ones", threshold, 100 * unknown["test_kept"], 100 * unknown["ood_called_unknown"],
             100 * answers["test_none_predicted"], 100 * answers["test_none_true"], 100 * answers["ood_predicted_none"])

    args.plots.mkdir(parents=True, exist_ok=True)
    coverage = confidence.coverage_curve(known["test"], exact.all(axis=1))  # exact match against the known threshold
    with artifacts.atomic_file(args.plots / "coverage.csv") as tmp:
        schemas.write_csv(tmp, coverage, ["threshold", "coverage", "accuracy"])
    with artifacts.atomic_file(args.plots / "calibration.png") as tmp:
        plots_calibration.calibration(
            {"uncalibrated": confidence.label_reliability(confidence.label_probabilities(logits["test"], 1.0), y["test"]),
             "Platt scaling per label": confidence.label_reliability(probabilities["test"], y["test"])},
            coverage, threshold, tmp, f"Calibration of every label on the test split ({len(y['test'])} images)",
            multi_label=True)
    curves = {}
    for j, label in enumerate(labels):
        if y["test"][:, j].any():
            precision, recall, _ = precision_recall_curve(y["test"][:, j], probabilities["test"][:, j])
            curves[label] = (recall, precision, float(average_precision_score(y["test"][:, j],
                                                                              probabilities["test"][:, j])))
    with artifacts.atomic_file(args.plots / "precision_recall.png") as tmp:
        plots_calibration.precision_recall(curves, tmp, "Per-label precision and recall on the test split (calibrated)")
    with artifacts.atomic_file(args.plots / "unknown.png") as tmp:
        plots_calibration.score_histograms({"test images": known["test"], "out-of-distribution images": known["ood"]},
                                           threshold, tmp, "Known (from the joint energy): the labels' images "
                                                           "against everything else")

    artifacts.write_json(args.out, {"task": "multi_label", "temperature": t.tolist(), "shift": shift.tolist(),
                                    "temperature_in_model": False, "label_thresholds": cut.tolist(), "unknown_score": "known",
                                    "unknown_threshold": threshold, "known_center": center, "known_scale": scale})
    artifacts.write_json(args.metrics, {"task": "multi_label", "temperature": dict(zip(labels, t.tolist())),
                                        "shift": dict(zip(labels, shift.tolist())),
                                        "label_thresholds": dict(zip(labels, cut.tolist())), "test_before": before,
                                        "test_after": after, "unknown": unknown, "answers": answers,
                                        "average_precision": {k: v[2] for k, v in curves.items()}})


if __name__ == "__main__":
    cli.run(main)
