"""Classify images with a trained model: ``python -m pipeline predict MODEL IMAGES...``.

MODEL is a ``.keras``, ``.tflite`` or ``.onnx`` file or a SavedModel folder (e.g.
from models/export/). IMAGES are files, folders (searched recursively for image
files) or glob patterns. Each image is decoded and resized exactly as in
training and evaluation (``images.load_image``); the model does its backbone's
preprocessing itself. Prints the top-k labels with probabilities as a table,
or as JSON with ``--json``. ``--tta`` averages each image's probabilities with its
mirror's (test-time augmentation); ``--explain DIR`` writes each image with its
Grad-CAM heat map for the top class to DIR (a ``.keras`` model only). An unreadable
file is reported and skipped; the exit status is 1 only if no image could be
classified.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from PIL import Image

from pipeline.lib import artifacts
from pipeline.lib.artifacts import StageError

CHUNK = 256  # images decoded at a time: bounds memory for big folders


def expand(patterns: list[str]) -> tuple[list[Path], list[str]]:
    """(files to classify, patterns that matched nothing). Folders give their image files, sorted."""
    extensions = {ext for ext in Image.registered_extensions()}
    files, unmatched = [], []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            files += sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in extensions
                            and not any(part.startswith(".") for part in f.relative_to(path).parts))
        elif path.exists():
            files.append(path)
        elif glob.has_magic(pattern) and (matches := sorted(glob.glob(pattern, recursive=True))):
            files += [Path(m) for m in matches if Path(m).is_file()]
        else:
            unmatched.append(pattern)
    return files, unmatched


def find_labels(model: Path, given: Path | None, name: str) -> Path:
    """``--labels``, else ``name`` beside the model file or inside the SavedModel folder."""
    candidates = [given] if given else [model.parent / name, model / name]
    for path in candidates:
        if path.is_file():
            return path
    raise SystemExit(f"predict: no {name} beside {model} (the export folder has one); "
                     "pass --labels FILE (a labels.txt, or the split stage's labels.json)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help=".keras, .tflite or .onnx file, or SavedModel folder")
    parser.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("-k", "--top-k", type=int, default=3, help="labels shown per image (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--labels", type=Path, help="class names file (default: labels.txt beside MODEL)")
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
    files, unmatched = expand(args.images)
    for pattern in unmatched:
        print(f"predict: {pattern}: no such file, folder or matching pattern", file=sys.stderr)
    if not files:
        parser.error("no image files to classify")

    from pipeline.lib import inference  # TensorFlow: imported only once the arguments are known good

    labels = inference.read_labels(find_labels(args.model, args.labels, inference.LABELS_FILE))
    try:
        classifier = inference.load(args.model)
    except (ValueError, StageError) as err:  # StageError: a .keras file that does not load
        parser.error(artifacts.describe(err))
    if args.explain:
        from pipeline.lib import explain

        try:
            gradcam = explain.GradCam(classifier.model)
        except StageError as err:
            parser.error(artifacts.describe(err))
        args.explain.mkdir(parents=True, exist_ok=True)
    results = []
    for start in range(0, len(files), CHUNK):
        chunk = files[start:start + CHUNK]
        pixels, ok, errors = inference.load_images(chunk, classifier.image_size)
        probs = classifier.predict(pixels, args.batch_size, tta=args.tta)
        if args.explain and len(pixels):
            write_explanations(gradcam, pixels, probs.argmax(axis=1), [chunk[i] for i in ok], labels, args.explain)
        if probs.size and probs.shape[1] != len(labels):
            raise SystemExit(f"predict: the model has {probs.shape[1]} outputs but {len(labels)} labels were given")
        found = dict(zip(ok, probs))
        for i, path in enumerate(chunk):
            if i in errors:
                print(f"predict: {path}: not a readable image ({errors[i]})", file=sys.stderr)
                results.append({"path": str(path), "error": errors[i]})
                continue
            top = found[i].argsort()[::-1][:args.top_k]
            results.append({"path": str(path), "predictions": [
                {"label": labels[j], "probability": round(float(found[i][j]), 6)} for j in top]})
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0 if any("predictions" in r for r in results) else 1


def write_explanations(gradcam, pixels, classes, paths: list[Path], labels: list[str], folder: Path) -> None:
    """``folder/<name>.gradcam.png`` per image: the image, upright at up to 400 px, under its heat map."""
    from pipeline.lib import explain, images

    heat, _ = gradcam(pixels, classes)
    for path, h, c in zip(paths, heat, classes):
        out = folder / f"{path.name}.gradcam.png"
        images.save_png(explain.overlay(images.thumbnail(path, 400), h), out)
        print(f"predict: {path}: heat map for {labels[c]} in {out}", file=sys.stderr)


def table(results: list[dict]) -> str:
    """One line per image: the path, then each of the top-k labels with its probability, aligned."""
    width = max(len(r["path"]) for r in results)
    label_width = max((len(p["label"]) for r in results for p in r.get("predictions", [])), default=0)
    lines = []
    for r in results:
        cells = ["(unreadable)"] if "error" in r else [
            f"{p['label']:<{label_width}} {p['probability']:7.2%}" for p in r["predictions"]]
        lines.append(f"{r['path']:<{width}}  " + "   ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
