"""The entry point of every stage and command: ``python -m pipeline NAME [ARGS...]``.

NAME is a stage of pipeline/stages/ (dvc.yaml runs ``python -m pipeline ingest ...``) or a
command: predict, rank, check, lr_find, relabel, review, worker. Before the module (and TensorFlow) is imported,
TensorFlow's C++ log level is set and its known start-up noise is filtered out of stderr
(pipeline.lib.quiet); nothing of the kind happens when pipeline is merely imported.
``PIPELINE_DEBUG=1`` prints the whole chained traceback of an error (errors.describe).
"""
from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

COMMANDS = ("predict", "rank", "check", "lr_find", "relabel", "review", "worker")
STAGES = sorted(p.stem for p in (Path(__file__).parent / "stages").glob("*.py") if p.stem != "__init__")


def module(name: str) -> str:
    if name in STAGES:
        return f"pipeline.stages.{name}"
    if name in COMMANDS:
        return f"pipeline.{name}"
    sys.exit(f"python -m pipeline: no stage or command {name!r}; stages: {', '.join(STAGES)}; "
             f"commands: {', '.join(COMMANDS)}")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip(), f"\nstages:   {' '.join(STAGES)}\ncommands: {' '.join(COMMANDS)}", sep="\n")
        sys.exit(0 if len(sys.argv) > 1 else 2)
    name = sys.argv[1]
    target = module(name)
    # Before TensorFlow is imported: hides its C++ INFO and WARNING lines once its logging is set
    # up, keeping errors. What it writes before that, the filter drops.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pipeline.lib import quiet

    quiet.install()
    sys.argv = [f"python -m pipeline {name}", *sys.argv[2:]]  # argparse's usage line shows the command
    runpy.run_module(target, run_name="__main__")


if __name__ == "__main__":
    main()
