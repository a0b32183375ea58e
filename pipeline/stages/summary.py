"""summary: the stages' reports -> reports/summary.md, a model card readable on its own.

Data (images per class and split, what was skipped and why, what the audit
found), backbone and key params, head-only against fine-tuned results,
calibration and "unknown" (with the reliability diagram), every exported file
with its size, parity and speed, and the figures' file names. Plain Markdown, short
enough to post as a CI comment (``cat reports/summary.md``).
"""
from __future__ import annotations

import os

from pipeline.lib import artifacts, cli, params, schemas
from pipeline.lib.exports import FORMATS

PARAMS = ["seed", "base", "augment.copies", "class_weights", "train_head.hidden_units",
          "train_head.learning_rate", "train_head.label_smoothing", "finetune.unfreeze_layers",
          "finetune.learning_rate", "finetune.epochs", "finetune.schedule", "finetune.warmup_epochs",
          "finetune.label_smoothing", "finetune.online_augmentation"]
FIGURES = {  # file under a report folder -> what it shows
    "curves.png": "training curves (loss and accuracy, train and validation)",
    "confusion_finetune.png": "confusion matrix, fine-tuned model (row-normalized)",
    "confusion_head.png": "confusion matrix, head only",
    "per_class_f1.png": "per-class F1, head only and fine-tuned",
    "mistakes.png": "the fine-tuned model's most confident mistakes on the test split, with file names and Grad-CAM heat maps",
    "calibration.png": "reliability diagram before and after calibration, and accuracy against coverage",
    "precision_recall.png": "per-class precision-recall curves (calibrated probabilities)",
    "unknown.png": "known (from the energy) of test and out-of-distribution images, the unknown threshold marked",
}


def table(header: list[str], rows: list[list]) -> list[str]:
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in cells]


def data_section(ingest: dict, split: dict) -> list[str]:
    labels, parts = split["labels"], ["train", "val", "test"]
    rows = [[label, *(split["per_class"][s].get(label, 0) for s in parts),
             sum(split["per_class"][s].get(label, 0) for s in parts)] for label in labels]
    rows.append(["**total**", *(split["images"][s] for s in parts), sum(split["images"].values())])
    lines = ["## Data", "", f"Source: `{ingest['source']}`, data version `{ingest['data_version']}` (a digest "
             "of every kept image's path, label and content: the same images give the same version). "
             f"{ingest['kept']} images kept, {ingest['skipped']} skipped; split `{split['strategy']}`.", ""]
    lines += table(["class", *parts, "all"], rows)
    if ingest["skipped_by_reason"]:
        lines += ["", "Skipped (counted per reason; `ingest.json` names the first files of each):", ""]
        lines += table(["reason", "files"], [[k, v] for k, v in ingest["skipped_by_reason"].items()])
    if split["label_changes"]:
        lines += ["", "Label changes: " + "; ".join(f"{k}: {v}" for k, v in split["label_changes"].items()) + "."]
    return lines


def audit_section(audit: dict) -> list[str]:
    """What the data audit found: the review budget per issue type, where to look, and the leakage rate."""
    quality = ", ".join(f"{k} {v}" for k, v in audit["quality_by_issue"].items())
    review = audit["review"]
    rows = [["label issues (given label more likely wrong than right)", review["label_issues"]["images"],
             f"about {review['label_issues']['expected_issues']:.0f}", "label_issues"],
            ["near duplicates (images; in brackets, pairs across splits)",
             f"{review['near_duplicates']['images']} ({audit['cross_split_duplicates']})", "each", "near_duplicates"],
            ["outliers (far from every other image)", review["outliers"]["images"], "each", "outliers"],
            ["image quality" + (f" ({quality})" if quality else ""), review["quality"]["images"], "each", "quality"]]
    leaked = audit["leaked"]
    labels = (f"The audit estimates {audit.get('estimated_wrong_labels', 0):.0f} wrong labels in all the data (the "
              f"sum of each image's probability); its classifier agrees with "
              f"{audit.get('audit_classifier_accuracy', 0):.1%} of the given labels. ")
    if not audit.get("label_issues_checked", True):  # task: multi_label
        rows = rows[1:]
        labels = "Label issues are not looked for with task: multi_label (docs/multilabel.md). "
    text = (f"Of {audit['images']} images, review these first: each file lists its images worst first "
            f"(`reports/audit/<file>.csv`, the first in `<file>.png`). {labels}"
            f"Leakage: {leaked['test']} test and {leaked['val']} validation images have a near twin in train "
            f"(rate {audit['leakage_rate']:.3f}).")
    return ["## Data audit", "", text, ""] + table(["issue", "images to review", "real issues expected", "file"], rows)


