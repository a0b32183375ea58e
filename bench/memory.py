"""Benchmark 6: peak memory of extract-features at 1x and 4x the images.

The stage streams shards through the backbone and writes features into
memory-mapped files, so its peak RSS should barely grow with the dataset.
1x is the default params (one augmented copy per training image); 4x adds
augmented copies until the stage sees about four times as many images.
Target: growth under 10%.   python bench/memory.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import BIN, environment, make_project, rates, require_assets, run, save, table


def peak_rss_mb(cmd: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    """Run ``cmd``; return its peak resident memory (MiB, from the kernel's rusage) and output."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{' '.join(cmd)} failed:\n{output[-3000:]}")
    return usage.ru_maxrss / 1024, output


def main() -> None:
    require_assets()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        tmp = Path(tmp)
        env = environment(tmp)
        project = make_project(tmp / "project", env)
        dvc = str(BIN / "dvc")
        for label, copies in (("1x", 1), ("4x", 8)):
            print(f"{label}: augment.copies={copies} ...", flush=True)
            run([dvc, "exp", "run", "augment", "-S", f"augment.copies={copies}"], project, env)
            mb, log = peak_rss_mb([sys.executable, "-m", "pipeline", "extract_features", "--augmented",
                                   "data/augmented", "--embeddings", "data/embeddings", "--out", str(tmp / f"features-{label}"),
                                   "--extractor", str(tmp / f"extractor-{label}.keras")], project, env)
            images = int(log.split("extracted ")[1].split(" images")[0])
            results.append({"label": label, "augment_copies": copies, "images": images, "peak_rss_mb": mb,
                            "images_per_s": rates(log, "extracted")[0]})
    base, big = results
    growth = big["peak_rss_mb"] / base["peak_rss_mb"] - 1
    table("6. Peak RSS of extract-features (target: growth < 10%)", ["run", "images", "peak RSS (MiB)", "images/s"],
          [[r["label"], r["images"], r["peak_rss_mb"], r["images_per_s"]] for r in results]
          + [["growth", f"{big['images'] / base['images']:.2f}x images", f"{growth:+.1%}", ""]])
    save("memory", {"runs": results, "growth": growth, "target": 0.10})


if __name__ == "__main__":
    main()
