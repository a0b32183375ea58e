"""What to label next: ``python -m pipeline rank MODEL IMAGES... --out FILE``.

Ranks unlabelled images by how unsure the model is of them, the least sure first,
and writes a CSV a labelling tool can import: rank, file, best label, its
probability, uncertainty. MODEL is a ``.keras`` model of this pipeline
(models/export/model.keras, or models/model.keras with models/calibration.json
beside it): the probabilities are calibrated as ``pipeline.predict`` calibrates
them, and the images' features (the backbone's, of each image and its mirror, as
the embed stage computes them) keep near duplicates out: an image whose cosine
similarity with one ranked above it reaches ``--similarity`` (default: the project's
``audit.duplicate_similarity`` in params.yaml, the audit's notion of a near duplicate) is left out, so the top
of the list is diverse (confidence.rank). ``--by margin`` (default) ranks by 1 minus
the gap between the two most probable classes, ``--by entropy`` by the entropy of
the probabilities. A task: multi_label model (its calibration.json has a threshold
per label) ranks each label as a yes/no question: ``margin`` by how near the least
sure label is to its threshold, ``entropy`` by the sum of the labels' binary
entropies; ``label`` is then the predicted set (joined by ``|``) and ``probability``
that least sure label's. IMAGES are files, folders or glob patterns, as for predict.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.lib import artifacts, inputs, multilabel, params, schemas
from pipeline.lib.errors import StageError, describe

FIELDS = ["rank", "file", "label", "probability", "uncertainty"]
CSV = artifacts.starts_with("a CSV that rank wrote", ",".join(FIELDS).encode() + b"\r\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline rank", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a .keras model of this pipeline")
    parser.add_argument("images", nargs="+", help="image files, folders or glob patterns: the unlabelled pool")
    parser.add_argument("--out", type=Path, required=True, help="the CSV to write")
    parser.add_argument("--by", choices=("margin", "entropy"), default="margin")
    parser.add_argument("--similarity", type=float,
                        help="cosine similarity of near duplicates, left out below the first "
                             "(default: audit.duplicate_similarity in ./params.yaml)")
    parser.add_argument("--top", type=int, help="write only the first N images")
    parser.add_argument("--labels", type=Path, help="class names file (default: labels.txt beside MODEL)")
    parser.add_argument("--calibration", type=Path,
                        help="temperature (default: calibration.json beside MODEL, if any)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    if args.model.suffix != ".keras" or not args.model.is_file():
        parser.error(f"{args.model}: not a .keras file (rank needs the model's features as well as its probabilities)")
    if args.similarity is None:
        try:
            args.similarity = params.load(["audit.duplicate_similarity"]).audit.duplicate_similarity
        except (params.ParamsError, OSError) as err:
            parser.error(f"--similarity not given, and {describe(err)}")
    if not 0 < args.similarity <= 1 or (args.top is not None and args.top < 1) or args.batch_size < 1:
        parser.error("--similarity must be in (0, 1], --top and --batch-size at least 1")
    try:  # before any work: nothing written may replace what rank did not write
        artifacts.check_output(args.out, folder=False, kind=CSV, reads=[args.model], flag="--out")
    except StageError as err:
        parser.error(str(err))
    files, unmatched = inputs.expand(args.images, "rank")
    for pattern in unmatched:
        print(f"rank: {pattern}: no such file, folder or matching pattern", file=sys.stderr)
    if not files:
        parser.error("no image files to rank")

    import numpy as np
    import tensorflow as tf
    from tqdm import tqdm

    from pipeline.lib import confidence, inference, keras_files, models

    labels = schemas.read_labels(inputs.find_labels(args.model, args.labels, inference.LABELS_FILE, "rank"))
    calibration = inputs.read_calibration(args.model, args.calibration, None, parser.error)
    cut = calibration.pop("label_thresholds")  # a task: multi_label model's, one per label
    try:
        model = keras_files.load(args.model)
        if calibration.pop("build", None):  # models/model.keras: calibrated as the export stage ships it
            model = models.deployable(model, calibration.pop("found"))
        extractor = model.get_layer(models.EXTRACTOR)
    except (StageError, ValueError) as err:
        parser.error(f"{args.model}: {describe(err)} (rank needs a model built by this pipeline)")
    size = int(model.input_shape[1])
    both = tf.function(lambda x: (models.outputs(model(x, training=False))[0], models.embedding(extractor, x)))
    kept, probs, features, bad = [], [], [], inputs.Unreadable("rank")
    with tqdm(total=len(files), desc="rank", unit="img", file=sys.stderr) as bar:
        for start in range(0, len(files), inputs.CHUNK):
            chunk = files[start:start + inputs.CHUNK]
            pixels, ok, errors = inference.load_images(chunk, size)
            for i, error in errors.items():
                bad.add(chunk[i], error, "; left out")
            for b in range(0, len(pixels), args.batch_size):
                p, f = both(tf.constant(pixels[b:b + args.batch_size], tf.float32))
                probs.append(p.numpy())
                features.append(f.numpy())
            kept += [chunk[i] for i in ok]
            bar.update(len(chunk))
    bad.summary(len(files))
    if not kept:
        parser.error("no readable image to rank")
    probs = inputs.calibrate(np.concatenate(probs), calibration)
    cut = None if cut is None else np.asarray(cut)
    order, uncertainty = confidence.rank(probs, np.concatenate(features), args.similarity, args.by, args.top, cut)

    def answer(p):  # {label, probability}: the top class, or the label set and its least sure label's probability
        if cut is None:
            return {"label": labels[int(p.argmax())], "probability": f"{p.max():.6f}"}
        nearest = int(confidence.threshold_distance(p[None], cut)[0].argmin())
        return {"label": multilabel.encode(np.asarray(labels)[p >= cut]), "probability": f"{p[nearest]:.6f}"}

    rows = ({"rank": r, "file": str(kept[i]), **answer(probs[i]), "uncertainty": f"{u:.6f}"}
            for r, (i, u) in enumerate(zip(order, uncertainty), 1))
    with artifacts.atomic_file(args.out, CSV) as tmp:
        schemas.write_csv(tmp, rows, FIELDS)
    left_out = len(kept) - len(order) if args.top is None else None
    print(f"rank: {len(order)} images ranked by {args.by} into {args.out}"
          + (f"; {left_out} near duplicate{'s' * (left_out > 1)} of images ranked above left out" if left_out else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
