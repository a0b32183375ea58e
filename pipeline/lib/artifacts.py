"""Stage plumbing: command-line paths, logging, and atomic writes of outputs.

Every output is built under a hidden temporary name beside its final path and
renamed into place only when complete, so an interrupted stage (Ctrl-C,
SIGTERM, a crash) never leaves a half-written artifact for DVC to cache.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Iterator

from pipeline.lib.params import ParamsError

log = logging.getLogger(__name__)


def start(doc: str, *paths: str) -> argparse.Namespace:
    """Parse ``--<path> VALUE`` arguments (paths live in dvc.yaml only) and set up logging."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in paths:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    # SIGTERM (what `kill` and CI runners send) would otherwise end Python without
    # unwinding, skipping the clean-up of temporary outputs below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    return args


def _path(value: str) -> Path | str:
    """A local path, or a URL (gs://, s3://) kept as text: Path would turn gs://b into gs:/b.
    Inputs read through shards.dataset may be such URLs (a shared copy of data/augmented)."""
    return value if "://" in value else Path(value)


DEBUG_ENV = "PIPELINE_DEBUG"  # set (to anything but 0 or empty) for an error's whole traceback


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


def keras_cache_dir() -> Path:
    """Keras' cache (``$KERAS_HOME``, default ``~/.keras``): downloads land there, so a
    pre-seeded cache works offline."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


class StageError(RuntimeError):
    """Bad input a user can fix: the message says what and where."""


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``final`` on success."""
    with _atomic(final, is_dir=True) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary file path that replaces ``final`` on success."""
    with _atomic(final, is_dir=False) as tmp:
        yield tmp


def write_json(path: Path, data: Any) -> None:
    """Write strict JSON: a NaN or infinity (which json.dumps would write as bare NaN, invalid
    for DVC and most readers) stops the stage instead."""
    try:
        text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False)
    except ValueError as err:
        raise StageError(f"{path}: refusing to write a non-finite number ({err}); an earlier step "
                         "produced NaN or infinity") from err
    with atomic_file(path) as tmp:
        tmp.write_text(text + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise StageError(f"{path} is not valid JSON ({err}); rebuild it with `dvc repro --force` of the "
                         "stage that writes it") from err


@contextlib.contextmanager
def _atomic(final: Path, is_dir: bool) -> Iterator[Path]:
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # The suffix stays last: Keras only saves to a path ending in ".keras".
    for pattern in (f".{final.stem}.tmp-*{final.suffix}", f".{final.stem}.old-*{final.suffix}"):
        for stale in final.parent.glob(pattern):  # left by a killed run
            _remove(stale)
    tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}{final.suffix}")
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    # rename() cannot replace a non-empty directory: move the old one aside first.
    old = final.with_name(f".{final.stem}.old-{os.getpid()}{final.suffix}")
    if final.exists() or final.is_symlink():
        os.replace(final, old)
    os.replace(tmp, final)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
