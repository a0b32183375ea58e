"""task: multi_label on real photos, the whole pipeline: calibration per label, "none" and
"unknown", and every exported file's agreement on label sets.

    python bench/multilabel_deploy.py [--keep DIR]   # writes bench/results/multilabel_deploy.json

Makes the composites of scripts/multilabel_clothing.py (as bench/multilabel.py does), runs the
whole pipeline (`dvc repro`, task: multi_label, the default params otherwise) in a scratch
project and reports what the calibrate and export stages measured on the test split and data/ood
(Fashion-MNIST bags here): each label's Platt scaling and ECE before and after, how often "none of
the labels" and "unknown" are answered on test and out-of-distribution images, and each format's
exact match and agreement with the Keras model on label sets. ``--keep DIR`` keeps the project
there, to look at its figures and model card.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import common  # noqa: E402
from multilabel import composites  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="keep the project in this (new) folder")
    args = ap.parse_args()
    common.require_assets()
    if args.keep and args.keep.exists():
        sys.exit(f"--keep {args.keep}: already exists; give a new folder")
    with tempfile.TemporaryDirectory(prefix="bench-multilabel-deploy-") as tmp:
        tmp = Path(tmp)
        env = common.environment(tmp)
        project = common.make_project(tmp / "project", env, fill=composites, ingest={"labels_csv": "labels.csv"})
        text = (project / "params.yaml").read_text().replace("task: single_label", "task: multi_label")
        (project / "params.yaml").write_text(text)
        started = time.perf_counter()
        common.run(["dvc", "repro"], project, env)
        seconds = time.perf_counter() - started
        read = lambda name: json.loads((project / name).read_text())  # noqa: E731
        metrics, calibration, export = read("reports/metrics.json"), read("reports/calibration.json"), read(
            "reports/export.json")
        if args.keep:
            shutil.copytree(project, args.keep, symlinks=True)
    before, after = calibration["test_before"], calibration["test_after"]
    common.table("Calibration on the test split (Platt scaling per label, fitted on validation)",
                 ["label", "temperature", "shift", "ECE before", "ECE after", "threshold"],
                 [[label, calibration["temperature"][label], calibration["shift"][label],
                   before["per_label"][label]["ece"], after["per_label"][label]["ece"],
                   calibration["label_thresholds"][label]] for label in after["per_label"]]
                 + [["mean", "-", "-", before["ece"], after["ece"], "-"]])
    common.table("NLL and Brier, mean over labels", ["", "NLL", "Brier"],
                 [["before", before["nll"], before["brier"]], ["after", after["nll"], after["brier"]]])
    unknown, answers = calibration["unknown"], calibration["answers"]
    common.table("None of the labels, and unknown", ["", "share"],
                 [[k, v] for k, v in answers.items()]
                 + [["test images kept (not unknown)", unknown["test_kept"]],
                    ["ood images called unknown", unknown["ood_called_unknown"]]]
                 + [[f"AUROC test vs ood, {k}", v["auroc"]] for k, v in unknown["ood_separation"].items()])
    formats = [k for k, v in export.items() if isinstance(v, dict) and "agreement" in v]
    common.table("Exported files on the test split", ["file", "exact match", "micro-F1", "agreement on sets",
                                                      "on (image, label)", "agreement on unknown", "MB"],
                 [[k, export[k]["exact_match"], export[k]["micro_f1"], export[k]["agreement"],
                   export[k]["label_agreement"], export[k]["unknown_agreement"], export[k]["size_mb"]] for k in formats])
    result = {"seconds": round(seconds, 1), "test_images": metrics["test_images"],
              "finetune": metrics["finetune"], "calibration": {k: calibration[k] for k in (
                  "temperature", "shift", "label_thresholds", "test_before", "test_after", "unknown", "answers")},
              "export": {k: {m: export[k][m] for m in ("exact_match", "micro_f1", "agreement", "label_agreement", "unknown_agreement",
                                                       "size_mb")} for k in formats},
              "not_checked": export.get("not_checked", {})}
    print(f"\nwhole pipeline: {seconds:.0f} s")
    common.save("multilabel_deploy", result)


if __name__ == "__main__":
    main()
