"""7-9. The pipeline at 10k and 100k images: per-stage cost, memory, disk, DVC's own costs, cores.

A seeded synthetic dataset (JPEG photos-to-be of varied content: a noisy gradient
background and one class-coloured shape, flat class folders) is generated in a
scratch project, tracked with `dvc add`, and run stage by stage with
`dvc repro -s`, each under GNU time for its peak RSS. Then, for the whole run:
disk of the pipeline's outputs and of DVC's cache against the source's, the
files DVC tracks, no-op `dvc status` / `dvc repro` (median of 3); then the team's loop:
1% more images added and every stage run again (embed, augment and extract_features
compute only the new images; timed against their runs from scratch), and `dvc push` to
a local remote. With --cores, ingest and augment are also run by hand on the
first size under `taskset -c 0` (one core) and on every core, for images/s.

    python bench/scale.py --cores               # 10,000 and 100,000 images, 100 classes
    python bench/scale.py --images 2000 --classes 10 --cores
    python bench/scale.py --images 100000 --source-only --name scale-source
    python bench/scale.py --stages ingest embed split augment extract_features train_head  # the per-image path

--stages runs those stages alone (the others are never run; no-op status and repro name them as
targets): at 100,000 images the audit, training and export stages take most of an hour here.

--source-only runs no pipeline: it measures what the source alone costs DVC, as a folder
of files and as one tar archive (dvc add, no-op dvc status, dvc push).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, make_project, median, rates, run, save, table  # noqa: E402

STAGES = ["ingest", "embed", "split", "audit", "augment", "extract_features", "train_head", "finetune", "evaluate",
          "calibrate", "export", "summary"]
PER_IMAGE = ["embed", "augment", "extract_features"]  # the stages that reuse per-image work (pipeline/lib/reuse.py)
ADDED = 0.01  # the share of images added for the incremental run
# Small enough for a 2-core machine at 100k images, the recipe unchanged: real ImageNet weights,
# features cached once, head, then one epoch of fine-tuning.
# The synthetic images all look alike to the backbone: near-duplicate grouping would chain them into
# one group, and split would warn and group nothing. It stays off here.
PARAMS = {"base": {"image_size": 96}, "augment": {"copies": 0}, "train_head": {"epochs": 5},
          "finetune": {"epochs": 1}, "evaluate": {"tta": "none"}, "export": {"representative_images": 100},
          "split": {"group_near_duplicates": False}}
SIDE = 224  # source images: about 10-20 KB each, like a downscaled photo collection


def draw(args: tuple[Path, int, int, int]) -> int:
    """Write image ``index`` of class ``label`` (seeded by both); return its size in bytes."""
    path, label, index, seed = args
    rng = np.random.default_rng([seed, label, index])
    base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.float32)
    ramp = np.linspace(0, 1, SIDE, dtype=np.float32)[:, None, None] * rng.uniform(-80, 80, 3)
    pixels = np.clip(base * 0.4 + ramp + rng.normal(0, 25, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(pixels)
    d = ImageDraw.Draw(im)
    (x, y), r = rng.uniform(40, SIDE - 40, 2), rng.uniform(20, 60)
    colour = tuple(int(c) for c in np.clip(255 - base + rng.normal(0, 20, 3), 0, 255))
    box = [x - r, y - r, x + r, y + r]
    kind = label % 4
    if kind == 0:
        d.ellipse(box, fill=colour)
    elif kind == 1:
        d.rectangle(box, fill=colour)
    elif kind == 2:
        d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
    else:
        d.line([(x - r, y - r), (x + r, y + r)], fill=colour, width=int(r / 3))
    im.save(path, quality=85)
    return path.stat().st_size


def generate(folder: Path, images: int, classes: int, seed: int, first: int = 0) -> int:
    """``images`` JPEGs in ``classes`` class folders under ``folder``, numbered from ``first``;
    returns total bytes."""
    jobs = []
    for i in range(first, first + images):
        label = i % classes
        (folder / f"c{label:03d}").mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"c{label:03d}" / f"{i:07d}.jpg", label, i, seed))
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count()) as pool:
        return sum(pool.map(draw, jobs, chunksize=256))


def project(path: Path, env: dict, images: int, classes: int, seed: int) -> dict:
    made, timings = {}, {}

    def fill(folder: Path) -> None:
        start = time.perf_counter()
        made["bytes"] = generate(folder, images, classes, seed)
        made["seconds"] = time.perf_counter() - start

    make_project(path, env, fill=fill, timings=timings, **PARAMS)
    return {"source_mb": made["bytes"] / 1e6, "generate_s": made["seconds"], "dvc_add_s": timings["dvc add"]}


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB of the command and its children, output)."""
    seconds, out = run(["/usr/bin/time", "-f", "PEAK_KB %M", *cmd], cwd, env)
    peak_kb = int(out.rsplit("PEAK_KB", 1)[1].split()[0])
    return seconds, peak_kb / 1024, out