def model_section(p, split: dict, class_weights: str) -> list[str]:
    counts = list(split["per_class"]["train"].values())
    ratio = max(counts) / max(min(counts), 1)
    cw = p.class_weights
    ft, th = p.finetune, p.train_head
    rows = [
        ["backbone", f"{p.base.backbone}, {p.base.weights} weights, {p.base.image_size} px, {p.base.pooling} pooling"],
        ["augmentation", f"{p.augment.copies} augmented cop{'y' if p.augment.copies == 1 else 'ies'} per training "
                         f"image for the head; online while fine-tuning: {'yes' if ft.online_augmentation else 'no'}"],
        ["class weights", f"{class_weights} (class_weights.mode {cw.mode}, threshold {cw.auto_ratio:g}x; "
                          f"the largest training class has {ratio:.1f}x the images of the smallest)"],
        ["head", f"{'linear' if not th.hidden_units else f'{th.hidden_units} hidden units'}, "
                 f"learning rate {th.learning_rate:g}, label smoothing {th.label_smoothing:g}"],
        ["fine-tuning", f"top {ft.unfreeze_layers} layers (BatchNorm frozen), learning rate {ft.learning_rate:g} "
                        f"{ft.schedule}, warm-up {ft.warmup_epochs:g} epochs, up to {ft.epochs} epochs, "
                        f"label smoothing {ft.label_smoothing:g}"],
        ["seed", p.seed],
    ]
    return ["## Model", ""] + table(["", ""], rows)


def results_section(metrics: dict, head_log: dict, finetune_log: dict, per_class: dict) -> list[str]:
    rows = [["head only (frozen backbone)", metrics["head"]["accuracy"], metrics["head"]["macro_f1"],
             head_log["best_val_accuracy"]],
            ["fine-tuned", metrics["finetune"]["accuracy"], metrics["finetune"]["macro_f1"],
             finetune_log["best_val_accuracy"]]]
    if "finetune_tta" in metrics:
        rows.append(["fine-tuned, test-time augmentation (each image and its mirror)",
                     metrics["finetune_tta"]["accuracy"], metrics["finetune_tta"]["macro_f1"], "-"])
    lines = ["## Results", "", f"On {metrics['test_images']} test images:", ""]
    lines += table(["model", "test accuracy", "test macro-F1", "best val accuracy"], rows)
    lines += ["", "Per class (test split):", ""]
    lines += table(["class", "support", "F1 head only", "F1 fine-tuned"],
                   [[label, v["support"], per_class["head"][label]["f1"], v["f1"]]
                    for label, v in per_class["finetune"].items()])
    return lines


def multi_label_results(metrics: dict, head_log: dict, finetune_log: dict, per_class: dict) -> list[str]:
    """The results of a task: multi_label model: set metrics, then per label."""
    keys = ["mean_average_precision", "micro_f1", "macro_f1", "exact_match", "hamming_loss"]
    rows = [[title, *(metrics[name][k] for k in keys), log["best_val_accuracy"] if log else "-"]
            for name, title, log in (("head", "head only (frozen backbone)", head_log),
                                     ("finetune", "fine-tuned", finetune_log),
                                     ("finetune_tta", "fine-tuned, test-time augmentation", None)) if name in metrics]
    lines = ["## Results", "", f"On {metrics['test_images']} test images, each label present where its probability "
             "reaches its threshold (chosen per label on the validation split); best val accuracy is the share of "
             "(image, label) answers right at 0.5:", ""]
    lines += table(["model", "mAP", "micro-F1", "macro-F1", "exact match", "Hamming loss", "best val accuracy"], rows)
    lines += ["", "Per label (test split):", ""]
    lines += table(["label", "test images", "AP fine-tuned", "F1 head only", "F1 fine-tuned", "threshold"],
                   [[label, v["images"], "-" if v["average_precision"] is None else v["average_precision"],
                     per_class["head"][label]["f1"], v["f1"], v["threshold"]]
                    for label, v in per_class["finetune"].items()])
    return lines


