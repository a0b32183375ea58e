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
"""
from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from pipeline.lib import artifacts, cli, explain, images, inference, keras_files, models, params, plots_evaluation, plots_gallery, runtime, schemas, sources

PARAMS = ["evaluate.batch_size", "evaluate.tta", "ingest.max_unpacked_mb",
          "ingest.max_expansion_ratio"]  # sources.locate unpacks an archive source within them
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
    source = sources.locate(str(args.source), p.ingest)
    runtime.log_devices()
    classifiers = {"head": inference.KerasClassifier(models.assemble(keras_files.load(args.extractor),
                                                                     keras_files.load(args.head))),
                   "finetune": inference.load(args.model)}
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


if __name__ == "__main__":
    cli.run(main)
