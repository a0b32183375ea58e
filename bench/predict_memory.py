"""`predict --csv` on big folders: does memory stay flat as the folder grows? (docs/performance.md#predictions-as-a-table)

    python bench/predict_memory.py [--sizes 2000 20000] [--model models/export/model.keras]

Writes N small JPEG files (64 px, random colour blocks: decoding is not what is measured) into
a scratch folder, runs `python -m pipeline predict MODEL FOLDER --csv OUT` on it, and records
wall time, images per second and peak RSS (GNU time's maximum resident set size). The model
is the default project's exported one: `make repro` first.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
from bench.common import ROOT, save, table  # noqa: E402
from bench.scale import timed  # noqa: E402
from pipeline.lib import schemas  # noqa: E402


def write_images(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(blocks).resize((64, 64), Image.Resampling.NEAREST).save(sub / f"{i:06d}.jpg", quality=85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--model", type=Path, default=ROOT / "models/export/model.keras")
    args = parser.parse_args()
    if not args.model.exists():
        sys.exit(f"{args.model} does not exist: run `make repro` first")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    results = []
    with tempfile.TemporaryDirectory(prefix="predict-memory-") as tmp:
        for n in args.sizes:
            folder = Path(tmp) / f"images-{n}"
            write_images(folder, n)
            out = Path(tmp) / f"predictions-{n}.csv"
            seconds, peak, _ = timed([sys.executable, "-m", "pipeline", "predict", str(args.model), str(folder),
                                      "--csv", str(out)], ROOT, env)
            rows = len(schemas.read_csv(out))
            assert rows == n, f"{out}: {rows} rows for {n} images"
            results.append({"images": n, "seconds": round(seconds, 1), "images_per_s": round(n / seconds, 1),
                            "peak_rss_mb": round(peak, 1), "csv_rows": rows})
            print(f"{n:>7,} images: {seconds:7.1f} s, {n / seconds:6.1f} images/s, peak RSS {peak:7.1f} MB", flush=True)
    table("predict --csv", ["images", "seconds", "images/s", "peak RSS (MB)"],
          [[r["images"], r["seconds"], r["images_per_s"], r["peak_rss_mb"]] for r in results])
    save("predict_memory", {"command": "python bench/predict_memory.py " + " ".join(sys.argv[1:]),
                            "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
                            "runs": results})


if __name__ == "__main__":
    main()