def du_mb(*paths: Path) -> float:
    """Disk used by ``paths`` together (a file hard-linked twice counts once), in MB."""
    existing = [str(p) for p in paths if p.exists()]
    out = subprocess.run(["du", "-scb", *existing], capture_output=True, text=True, check=True).stdout
    return int(out.splitlines()[-1].split()[0]) / 1e6


def files(path: Path) -> int:
    return sum(1 for f in path.rglob("*") if f.is_file())


def measure(size: int, classes: int, seed: int, tmp: Path, env: dict, stages: list[str]) -> tuple[dict, Path]:
    path = tmp / f"scale-{size}"
    print(f"\n== {size:,} images, {classes} classes: generating in {path}", flush=True)
    result = project(path, env, size, classes, seed)
    result.update(images=size, classes=classes, stages={})
    for stage in stages:
        seconds, peak, _ = timed(["dvc", "repro", "-s", stage], path, env)
        result["stages"][stage] = {"seconds": seconds, "peak_rss_mb": peak, "ms_per_image": 1000 * seconds / size}
        print(f"  {stage:16s} {seconds:8.1f} s  {1000 * seconds / size:7.2f} ms/image  peak {peak:6.0f} MB",
              flush=True)
    outputs = [path / "data" / n for n in ("manifest.csv", "embeddings", "split", "augmented", "features")]
    outputs += [path / "models", path / "reports"]
    cache = path / ".dvc" / "cache"
    result["disk_mb"] = {"source": du_mb(path / "data" / "images"), "outputs": du_mb(*outputs),
                         "cache": du_mb(cache), "outputs_and_cache": du_mb(*outputs, cache)}
    result["dvc_files"] = {"cache_objects": files(cache / "files"), "source_files": files(path / "data" / "images"),
                           "output_files": sum(files(p) if p.is_dir() else 1 for p in outputs if p.exists())}
    targets = [] if stages == STAGES else stages
    for name, cmd in (("status", ["dvc", "status", *targets]), ("repro", ["dvc", "repro", *targets])):
        result[f"noop_{name}_s"] = median([run(cmd, path, env)[0] for _ in range(3)])
    result["incremental"] = incremental(path, env, size, classes, seed, result["stages"], stages)
    run(["dvc", "remote", "add", "-d", "local", str(tmp / f"remote-{size}")], path, env)
    result["dvc_push_s"], _ = run(["dvc", "push", "-q"], path, env)
    print(json.dumps({k: v for k, v in result.items() if k != "stages"}, indent=1), flush=True)
    return result, path


def incremental(path: Path, env: dict, size: int, classes: int, seed: int, scratch: dict, stages: list[str]) -> dict:
    """The team's loop: ``ADDED`` more images (new ones, spread over the classes), `dvc add`, then
    every stage again with `dvc repro -s` (each stage reruns as its changed deps make it), timed
    against the same stage's run from scratch above."""
    run(["git", "add", "-A"], path, env)
    run(["git", "commit", "-qm", "first run"], path, env)
    added = max(1, int(size * ADDED))
    generate(path / "data" / "images", added, classes, seed, first=size)
    out = {"added": added, "dvc_add_s": run(["dvc", "add", "-q", "data/images"], path, env)[0], "stages": {}}
    print(f"  + {added} images: dvc add {out['dvc_add_s']:.1f} s", flush=True)
    for stage in stages:
        seconds, peak, _ = timed(["dvc", "repro", "-s", stage], path, env)
        out["stages"][stage] = {"seconds": seconds, "peak_rss_mb": peak,
                                "share_of_scratch": seconds / scratch[stage]["seconds"]}
        print(f"  {stage:16s} {seconds:8.1f} s  ({100 * seconds / scratch[stage]['seconds']:5.1f}% of scratch)",
              flush=True)
    per_image = [s for s in PER_IMAGE if s in stages]
    out["per_image_share"] = (sum(out["stages"][s]["seconds"] for s in per_image)
                              / sum(scratch[s]["seconds"] for s in per_image))
    print(f"  {' + '.join(PER_IMAGE)}: {100 * out['per_image_share']:.1f}% of scratch", flush=True)
    return out


def source_only(size: int, classes: int, seed: int, tmp: Path, env: dict) -> dict:
    """What the source alone costs DVC, as a folder of files and as one tar archive: `dvc add`,
    no-op `dvc status` (median of 3) and `dvc push` to a local remote, no pipeline."""
    out = {}
    folder = tmp / "source-images"
    generate(folder, size, classes, seed)
    for kind in ("folder", "tar archive"):
        repo = tmp / f"source-{kind.split()[0]}"
        (repo / "data").mkdir(parents=True)
        for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                    ["dvc", "remote", "add", "-d", "local", str(repo / "remote")]):
            run(cmd, repo, env)
        if kind == "folder":
            shutil.move(folder, repo / "data" / "images")
            target = "data/images"
        else:
            run(["tar", "cf", "data/images.tar", "-C", str(tmp / "source-folder" / "data"), "images"], repo, env)
            target = "data/images.tar"
        added, _ = run(["dvc", "add", "-q", target], repo, env)
        status = median([run(["dvc", "status"], repo, env)[0] for _ in range(3)])
        pushed, _ = run(["dvc", "push", "-q"], repo, env)
        out[kind] = {"dvc_add_s": added, "noop_status_s": status, "dvc_push_s": pushed}
        print(f"  source as a {kind}: dvc add {added:.1f} s, no-op status {status:.2f} s, push {pushed:.1f} s",
              flush=True)
    return out


