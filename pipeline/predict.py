"""Classify images with a trained model: ``python -m pipeline predict MODEL IMAGES...``.

MODEL is a ``.keras``, ``.tflite`` or ``.onnx`` file or a SavedModel folder (e.g.
from models/export/). IMAGES are files, folders (searched recursively for image
files) or glob patterns. Each image is decoded and resized exactly as in
training and evaluation (``images.load_image``); the model does its backbone's
preprocessing itself. Prints the top-k labels with probabilities as a table,
or as JSON with ``--json``; ``--csv FILE`` streams one row per image into FILE
instead (bounded memory, a progress bar), for a spreadsheet or a labelling tool.
A task: multi_label model's calibration.json carries a threshold per label: every
label at or above its threshold is listed first (``labels`` in JSON and CSV, joined
by ``|`` in the table and CSV; ``(none)`` where no label reaches its threshold).

Where ``calibration.json`` is beside the model (the export folder has one; the
calibrate stage writes models/calibration.json beside models/model.keras), the
probabilities are calibrated and an image whose ``known`` score (the exported files'
second output; for models/model.keras, built from it in memory as the export stage
builds it) is below the unknown threshold is called ``unknown``, the best label still
shown beside it (``--unknown-threshold`` overrides the threshold; 0 turns it off).
Exports from before ``known`` apply the threshold to the top probability. ``--tta`` averages each image's probabilities with its
mirror's (test-time augmentation); ``--explain DIR`` writes each image with its
Grad-CAM heat map for the top class to DIR (a ``.keras`` model only). An unreadable
file is skipped (the first few named on stderr, the rest counted; every one in the CSV
or JSON); the exit status is 1 only if no image could be classified. No output lands
on what predict did not write (``artifacts.check_output``): --csv refuses a folder, the
model, an input image or a file that is not its own CSV, before any work.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
from pathlib import Path

from pipeline.lib import artifacts, inputs, multilabel, schemas
from pipeline.lib.errors import StageError, describe

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help=".keras, .tflite or .onnx file, or SavedModel folder")
    parser.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("-k", "--top-k", type=int, default=3, help="labels shown per image (default 3)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON instead of a table")
    output.add_argument("--csv", type=Path, metavar="FILE",
                        help="write one row per image to FILE (file, top-k labels and probabilities, known, unknown)")
    parser.add_argument("--labels", type=Path, help="class names file (default: labels.txt beside MODEL)")
    parser.add_argument("--calibration", type=Path,
                        help="temperature and unknown threshold (default: calibration.json beside MODEL, if any)")
    parser.add_argument("--unknown-threshold", type=float, metavar="P",
                        help="call an image unknown below this known score (0: never), instead of the calibration's")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tta", action="store_true",
                        help="average each image's probabilities with its left-right mirror's")
    parser.add_argument("--explain", type=Path, metavar="DIR",
                        help="write each image with its Grad-CAM heat map (top class) to DIR (.keras models)")
    args = parser.parse_args(argv)
    if not args.model.exists():
        parser.error(f"model {args.model} does not exist")
    if args.top_k < 1 or args.batch_size < 1:
        parser.error("--top-k and --batch-size must be at least 1")
    if args.explain and args.model.suffix != ".keras":
        parser.error("--explain needs the .keras model (the exported formats carry no gradients)")
    folders = [Path(p) for p in args.images if Path(p).is_dir()]
    try:  # before any work: nothing written may replace what predict did not write
        if args.csv:
            artifacts.check_output(args.csv, folder=False, kind=CSV, reads=[args.model], flag="--csv")
        if args.explain:
            artifacts.check_output(args.explain, folder=True, replaces=False, reads=[args.model, *folders],
                                   flag="--explain")
    except StageError as err:
        parser.error(str(err))
    files, unmatched = inputs.expand(args.images)
    for pattern in unmatched:
        print(f"predict: {pattern}: no such file, folder or matching pattern", file=sys.stderr)
    if not files:
        parser.error("no image files to classify")

    from pipeline.lib import inference  # TensorFlow: imported only once the arguments are known good

    labels = schemas.read_labels(inputs.find_labels(args.model, args.labels, inference.LABELS_FILE))
    top_k = min(args.top_k, len(labels))
    calibration = inputs.read_calibration(args.model, args.calibration, args.unknown_threshold, parser.error)
    cut = calibration.pop("label_thresholds")  # a task: multi_label model's, one per label
    try:
        classifier = inference.load(args.model)
        if calibration.pop("build", None):  # models/model.keras: made what the export stage ships
            from pipeline.lib import models

            classifier = inference.KerasClassifier(models.deployable(classifier.model, calibration.pop("found")))
    except StageError as err:  # not one of the formats, or a damaged file of one
        parser.error(describe(err))
    if args.explain:
        from pipeline.lib import explain

        try:
            gradcam = explain.GradCam(classifier.model)
        except StageError as err:
            parser.error(describe(err))
        args.explain.mkdir(parents=True, exist_ok=True)
    results = [] if args.csv is None else None  # --csv streams: nothing is kept
    with Rows(args.csv, top_k, len(files), cut is not None) as rows:
        for start in range(0, len(files), inputs.CHUNK):
            chunk = files[start:start + inputs.CHUNK]
            pixels, ok, errors = inference.load_images(chunk, classifier.image_size)
            probs, known = classifier.classify(pixels, args.batch_size, tta=args.tta)
            probs = inputs.calibrate(probs, calibration)
            if calibration["score"] == "known" and known is None and len(pixels):
                raise SystemExit(f"predict: {args.model} has no known output, but its calibration.json names it: "
                                 "use the files of one export folder together")
            if args.explain and len(pixels):
                write_explanations(gradcam, pixels, probs.argmax(axis=1), [chunk[i] for i in ok], labels, args.explain)
            if probs.size and probs.shape[1] != len(labels):
                raise SystemExit(f"predict: the model has {probs.shape[1]} outputs but {len(labels)} labels were given")
            found = dict(zip(ok, probs))
            if cut is not None and probs.size and len(cut) != probs.shape[1]:
                raise SystemExit(f"predict: the calibration has {len(cut)} label thresholds for {probs.shape[1]} outputs")
            sure = dict(zip(ok, probs.max(axis=1, initial=0) if known is None else known))
            for i, path in enumerate(chunk):
                if i in errors:
                    result = {"path": str(path), "error": errors[i]}
                else:
                    top = found[i].argsort()[::-1][:top_k]
                    result = {"path": str(path), "predictions": [
                        {"label": labels[j], "probability": round(float(found[i][j]), 6)} for j in top]}
                    if cut is not None:  # every label at or above its own threshold, surest first
                        result["labels"] = [labels[j] for j in found[i].argsort()[::-1] if found[i][j] >= cut[j]]
                    if calibration["score"] == "known":
                        result["known"] = round(float(sure[i]), 6)
                    if calibration["unknown_threshold"] is not None:
                        result["unknown"] = bool(sure[i] < calibration["unknown_threshold"])
                rows.add(result)
                if results is not None:
                    results.append(result)
    if results is not None and (args.json or rows.classified):
        print(json.dumps(results, indent=2) if args.json else table(results))
    rows.bad.summary(len(files), f"in {args.csv}" if args.csv else "in the JSON" if args.json else None)
    return 0 if rows.classified else 1


UNKNOWN = "unknown"
CSV = artifacts.starts_with("a CSV that predict wrote", b"file,label_1,probability_1,")


class Rows:
    """Counts the images classified; with a CSV path, streams each result into it as a row
    (written to a temporary file, renamed over FILE at the end) behind a progress bar. The
    unreadable inputs go to ``bad`` (``inputs.Unreadable``: the first few named, the rest counted)."""

    def __init__(self, path: Path | None, top_k: int, total: int, label_sets: bool = False):
        self.path, self.total, self.top_k, self.classified, self.unknown = path, total, top_k, 0, 0
        self.label_sets = label_sets  # a multi-label model: a column of the labels present
        self.bad = inputs.Unreadable("predict")

    def __enter__(self):
        self._open = contextlib.ExitStack()
        if self.path:
            from tqdm import tqdm

            fields = ["file", *[f"{kind}_{i}" for i in range(1, self.top_k + 1) for kind in ("label", "probability")],
                      *["labels"] * self.label_sets, "known", "unknown", "error"]
            tmp = self._open.enter_context(artifacts.atomic_file(self.path, CSV))
            self._writer = csv.DictWriter(self._open.enter_context(open(tmp, "w", newline="", encoding="utf-8")),
                                          fields)
            self._writer.writeheader()
            self._bar = self._open.enter_context(tqdm(total=self.total, desc="predict", unit="img",
                                                            file=sys.stderr))
        return self

    def add(self, result: dict) -> None:
        self.classified += "predictions" in result
        self.unknown += bool(result.get("unknown"))
        if "error" in result:
            self.bad.add(result["path"], result["error"])
        if self.path:
            row = {"file": result["path"], "error": result.get("error", ""), "known": result.get("known", ""),
                   "unknown": "" if "unknown" not in result else str(result["unknown"]).lower()}
            if self.label_sets:
                row["labels"] = multilabel.encode(result.get("labels", []))
            for i, p in enumerate(result.get("predictions", []), 1):
                row[f"label_{i}"], row[f"probability_{i}"] = p["label"], f"{p['probability']:.6f}"
            self._writer.writerow(row)
            self._bar.update()

    def __exit__(self, *exc):
        self._open.__exit__(*exc)  # the bar and the file closed, then the file renamed into place
        if self.path and exc[0] is None:
            print(f"predict: {self.classified} images classified ({self.unknown} unknown, {self.bad.count} "
                  f"unreadable) into {self.path}", file=sys.stderr)
        return False


def write_explanations(gradcam, pixels, classes, paths: list[Path], labels: list[str], folder: Path) -> None:
    """``folder/<name>.gradcam.png`` per image: the image, upright at up to 400 px, under its heat map."""
    from pipeline.lib import explain, images

    heat, _ = gradcam(pixels, classes)
    for path, h, c in zip(paths, heat, classes):
        out = folder / f"{path.name}.gradcam.png"
        with artifacts.atomic_file(out, artifacts.PNG) as tmp:  # replaces only a PNG
            images.save_png(explain.overlay(images.thumbnail(path, 400), h), tmp)
        print(f"predict: {path}: heat map for {labels[c]} in {out}", file=sys.stderr)


def table(results: list[dict]) -> str:
    """One line per classified image: the path, then each of the top-k labels with its probability,
    aligned. Unreadable ones are left out: stderr names them (``inputs.Unreadable``)."""
    results = [r for r in results if "predictions" in r]
    width = max((len(r["path"]) for r in results), default=0)
    label_width = max((len(p["label"]) for r in results for p in r["predictions"]), default=0)
    sets_width = max([len("(none)"), *(len(multilabel.encode(r.get("labels", []))) for r in results)])
    lines = []
    for r in results:
        cells = [f"{p['label']:<{label_width}} {p['probability']:7.2%}" for p in r["predictions"]]
        if any("labels" in r for r in results):  # a multi-label model: the label set, then the top k
            cells.insert(0, f"{multilabel.encode(r['labels']) or '(none)':<{sets_width}}")
        if any("unknown" in r for r in results):  # a calibrated model: the verdict first
            cells.insert(0, f"{UNKNOWN if r.get('unknown') else '':<{len(UNKNOWN)}}")
        lines.append(f"{r['path']:<{width}}  " + "   ".join(cells))
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> int:
    """``main``, with a known error (a damaged labels or model file) as one line and exit 1."""
    try:
        return main(argv)
    except StageError as err:
        print(f"predict: {describe(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # --csv FILE is written atomically: nothing half-written is left
        print("predict: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(run())
