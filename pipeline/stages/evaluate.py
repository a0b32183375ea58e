"""evaluate: test images + extractor/head/model .keras -> reports/metrics.json + reports/evaluate/.

Both models are scored on the test split, read from the source (each image
checked against the hash ingest recorded) and decoded exactly as
``pipeline.predict`` decodes a user's images (inference.py): the head-only
model (extractor + head, the frozen backbone) and the fine-tuned model.
Accuracy and macro-F1 go to the DVC metrics file; per-class precision, recall
and F1 to per_class.json and a bar chart; confusion matrices to CSV (DVC's
``confusion`` plot) and PNG; every test image's prediction to
predictions.csv; the most confident mistakes to a gallery, each tile named and
overlaid with its Grad-CAM heat map (what the decision rests on). With
``evaluate.tta: horizontal_flip`` the fine-tuned model is also scored with
test-time augmentation (``finetune_tta``), to show what it would add.

A task: multi_label model (sigmoid outputs, docs/multilabel.md) is scored per
label instead: each label's threshold is chosen on the validation split
(highest F1, or evaluate.label_precision), then on test: mean average
precision, micro and macro F1, exact-match accuracy and Hamming loss (the
metrics), per-label AP, precision, recall and F1 (per_class.json, the bar
chart). The same files hold the multi-label answers: the confusion matrix
counts each true label found (diagonal), missed (column "(none)") and each
label added (row "(none)"); the gallery shows the test images with the
surest missed or extra label.
"""
from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from pipeline.lib import artifacts, cli, explain, images, inference, keras_files, models, multilabel, params, plots_evaluation, plots_gallery, runtime, schemas, sources

PARAMS = ["evaluate.batch_size", "evaluate.tta", "evaluate.label_precision"]
TITLES = {"head": "Head only (frozen backbone)", "finetune": "Fine-tuned"}
GALLERY = 12  # most confident mistakes shown
log = logging.getLogger("pipeline.stages.evaluate")


def scores(y: np.ndarray, pred: np.ndarray, labels: list[str]) -> tuple[dict, dict]:
    """(summary metrics, per-class precision/recall/F1/support) for integer labels."""
    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=ids, zero_division=0)
    per_class = {label: {"precision": float(precision[i]), "recall": float(recall[i]),
                         "f1": float(f1[i]), "support": int(support[i])} for i, label in enumerate(labels)}
    summary = {"accuracy": float(accuracy_score(y, pred)),
               "macro_f1": float(f1_score(y, pred, labels=ids, average="macro", zero_division=0))}
    return summary, per_class


