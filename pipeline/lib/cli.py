"""How a stage starts and ends: its ``--path`` arguments (paths live in dvc.yaml only), logging,
SIGTERM unwinding like Ctrl-C, its outputs checked before any work, and a known error as one line
and exit 1 instead of a traceback."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Iterable

from pipeline.lib import artifacts
from pipeline.lib.artifacts import Kind
from pipeline.lib.errors import StageError, missing_input, report
from pipeline.lib.params import ParamsError


def start(doc: str, *paths: str, writes: Iterable[str] | dict[str, Kind | None] = ()) -> argparse.Namespace:
    """Parse ``--<path> VALUE`` arguments (paths live in dvc.yaml only) and set up logging.

    ``writes`` names the arguments that are this stage's outputs (or maps them to the ``Kind``
    of a scratch folder): each is checked before any work (``artifacts.check_output``) against the other
    arguments, which it reads, and against what the pipeline does not create. The stage is the
    program's last word, ``python -m pipeline <stage>`` as dvc.yaml runs it (or the stage's file
    name): of what exists, it replaces only its own outputs in ./dvc.yaml."""
    artifacts.set_stage(Path(sys.argv[0].split()[-1]).stem if sys.argv and sys.argv[0].strip() else None)
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in paths:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    # SIGTERM (what `kill` and CI runners send) would otherwise end Python without
    # unwinding, skipping the clean-up of temporary outputs below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    reads = [getattr(args, name) for name in paths if name not in writes and isinstance(getattr(args, name), Path)]
    kinds = writes if isinstance(writes, dict) else dict.fromkeys(writes)
    for name, kind in kinds.items():  # a StageError here is the stage's one line (run)
        artifacts.check_output(getattr(args, name), kind=kind, reads=reads, flag=f"--{name.replace('_', '-')}")
    return args


def _path(value: str) -> Path | str:
    """A local path, or a URL (gs://, s3://) kept as text: Path would turn gs://b into gs:/b.
    Inputs read through shards.dataset may be such URLs (a shared copy of data/augmented)."""
    return value if "://" in value else Path(value)


def run(main: Any) -> None:
    """Run a stage's ``main()``; a known error becomes a one-line message and exit 1, not a traceback."""
    try:
        main()
    except (FileNotFoundError, ParamsError, StageError) as err:
        if isinstance(err, FileNotFoundError):  # an input another stage makes, when a stage is run by hand
            try:
                raise missing_input(err.filename or str(err)) from err
            except StageError as missing:
                err = missing
        report(err)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: the outputs are as they were (written atomically)
        logging.getLogger("pipeline").error("interrupted: no output was changed; `dvc repro` "
                                            "starts again (finetune resumes from its last epoch)")
        sys.exit(130)
