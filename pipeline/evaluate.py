"""evaluate: test features/shards + head.keras + model.keras -> reports/metrics.json + reports/evaluate/.

Both models are scored on the test split: the head alone (on cached test
features, identical to extractor + head) and the fine-tuned model (on the test
images). Accuracy and macro-F1 go to the DVC metrics file; per-class
precision/recall/F1 to per_class.json; confusion matrices to CSV (DVC's
``confusion`` plot) and PNG.
"""
from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from pipeline import artifacts, images, models, params, plots, shards

PARAMS = ["evaluate.batch_size"]
TITLES = {"head": "Head only (frozen backbone)", "finetune": "Fine-tuned"}
log = logging.getLogger("pipeline.evaluate")


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
    args = artifacts.start(__doc__, "features", "augmented", "labels", "head", "model", "metrics", "out")
    p = params.load(PARAMS)
    labels = artifacts.read_json(args.labels)
    x_test, y_test = np.load(args.features / "test_x.npy"), np.load(args.features / "test_y.npy")
    predictions = {"head": models.load(args.head).predict(x_test, batch_size=p.evaluate.batch_size, verbose=0)}
    log.info("scoring the fine-tuned model on %d test images", len(y_test))
    test = shards.dataset(args.augmented, "test", p.evaluate.batch_size)
    y_images = np.concatenate([y.numpy() for _, y in test])
    if not np.array_equal(y_images, y_test):
        raise artifacts.StageError(f"test labels in {args.augmented} and {args.features} disagree: "
                                   "rerun the pipeline (dvc repro)")
    predictions["finetune"] = models.load(args.model).predict(test, verbose=0)

    metrics, per_class = {}, {}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, probs in predictions.items():
        pred = probs.argmax(axis=1)
        metrics[name], per_class[name] = scores(y_test, pred, labels)
        with artifacts.atomic_file(args.out / f"confusion_{name}.csv") as tmp:
            images.write_csv(tmp, ({"actual": labels[t], "predicted": labels[q]}
                                   for t, q in zip(y_test, pred)), ["actual", "predicted"])
        with artifacts.atomic_file(args.out / f"confusion_{name}.png") as tmp:
            matrix = confusion_matrix(y_test, pred, labels=range(len(labels)))
            plots.confusion_png(matrix, labels, tmp, f"{TITLES[name]}: test accuracy {metrics[name]['accuracy']:.3f}")
        log.info("%-8s accuracy %.4f  macro-F1 %.4f", name, metrics[name]["accuracy"], metrics[name]["macro_f1"])
    metrics["test_images"] = int(len(y_test))
    artifacts.write_json(args.out / "per_class.json", per_class)
    artifacts.write_json(args.metrics, metrics)


if __name__ == "__main__":
    artifacts.run(main)
