"""worker: run this machine's part of a multi-worker `dvc repro`.  ``python -m pipeline worker STAGE...``

With ``distribution.strategy: multi_worker``, the chief runs ``dvc repro`` and every other
machine runs, at the same time and with its own ``TF_CONFIG``, the commands of the stages that
work together (extract_features, train_head, finetune), which this runs in the order given,
taken from dvc.yaml, where the paths live. Every machine sees the project folder at the same
path (a shared mount): the workers read the inputs the chief writes, and only the chief writes
outputs. Each stage ends once the chief has written its outputs, so the next one reads them.
docs/scaling.md walks through an example.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from pipeline.lib import dvcyaml

DISTRIBUTED = ("extract_features", "train_head", "finetune")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stages", nargs="+", choices=DISTRIBUTED, metavar="STAGE",
                        help=f"one or more of {', '.join(DISTRIBUTED)}: those `dvc repro` runs on the chief "
                             "(`dvc status` lists them)")
    args = parser.parse_args()
    if "TF_CONFIG" not in os.environ:
        sys.exit("worker: set TF_CONFIG to the cluster and this machine's task (docs/scaling.md)")
    commands = dvcyaml.stages()
    for stage in args.stages:
        print(f"worker: {stage}", file=sys.stderr, flush=True)
        done = subprocess.run(commands[stage]["cmd"], shell=True)
        if done.returncode:
            sys.exit(f"worker: {stage} failed (exit {done.returncode})")


if __name__ == "__main__":
    main()