def cores(path: Path, env: dict) -> dict:
    """ingest and augment by hand (outputs to a scratch folder) on one core and on every core: the
    images/s each logs for its own work (decode and hash; decode, augment, encode), start-up excluded."""
    scratch = path / ".cores"
    commands = {
        "ingest": ["python", "-m", "pipeline", "ingest", "--source", "data/images",
                   "--manifest", f"{scratch}/manifest.csv", "--report", f"{scratch}/ingest.json"],
        "augment": ["python", "-m", "pipeline", "augment", "--source", "data/images", "--split", "data/split",
                    "--out", f"{scratch}/augmented"],
    }
    logged = {"ingest": "decoded and hashed", "augment": "wrote"}
    out = {}
    for stage, cmd in commands.items():
        for label, prefix in (("one core", ["taskset", "-c", "0"]), ("all cores", [])):
            seconds, log = run(prefix + cmd, path, env)
            speed = rates(log, logged[stage])[0]
            out[f"{stage}, {label}"] = {"seconds": seconds, "images_per_s": speed}
            print(f"  {stage:8s} {label:9s} {seconds:7.1f} s  {speed:7.0f} images/s", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cores", action="store_true", help="also ingest and augment on one core vs all")
    parser.add_argument("--keep", action="store_true", help="keep the scratch projects")
    parser.add_argument("--source-only", action="store_true",
                        help="only what the source costs DVC, as a folder and as a tar archive (largest size)")
    parser.add_argument("--name", default="scale", help="results file: bench/results/NAME.json")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=STAGES,
                        help="run these stages only, in pipeline order (default: all)")
    args = parser.parse_args()
    stages = [s for s in STAGES if s in args.stages]
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    env = environment(tmp)
    results, core_results = [], {}
    if args.source_only:
        try:
            save(args.name, {"images": max(args.images), "source_only": source_only(
                max(args.images), args.classes, args.seed, tmp, env)})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    try:
        for size in args.images:
            result, path = measure(size, args.classes, args.seed, tmp, env, stages)
            results.append(result)
            if args.cores and not core_results:
                core_results = cores(path, env)
            if not args.keep:
                shutil.rmtree(path)
                shutil.rmtree(tmp / f"remote-{size}", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    sizes = [f"{r['images']:,}" for r in results]
    table("Per stage: wall s (dvc repro -s) / ms per image / peak RSS MB",
          ["stage", *(f"{s} {h}" for s in sizes for h in ("s", "ms/img", "MB"))],
          [[stage, *(v for r in results for v in (r["stages"][stage]["seconds"], r["stages"][stage]["ms_per_image"],
                                                    r["stages"][stage]["peak_rss_mb"]))] for stage in stages])
    table(f"After adding {100 * ADDED:g}% more images: wall s (dvc repro -s) / share of the run from scratch",
          ["stage", *(f"{s} {h}" for s in sizes for h in ("s", "share"))],
          [[stage, *(v for r in results for v in (r["incremental"]["stages"][stage]["seconds"],
                                                    r["incremental"]["stages"][stage]["share_of_scratch"]))]
           for stage in stages] + [[" + ".join(s for s in PER_IMAGE if s in stages), *(v for r in results for v in (
               sum(r["incremental"]["stages"][s]["seconds"] for s in PER_IMAGE if s in stages),
               r["incremental"]["per_image_share"]))]])
    table("Whole run", ["", *sizes], [
        ["source MB", *(r["disk_mb"]["source"] for r in results)],
        ["outputs + cache / source", *(r["disk_mb"]["outputs_and_cache"] / r["disk_mb"]["source"] for r in results)],
        ["pipeline output files", *(r["dvc_files"]["output_files"] for r in results)],
        ["DVC cache objects", *(r["dvc_files"]["cache_objects"] for r in results)],
        ["no-op dvc status s", *(r["noop_status_s"] for r in results)],
        ["no-op dvc repro s", *(r["noop_repro_s"] for r in results)],
        ["dvc push s", *(r["dvc_push_s"] for r in results)],
        ["dvc add s", *(r["dvc_add_s"] for r in results)]])
    if core_results:
        table("One core (taskset -c 0) vs all cores, same images", ["run", "wall s", "images/s (logged)"],
              [[k, v["seconds"], v["images_per_s"]] for k, v in core_results.items()])
    save(args.name, {"params": PARAMS, "source_side_px": SIDE, "stages": stages, "runs": results, "cores": core_results})


if __name__ == "__main__":
    main()