def multi_label_calibration(calibration: dict, figure: str) -> list[str]:
    """A temperature per label, ECE per label before and after, "none" and "unknown"."""
    before, after, unknown, answers = (calibration[k] for k in ("test_before", "test_after", "unknown", "answers"))
    rows = [[label, calibration["temperature"][label], calibration["shift"][label], before["per_label"][label]["ece"],
             after["per_label"][label]["ece"], calibration["label_thresholds"][label]] for label in after["per_label"]]
    rows.append(["**mean over labels**", "-", "-", before["ece"], after["ece"], "-"])
    ood = [[name, m["auroc"], m["fpr_at_95_tpr"]] for name, m in unknown["ood_separation"].items()]
    none_true = answers["test_none_true_predicted_none"]
    text = (f"Two answers that are not labels. **None of the labels**: no probability reaches its threshold; "
            f"{answers['test_none_predicted']:.1%} of test images get it ({answers['test_none_true']:.1%} carry no "
            "label" + (f"; {none_true:.1%} of those get it, {answers['test_none_true_called_unknown']:.1%} are called "
                       "unknown" if none_true is not None else "") +
            f"), and {answers['ood_predicted_none']:.1%} of the {unknown['ood_images']} out-of-distribution images. "
            f"**Unknown**: known below **{unknown['threshold']:.2f}**, from the joint energy of the logits (the sum "
            f"over labels of log(1 + exp(logit)), below {unknown['energy_center']:.3f}); it keeps "
            f"{unknown['test_kept']:.1%} of the test images ({unknown['test_exact_match_kept'] or 0:.1%} of them "
            f"exactly right) and calls {unknown['ood_called_unknown']:.1%} of the out-of-distribution images "
            f"unknown; {answers['ood_none_or_unknown']:.1%} of them get one answer or the other. How well each "
            "score separates test from out-of-distribution images:")
    return (["## Calibration, none and unknown", "", "Platt scaling per label, sigmoid(logit / temperature + "
             "shift), fitted on the validation split and built into every exported file; ECE (15 equal-width bins "
             "of each label's probability) on the test split, before and after; each label's threshold on the "
             "calibrated probability:", ""]
            + table(["label", "temperature", "shift", "ECE before", "ECE after", "threshold"], rows) + ["", text, ""]
            + table(["score", "AUROC", "FPR at 95% TPR"], ood) + ["", f"![reliability diagram]({figure})"])


def calibration_section(calibration: dict, figure: str) -> list[str]:
    """Temperature, ECE/NLL/Brier before and after, the unknown threshold and how it separates."""
    before, after, unknown = calibration["test_before"], calibration["test_after"], calibration["unknown"]
    rows = [[name, m["ece"], m["nll"], m["brier"], m["accuracy"]]
            for name, m in (("uncalibrated", before), (f"temperature {calibration['temperature']:.3f}", after))]
    ood = [[name, m["auroc"], m["fpr_at_95_tpr"]] for name, m in unknown["ood_separation"].items()]
    text = (f"Unknown: an image whose known score is below **{unknown['threshold']:.2f}**, i.e. whose energy "
            f"(logsumexp of the logits) is below {unknown['energy_center']:.3f} (kept "
            f"{unknown['validation_kept']:.1%} of the validation images); every exported file has known as a second "
            "output. On the test split it keeps "
            f"{unknown['test_kept']:.1%} of the images, {unknown['test_accuracy_kept'] or 0:.1%} of them right; it "
            f"calls {unknown['ood_called_unknown']:.1%} of the {unknown['ood_images']} out-of-distribution images "
            "unknown. How well each score separates test from out-of-distribution images (known ranks images as "
            "the energy does):")
    return (["## Calibration and unknown", "", "On the test split (ECE: 15 equal-width bins; the temperature was "
             "fitted on the validation split and is built into every exported file):", ""]
            + table(["probabilities", "ECE", "NLL", "Brier", "accuracy"], rows) + ["", text, ""]
            + table(["score", "AUROC", "FPR at 95% TPR"], ood) + ["", f"![reliability diagram]({figure})"])