def main() -> None:
    args = cli.start(__doc__, "source", "split", "extractor", "head", "model", "metrics", "out",
                           writes=("metrics", "out"))
    p = params.load(PARAMS)
    source = sources.locate(str(args.source))
    runtime.log_devices()
    classifiers = {"head": inference.KerasClassifier(models.assemble(keras_files.load(args.extractor),
                                                                     keras_files.load(args.head))),
                   "finetune": inference.load(args.model)}
    if models.is_multi_label(classifiers["finetune"].model):
        return multi_label(args, p, source, classifiers)
    rows, pixels, y, labels = inference.load_split(source, args.split, classifiers["finetune"].image_size)
    log.info("scoring both models on %d test images", len(y))

    metrics, per_class, probs = {}, {}, {}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, classifier in classifiers.items():
        probs[name] = classifier.predict(pixels, p.evaluate.batch_size)
        pred = probs[name].argmax(axis=1)
        metrics[name], per_class[name] = scores(y, pred, labels)
        with artifacts.atomic_file(args.out / f"confusion_{name}.csv") as tmp:
            schemas.write_csv(tmp, ({"actual": labels[t], "predicted": labels[q]} for t, q in zip(y, pred)),
                             ["actual", "predicted"])
        with artifacts.atomic_file(args.out / f"confusion_{name}.png") as tmp:
            plots_evaluation.confusion_png(confusion_matrix(y, pred, labels=range(len(labels))), labels, tmp,
                                f"{TITLES[name]}: test accuracy {metrics[name]['accuracy']:.3f}")
        log.info("%-8s accuracy %.4f  macro-F1 %.4f", name, metrics[name]["accuracy"], metrics[name]["macro_f1"])
    if p.evaluate.tta == "horizontal_flip":
        tta = classifiers["finetune"].predict(pixels, p.evaluate.batch_size, tta=True).argmax(axis=1)
        metrics["finetune_tta"], _ = scores(y, tta, labels)
        log.info("finetune with test-time augmentation (horizontal flip): accuracy %.4f  macro-F1 %.4f",
                 metrics["finetune_tta"]["accuracy"], metrics["finetune_tta"]["macro_f1"])
    metrics["test_images"] = int(len(y))

    pred, confidence = probs["finetune"].argmax(axis=1), probs["finetune"].max(axis=1)
    with artifacts.atomic_file(args.out / "predictions.csv") as tmp:
        schemas.write_csv(tmp, ({"path": r["path"], "actual": labels[t], "predicted": labels[q],
                                "confidence": f"{c:.6f}"} for r, t, q, c in zip(rows, y, pred, confidence)),
                         ["path", "actual", "predicted", "confidence"])
    mistakes = sorted(np.flatnonzero(pred != y), key=lambda i: -confidence[i])[:GALLERY]
    heat, _ = explain.GradCam(classifiers["finetune"].model)(pixels[mistakes])
    with artifacts.atomic_file(args.out / "mistakes.png") as tmp:
        plots_gallery.gallery([explain.overlay(images.thumbnail(images.read_recorded(source, rows[i]), 200), h)
                       for i, h in zip(mistakes, heat)],
                      [f"{rows[i]['path'].rsplit('/', 1)[-1]}\ntrue: {labels[y[i]]}\n"
                       f"predicted: {labels[pred[i]]} ({confidence[i]:.0%})" for i in mistakes],
                      tmp, f"Fine-tuned model: the {len(mistakes)} most confident mistakes on the test split\n"
                           "(Grad-CAM: red is what the predicted class rests on)")
    with artifacts.atomic_file(args.out / "per_class_f1.png") as tmp:
        plots_evaluation.per_class_f1({TITLES[name]: {k: v["f1"] for k, v in per_class[name].items()} for name in per_class},
                           tmp, "Per-class F1 on the test split")
    artifacts.write_json(args.out / "per_class.json", per_class)
    artifacts.write_json(args.metrics, metrics)


NONE = "(none)"  # multi_label confusion: a missed label is predicted as NONE, an extra one is actually NONE


