"""What the int8 TFLite file's calibration sample changes (docs/export.md#when-int8-disagrees)

    python bench/int8_calibration.py [--sizes 50 200 1000] [--seeds 0 1 2]   # after `make repro`

The export stage calibrates model_int8.tflite on the first ``export.representative_images``
images of a seeded shuffle of the training shards. This converts the committed
models/export/saved_model to int8 again for each sample size and seed, once with that plain
sample and once stratified (the same number of images, as equal a share per class as the
shuffle gives), and reports each file's agreement with the exported Keras model (share of
identical top-1 predictions) and accuracy on the validation and test splits.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
from bench.common import ROOT, save, table  # noqa: E402


def sample(augmented: Path, size: int, seed: int, stratified: bool, classes: int) -> list[np.ndarray]:
    from pipeline.lib import shards

    quota = -(-size // classes)  # per class, rounded up; the total is cut to ``size``
    taken, per_class = [], collections.Counter()
    with shards.reading(augmented):
        for image, label in shards.dataset(augmented, "train", 1, shuffle_seed=seed):
            k = int(label.numpy()[0])
            if stratified and per_class[k] >= quota:
                continue
            per_class[k] += 1
            taken.append(image.numpy())
            if len(taken) == size:
                break
    return taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    from pipeline.lib import formats, inference, params, sources

    export = ROOT / "models" / "export"
    if not (export / "saved_model" / "saved_model.pb").exists():
        sys.exit(f"{export} has no saved_model: run `make repro` first")
    p = params.load(["ingest", "export"], ROOT / "params.yaml")
    source = sources.locate(str(ROOT / "data" / "images"), p.ingest)
    keras_model = inference.load(export / "model.keras")
    size = int(keras_model.model.input_shape[1])
    parts = {}
    for part in ("val", "test"):
        _, pixels, y, labels = inference.load_split(source, ROOT / "data" / "split", size, part)
        parts[part] = (pixels, y, keras_model.predict(pixels).argmax(axis=1))

    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            for stratified in (False, True):
                for seed in args.seeds:
                    images = sample(ROOT / "data" / "augmented", n, seed, stratified, len(labels))
                    path = Path(tmp) / f"int8_{n}_{seed}_{stratified}.tflite"
                    started = time.perf_counter()
                    formats.tflite(export / "saved_model", path, "int8", lambda: ([i] for i in images))
                    seconds = time.perf_counter() - started
                    classifier = inference.TFLiteClassifier(path)
                    scores = {}
                    for part, (pixels, y, reference) in parts.items():
                        pred = classifier.predict(pixels).argmax(axis=1)
                        scores[f"{part}_agreement"] = float(np.mean(pred == reference))
                        scores[f"{part}_accuracy"] = float(np.mean(pred == y))
                    results.append({"images": n, "stratified": stratified, "seed": seed,
                                    "convert_s": round(seconds, 1), **scores})
                    print(results[-1], flush=True)
                    rows.append([n, "stratified" if stratified else "plain", seed,
                                 f"{scores['val_agreement']:.3f}", f"{scores['test_agreement']:.3f}",
                                 f"{scores['test_accuracy']:.3f}", f"{seconds:.0f}"])
    reference = {part: float(np.mean(ref == y)) for part, (_, y, ref) in parts.items()}
    table("int8 agreement with the Keras model, by calibration sample",
          ["images", "sample", "seed", "val agreement", "test agreement", "test accuracy", "convert s"], rows)
    print(f"Keras accuracy: val {reference['val']:.3f}, test {reference['test']:.3f}")
    save("int8_calibration", {"command": "python bench/int8_calibration.py " + " ".join(sys.argv[1:]),
                              "keras_accuracy": reference, "default_images": p.export.representative_images,
                              "runs": results})


if __name__ == "__main__":
    main()