def export_section(export: dict) -> list[str]:
    multi = export.get("task") == "multi_label"
    rows = [[f"`{FORMATS[name].file}`", FORMATS[name].runtime, f"{m['size_mb']:.2f}",
             m["exact_match"] if multi else m["accuracy"], m["agreement"],
             m["unknown_agreement"], m["ood_fpr_at_95_tpr"],
             f"{m['latency_ms_median']:.1f} / {m['latency_ms_p95']:.1f}", f"{m['images_per_s']:.0f}"]
            for name, m in export.items() if name in FORMATS]
    return ["## Exported model", "", "Each file with `labels.txt` and `calibration.json` (temperature, energy "
            "centre and scale, unknown threshold) beside it (the TFLite files also carry the labels, input "
            "normalization and threshold as metadata); " + (
                "exact match and agreement (share of test images given the same label set as the Keras model; "
                "calibration.json holds each label's threshold)" if multi else
                "accuracy and agreement (share of test images with the same top-1 class as the Keras model)") +
            " measured on the test split, through the runtime named; agreement on "
            f"unknown (the same verdict as the Keras model) on the test and {export.get('ood_images', '?')} "
            "out-of-distribution images, and the FPR at 95% TPR of the file's own known. Times are from the machine "
            "that ran the export "
            f"stage: latency of one image (median / 95th percentile), throughput at batch "
            f"{export.get('timing_batch_size', '?')}; compare them only with times measured on the same machine.", ""] + \
        table(["file", "runtime", "size (MB)", "test exact match" if multi else "test accuracy", "agreement",
               "agreement on unknown",
               "FPR at 95% TPR", "ms per image", "images/s"], rows) + \
        [f"\nNot checked: {name} ({reason})." for name, reason in export.get("not_checked", {}).items()]


def main() -> None:
    args = cli.start(__doc__, "ingest", "split", "audit", "head_log", "finetune_log", "evaluate", "metrics",
                           "calibration", "calibrate", "export", "out", writes=("out",))
    p = params.load(PARAMS)
    read = schemas.read_json
    metrics, split = read(args.metrics), read(args.split)
    here = args.out.parent
    figures = [f"- `{os.path.relpath(folder / name, here)}`: {what}"
               for folder in (args.head_log, args.finetune_log, args.evaluate, args.calibrate)
               for name, what in FIGURES.items() if (folder / name).exists()]
    multi = metrics.get("task") == "multi_label"
    if multi:
        ft, head = metrics["finetune"], metrics["head"]
        lines = [f"# Model card: {p.base.backbone} fine-tuned on {len(split['labels'])} labels (multi-label)", "",
                 f"**Test mAP {ft['mean_average_precision']:.3f} fine-tuned, {head['mean_average_precision']:.3f} "
                 f"head only** (micro-F1 {ft['micro_f1']:.3f} / {head['micro_f1']:.3f}, exact match "
                 f"{ft['exact_match']:.3f} / {head['exact_match']:.3f}). Labels, any number per image: "
                 f"{', '.join(split['labels'])}.", ""]
    else:
        lines = [f"# Model card: {p.base.backbone} fine-tuned on {len(split['labels'])} classes", "",
                 f"**Test accuracy {metrics['finetune']['accuracy']:.3f} fine-tuned, "
                 f"{metrics['head']['accuracy']:.3f} head only** (macro-F1 {metrics['finetune']['macro_f1']:.3f} / "
                 f"{metrics['head']['macro_f1']:.3f}). Classes: {', '.join(split['labels'])}.", ""]
    head_log = read(args.head_log / "metrics.json")
    lines += data_section(read(args.ingest), split) + [""]
    lines += audit_section(read(args.audit)) + [""]
    lines += model_section(p, split, head_log["class_weights"]) + [""]
    results, calibrated = ((multi_label_results, multi_label_calibration) if multi
                           else (results_section, calibration_section))
    lines += results(metrics, head_log, read(args.finetune_log / "metrics.json"),
                     read(args.evaluate / "per_class.json")) + [""]
    lines += calibrated(read(args.calibration), os.path.relpath(args.calibrate / "calibration.png", here)) + [""]
    lines += export_section(read(args.export)) + [""]
    lines += ["## Figures", "", *figures, ""]
    with artifacts.atomic_file(args.out) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    cli.run(main)
