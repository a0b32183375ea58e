"""Helpers shared by the benchmark scripts: a scratch copy of the project, timing, tables, JSON."""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CLOTHING = SHARED / "datasets" / "clothing-dataset-small"
RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent


def require_assets() -> None:
    if not (CLOTHING.is_dir() and (SHARED / "keras-cache" / "models").is_dir()):
        sys.exit(f"benchmarks need the offline assets in {SHARED} (see its ASSETS.md)")


def environment(tmp: Path) -> dict:
    """The environment for stages: this venv first on PATH, Keras' cache holding the shared weights."""
    home = tmp / "keras-home" / "models"
    home.mkdir(parents=True, exist_ok=True)
    for f in (SHARED / "keras-cache" / "models").iterdir():
        if not (home / f.name).exists():
            (home / f.name).symlink_to(f)
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "KERAS_HOME": str(home.parent),
            "DVC_NO_ANALYTICS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}


def make_project(path: Path, env: dict, fill=None, timings: dict | None = None, **sections) -> Path:
    """A scratch git + DVC copy of the project, params overridden, its data/images made by
    ``fill(folder)`` (default: the offline clothing photos) and tracked with `dvc add`, whose
    wall seconds go to ``timings["dvc add"]``; data/ood copied from this checkout's."""
    shutil.copytree(ROOT / "pipeline", path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, path / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, values in sections.items():
        params[name].update(values)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (fill or copy_clothing)(path / "data" / "images")
    if not (ROOT / "data" / "ood").is_dir():
        sys.exit(f"{ROOT / 'data' / 'ood'} is missing (the calibrate stage's out-of-distribution set): run `make data`")
    shutil.copytree(ROOT / "data" / "ood", path / "data" / "ood", copy_function=shutil.copyfile)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "bench@example.com"],
                ["git", "config", "user.name", "bench"], ["dvc", "init", "-q"],
                ["dvc", "config", "core.analytics", "false"]):
        run(cmd, path, env)
    run(["dvc", "add", "-q", "data/ood"], path, env)
    seconds, _ = run(["dvc", "add", "-q", "data/images"], path, env)
    if timings is not None:
        timings["dvc add"] = seconds
    run(["git", "add", "-A"], path, env)
    run(["git", "commit", "-qm", "bench"], path, env)
    return path


def copy_clothing(folder: Path) -> None:
    for split in ("train", "validation", "test"):  # what data/images.dvc pins
        shutil.copytree(CLOTHING / split, folder / split, copy_function=shutil.copyfile)
    subprocess.run(["chmod", "-R", "u+w", str(folder)], check=True)  # ../shared is read-only; copytree kept that


def run(cmd: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    """Run a command; return (wall seconds, combined output). Fails loudly."""
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return seconds, out.stdout + out.stderr


def rates(log: str, what: str) -> list[float]:
    """images/s figures the stages log, e.g. what="trained on" or what="extracted"."""
    return [float(x) for x in re.findall(rf"{what} \d+ images in [\d.]+ s \(([\d.]+) images/s\)", log)]


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(title: str, headers: list[str], rows: list[list]) -> None:
    cells = [headers] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    machine = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
               "python": platform.python_version(), "date": datetime.date.today().isoformat()}
    path.write_text(json.dumps({"machine": machine, **data}, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path
