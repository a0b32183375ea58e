"""Benchmarks 1, 2 and 5: the one-script recipe against this pipeline, head iteration, no-op overhead.

Runs, on the offline clothing photos and MobileNetV2 weights (../shared), in a
scratch copy of the project:
  1. the recipe (bench/recipe.py) and a full `dvc repro`, with the same image
     size, epochs, early stopping and data: wall time and test accuracy;
  2. retraining the head with another learning rate: the recipe's image epochs
     against `dvc exp run train_head -S train_head.learning_rate=...`;
  5. `dvc status` and `dvc repro` when nothing changed (median of 3).
Prints a table and writes bench/results/iteration.json.   python bench/iteration.py
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from common import BIN, CLOTHING, environment, make_project, median, require_assets, run, save, table


def main() -> None:
    require_assets()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        tmp = Path(tmp)
        env = environment(tmp)
        project = make_project(tmp / "project", env)
        dvc = str(BIN / "dvc")

        print("pipeline: dvc repro (full) ...", flush=True)
        full_seconds, log = run([dvc, "repro"], project, env)
        metrics = json.loads((project / "reports" / "metrics.json").read_text())
        status = [run([dvc, "status"], project, env)[0] for _ in range(3)]
        noop = [run([dvc, "repro"], project, env)[0] for _ in range(3)]
        print("pipeline: dvc exp run train_head -S train_head.learning_rate=0.0005 ...", flush=True)
        head_seconds, _ = run([dvc, "exp", "run", "train_head", "-S", "train_head.learning_rate=0.0005"], project, env)
        run(["git", "checkout", "params.yaml"], project, env)

        print("recipe: bench/recipe.py ...", flush=True)
        recipe_wall, _ = run([sys.executable, str(Path(__file__).parent / "recipe.py"), str(CLOTHING),
                              "--out", str(tmp / "recipe.json")], tmp, env)
        recipe = json.loads((tmp / "recipe.json").read_text())

    table("1. One-script recipe vs pipeline (full run, same data, image size, epochs)",
          ["", "wall time (s)", "head-only test acc", "fine-tuned test acc"],
          [["recipe (bench/recipe.py)", recipe_wall, recipe["head_accuracy"], recipe["finetune_accuracy"]],
           ["pipeline (dvc repro)", full_seconds, metrics["head"]["accuracy"], metrics["finetune"]["accuracy"]]])
    speedup = recipe["head_seconds"] / head_seconds
    table("2. Retrain the head with another learning rate", ["", "wall time (s)"],
          [[f"recipe: {recipe['head_epochs']} head epochs on images", recipe["head_seconds"]],
           ["pipeline: dvc exp run train_head -S train_head.learning_rate=0.0005", head_seconds],
           ["pipeline speed-up (target >= 30x)", f"{speedup:.1f}x"]])
    table("5. No-op overhead (target < 3 s each)", ["command", "median wall time (s)"],
          [["dvc status", median(status)], ["dvc repro", median(noop)]])
    save("iteration", {
        "recipe": {**recipe, "wall_seconds": recipe_wall},
        "pipeline": {"wall_seconds": full_seconds, "test": metrics},
        "head_iteration": {"recipe_seconds": recipe["head_seconds"], "pipeline_seconds": head_seconds,
                           "speedup": speedup, "target": 30},
        "noop": {"dvc_status_seconds": status, "dvc_repro_seconds": noop, "target": 3},
    })


if __name__ == "__main__":
    main()
