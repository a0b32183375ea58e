"""Errors a user can fix, and how they are told: one line naming the file or param and what to do,
the type of the error it came from beside it, and the whole chained traceback for a maintainer
under ``PIPELINE_DEBUG=1``."""
from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any

from pipeline.lib import dvcyaml


DEBUG_ENV = "PIPELINE_DEBUG"  # set (to anything but 0 or empty) for an error's whole traceback


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def describe(err: BaseException) -> str:
    """The one line a user reads: ``err``'s message and the type of its cause (the exception it
    was raised from). With ``PIPELINE_DEBUG=1`` the whole chained traceback, for a maintainer,
    goes to stderr first."""
    if debugging():
        print(f"{DEBUG_ENV}=1: the whole traceback, causes first:\n"
              + "".join(traceback.format_exception(err)).rstrip(), file=sys.stderr, flush=True)
    cause = err.__cause__ or err.__context__
    return f"{err} [cause: {type(cause).__name__}; {DEBUG_ENV}=1 shows the traceback]" if cause else str(err)


def report(err: BaseException) -> None:
    """Log ``err`` as one line (``describe``), as a stage's last words."""
    logging.getLogger("pipeline").error("%s", describe(err))


def missing_input(path: Any) -> StageError:
    return StageError(f"missing input {path}: `dvc repro` builds each stage's inputs first "
                      "(or `dvc pull` fetches them)")


def damaged(path: Any, what: str) -> StageError:
    """The error for an artifact that exists but cannot be what its stage wrote (a killed copy, a
    bad disk, a hand edit): it names the file and the stage of dvc.yaml that writes it."""
    stage, out = dvcyaml.producer(path, dvcyaml.stages(strict=False))
    fix = (f"rerun `dvc repro -f -s {stage}` or restore it with `dvc checkout {out}`" if stage
           else "replace it with a good copy")
    return StageError(f"{path} is damaged ({what}): {fix}")


class StageError(RuntimeError):
    """Bad input a user can fix: the message says what and where."""