def multi_label(args, p, source, classifiers: dict) -> None:
    """The task: multi_label evaluation (the module's docstring): thresholds on val, scores on test."""
    size = classifiers["finetune"].image_size
    _, val_pixels, val_y, labels = inference.load_split(source, args.split, size, "val", multi=True)
    rows, pixels, y, _ = inference.load_split(source, args.split, size, "test", multi=True)
    log.info("scoring both models on %d test images, %d labels (thresholds from %d validation images)",
             len(y), len(labels), len(val_y))
    metrics, per_class, probs, cuts = {"task": "multi_label"}, {}, {}, {}
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [(name, name, False) for name in classifiers]
    if p.evaluate.tta == "horizontal_flip":
        runs.append(("finetune_tta", "finetune", True))
    for name, model, tta in runs:
        cut = multilabel.thresholds(val_y, classifiers[model].predict(val_pixels, p.evaluate.batch_size, tta),
                                    p.evaluate.label_precision)
        probs[name] = classifiers[model].predict(pixels, p.evaluate.batch_size, tta)
        found = multilabel.scores(y, probs[name], cut, labels)
        cuts[name], per_class[name] = cut, found.pop("per_label")
        metrics[name] = found
        log.info("%-12s mAP %.4f  micro-F1 %.4f  macro-F1 %.4f  exact match %.4f  Hamming loss %.4f", name,
                 found["mean_average_precision"], found["micro_f1"], found["macro_f1"], found["exact_match"],
                 found["hamming_loss"])
    metrics["test_images"] = int(len(y))
    for name in classifiers:
        pairs = confusion_pairs(y, probs[name] >= cuts[name], labels)
        with artifacts.atomic_file(args.out / f"confusion_{name}.csv") as tmp:
            schemas.write_csv(tmp, ({"actual": a, "predicted": b} for a, b in pairs), ["actual", "predicted"])
        names = labels + [NONE]
        matrix = confusion_matrix([a for a, _ in pairs], [b for _, b in pairs], labels=names)
        with artifacts.atomic_file(args.out / f"confusion_{name}.png") as tmp:
            plots_evaluation.confusion_png(matrix, names, tmp, f"{TITLES[name]}: test micro-F1 "
                                           f"{metrics[name]['micro_f1']:.3f}\nmissed: column {NONE}; added: row {NONE}")

    prob, predicted = probs["finetune"], probs["finetune"] >= cuts["finetune"]
    with artifacts.atomic_file(args.out / "predictions.csv") as tmp:
        schemas.write_csv(tmp, ({"path": r["path"], "actual": r["label"],
                                 "predicted": multilabel.encode(np.array(labels)[predicted[i]]),
                                 **{f"p_{label}": f"{prob[i, j]:.6f}" for j, label in enumerate(labels)}}
                                for i, r in enumerate(rows)),
                          ["path", "actual", "predicted", *(f"p_{label}" for label in labels)])
    # How sure each wrong answer was: a missed label's 1 - p, an extra one's p; the surest per image
    wrong = np.where(predicted != y.astype(bool), np.where(y == 1, 1 - prob, prob), -1)
    worst = wrong.argmax(axis=1)
    mistakes = sorted(np.flatnonzero(wrong.max(axis=1) >= 0), key=lambda i: -wrong[i, worst[i]])[:GALLERY]
    heat, _ = explain.GradCam(classifiers["finetune"].model)(pixels[mistakes], worst[mistakes])
    with artifacts.atomic_file(args.out / "mistakes.png") as tmp:
        plots_gallery.gallery([explain.overlay(images.thumbnail(images.read_recorded(source, rows[i]), 200), h)
                               for i, h in zip(mistakes, heat)],
                              [mistake_caption(rows[i]["path"], y[i], prob[i], predicted[i], labels) for i in mistakes],
                              tmp, f"Fine-tuned model: the {len(mistakes)} test images with the surest missed or "
                                   "extra label\n(Grad-CAM: red is what that label's score rests on)")
    with artifacts.atomic_file(args.out / "per_class_f1.png") as tmp:
        plots_evaluation.per_class_f1({TITLES[name]: {f"{k} ({v['images']})": v["f1"] for k, v in per_class[name].items()}
                                       for name in classifiers}, tmp, "Per-label F1 on the test split (its images with "
                                      "the label)\nat thresholds chosen on validation")
    artifacts.write_json(args.out / "per_class.json", per_class)
    artifacts.write_json(args.metrics, metrics)


def confusion_pairs(y: np.ndarray, predicted: np.ndarray, labels: list[str]) -> list[tuple[str, str]]:
    """(actual, predicted) per label decision: a label found is (label, label), one missed
    (label, NONE), one added (NONE, label); an image with neither labels nor predictions is (NONE, NONE)."""
    pairs = []
    for truth, guess in zip(y.astype(bool), predicted):
        pairs += [(labels[j], labels[j] if guess[j] else NONE) for j in np.flatnonzero(truth)]
        pairs += [(NONE, labels[j]) for j in np.flatnonzero(guess & ~truth)]
        if not truth.any() and not guess.any():
            pairs.append((NONE, NONE))
    return pairs


# Missed or extra labels named per gallery caption, surest first: a tile is 3 inches wide, and two long
# label names already overflow it (predictions.csv has them all)
CAPTION_LABELS = 1


def mistake_caption(path: str, truth: np.ndarray, prob: np.ndarray, predicted: np.ndarray, labels: list[str]) -> str:
    """The file name, then the surest missed and extra labels with their probabilities (at most
    CAPTION_LABELS of each, then how many more), so a caption fits its tile at 30 or 50 labels."""
    def named(kind: str, which: np.ndarray) -> list[str]:
        if not len(which):
            return []
        shown = [f"{labels[j]} ({prob[j]:.0%})" for j in which[:CAPTION_LABELS]]
        more = f" +{len(which) - CAPTION_LABELS} more" if len(which) > CAPTION_LABELS else ""
        return [f"{kind}: " + ", ".join(shown) + more]

    missed = np.flatnonzero((truth == 1) & ~predicted)
    extra = np.flatnonzero((truth == 0) & predicted)
    return "\n".join([path.rsplit("/", 1)[-1]] + named("missed", missed[np.argsort(prob[missed], kind="stable")])
                     + named("extra", extra[np.argsort(-prob[extra], kind="stable")]))


if __name__ == "__main__":
    cli.run(main)
