"""Peak memory of ingest, augment and predict on a few small files that decode large (docs/data.md#large-canvases)

    python bench/large_canvas.py [--side 6300] [--code DIR]

Writes 2 classes x 2 PNGs of SIDE x SIDE 16-bit grey pixels (a smooth gradient: a few hundred KB
each, 2 bytes a pixel once decoded) and, beside them, the same layout of 160 px PNGs, then runs
the real ingest and augment stages (augment on a split of every image, written here) and
`predict` (on a one-layer model of the project's input size) on each folder under GNU time,
recording peak RSS. The small folder gives each command's own footprint (Python, TensorFlow), so
the difference is what the large canvases cost. ``--code DIR`` measures another checkout of the
pipeline (e.g. a `git worktree` of an older commit) for a before/after comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
from bench.common import ROOT, save, table  # noqa: E402
from bench.scale import timed  # noqa: E402


def write_source(folder: Path, side: int) -> None:
    grey = np.tile(np.linspace(0, 65535, side, dtype=np.uint16), (side, 1))
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.roll(grey, 97 * i + (label == "b") * 1000, axis=1)).save(folder / label / f"{i}.png")


def tiny_model(folder: Path, size: int) -> Path:
    import keras

    model = keras.Sequential([keras.Input((size, size, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax")])
    model.save(folder / "model.keras")
    (folder / "labels.txt").write_text("a\nb\n")
    return folder / "model.keras"


def measure(code: Path, work: Path, source: Path, model: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(code), "TF_CPP_MIN_LOG_LEVEL": "2"}
    project = work / "project"
    project.mkdir()
    shutil.copy(code / "params.yaml", project / "params.yaml")
    py = [sys.executable, "-m", "pipeline"]
    peaks = {}
    _, peaks["ingest"], out = timed([*py, "ingest", "--source", str(source), "--manifest", "manifest.csv",
                                     "--report", "ingest.json"], project, env)
    assert (project / "manifest.csv").exists(), out[-2000:]
    split = project / "split"
    split.mkdir()
    for name in ("train", "val"):
        shutil.copy(project / "manifest.csv", split / f"{name}.csv")
    (split / "labels.json").write_text(json.dumps(["a", "b"]))
    _, peaks["augment"], out = timed([*py, "augment", "--source", str(source), "--split", "split", "--out", "augmented"],
                                     project, env)
    assert (project / "augmented" / "meta.json").exists(), out[-2000:]
    _, peaks["predict"], out = timed([*py, "predict", str(model), str(source), "--json"], project, env)
    assert '"predictions"' in out, out[-2000:]
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=6300)
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose pipeline is measured")
    args = parser.parse_args()
    import yaml

    size = yaml.safe_load((args.code / "params.yaml").read_text())["base"]["image_size"]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="large-canvas-") as tmp:
        model = tiny_model(Path(tmp), size)
        for name, side in (("small", size), ("large", args.side)):
            work = Path(tmp) / name
            write_source(work / "images", side)
            rows[name] = measure(args.code.resolve(), work, work / "images", model)
            print(name, side, rows[name], flush=True)
    stages = list(rows["small"])
    table(f"peak RSS (MB), 4 PNGs of {args.side} x {args.side} 16-bit pixels vs 4 of {size} px",
          ["command", f"{size} px", f"{args.side} px", "difference"],
          [[s, round(rows["small"][s]), round(rows["large"][s]), round(rows["large"][s] - rows["small"][s])]
           for s in stages])
    save("large_canvas", {"command": "python bench/large_canvas.py " + " ".join(sys.argv[1:]),
                          "side": args.side, "image_size": size, "peak_rss_mb": rows})


if __name__ == "__main__":
    main()
