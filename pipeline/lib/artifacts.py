"""What a stage or command writes, and how: never over what it did not create (``check_output``,
before any work), and atomically.

Every output is built under a hidden temporary name beside its final path and
renamed into place only when complete, so an interrupted stage (Ctrl-C,
SIGTERM, a crash) never leaves a half-written artifact for DVC to cache.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple


from pipeline.lib import dvcyaml
from pipeline.lib.errors import StageError

log = logging.getLogger(__name__)


class Kind(NamedTuple):
    """What a command writes, for ``check_output``: a description, and a test that an existing
    file (or folder) is one it wrote before and may replace."""
    what: str
    test: Callable[[Path], bool]


def starts_with(what: str, prefix: bytes) -> Kind:
    """The kind of file that begins with ``prefix`` (a CSV's header, a PNG's signature)."""
    def test(path: Path) -> bool:
        with open(path, "rb") as f:
            return f.read(len(prefix)) == prefix
    return Kind(what, test)


PNG = starts_with("a PNG image", b"\x89PNG\r\n\x1a\n")
BACKUP_FILES = {"state.npz", "best.npz", "counters.json"}
# A backup folder training.Backup wrote: what a rerun of train_head or finetune may replace.
BACKUP = Kind("a backup of this stage (state.npz, best.npz, counters.json)",
              lambda path: path.is_dir() and set(os.listdir(path)) <= BACKUP_FILES)
_STAGE: str | None = None  # the stage this process runs (cli.start sets it): it replaces its own outputs
_WRITTEN: set[Path] = set()  # what this process's writers put in place: theirs to replace again


def set_stage(name: str | None) -> None:
    """The dvc.yaml stage this process runs: ``check_output`` lets it replace its own outputs."""
    global _STAGE
    _STAGE = name


def check_output(path: Any, folder: bool | None = None, kind: Kind | None = None, reads: Iterable[Any] = (),
                 flag: str | None = None, replaces: bool = True) -> None:
    """Refuse, with one line and before anything is written, an output path whose writing could
    destroy what this command did not create:

    - one that is, holds or lies inside a path it ``reads`` (the model, the input folders), or
      something the pipeline does not create (``dvcyaml.not_created``: data/images, the code);
    - an existing folder where a file goes (``folder=False``), or a file where a folder goes;
    - anything else already there, unless this process wrote it, it is one of the running stage's
      outputs in ./dvc.yaml, or ``kind`` says it is what this command writes (a CSV it wrote before).
      With ``replaces=False`` (a folder written into, file by file) an existing folder is fine.
    """
    shown = f"{flag} {path}" if flag else str(path)
    target = Path(path)
    if any(ord(c) < 32 for c in str(path)):
        raise StageError(f"{shown!r}: the path has control characters; name another")
    real = Path(os.path.realpath(target))
    protected = [(Path(r), "this command reads it") for r in reads]
    stages = dvcyaml.stages(strict=False)  # ./dvc.yaml, read once per check
    protected += [(Path(p), "the pipeline does not create it (dvc.yaml reads it)") for p in dvcyaml.not_created(stages)]
    for other, why in protected:
        other_real = Path(os.path.realpath(other))
        if real == other_real:
            raise StageError(f"{shown}: that is {other}, and {why}; name an output path of its own")
        if other_real in real.parents:
            raise StageError(f"{shown}: that is inside {other}, and {why}; name an output path outside it")
        if real in other_real.parents:
            raise StageError(f"{shown}: that holds {other}, and {why}; name an output path of its own")
    if not (target.exists() or target.is_symlink()):
        return
    if target.is_dir() and not target.is_symlink():
        if folder is False:
            raise StageError(f"{shown}: a folder is there; name a file (nothing was changed)")
    elif not target.is_file() and not target.is_symlink():
        raise StageError(f"{shown}: not a regular file or folder (a FIFO, device or socket); name a file")
    elif folder:
        raise StageError(f"{shown}: a file is there, not a folder; name a folder (nothing was changed)")
    if not replaces or _replaceable(target, kind, stages):
        return
    what = kind.what if kind else "an output of this stage in dvc.yaml" if _STAGE else "something this command wrote"
    raise StageError(f"{shown}: already there and not {what}, so it is left as it is; name another path, "
                     "or move it away first")


def _replaceable(target: Path, kind: Kind | None, stages: dict) -> bool:
    """``target`` (which exists) is this process's, this stage's declared output, or of ``kind``."""
    if target.absolute() in _WRITTEN:
        return True
    if _STAGE is not None:
        mine = [Path(out) for out, stage in dvcyaml.writers(stages).items() if stage == _STAGE]
        relative = dvcyaml.relative(target)
        inside = lambda p: any(p == out or out in p.parents for out in mine)  # noqa: E731
        if inside(relative):
            return True
        if target.is_dir() and not target.is_symlink() and mine:  # a folder of this stage's outputs only
            deep: list[Path] = []
            files = [d / f for d, _, fs in walk(target, deep=deep) for f in fs]
            if not deep and all(inside(dvcyaml.relative(f)) for f in files):
                return True
    try:
        return kind is not None and kind.test(target)
    except OSError:
        return False


MAX_DEPTH = 32  # folder levels read below a folder a user gives; deeper ones are reported, never read


def walk(root: Path, max_depth: int = MAX_DEPTH, deep: list[Path] | None = None,
         onerror: Callable[[OSError], Any] | None = None) -> Iterator[tuple[Path, list[str], list[str]]]:
    """``os.walk(root)``, sorted, at most ``max_depth`` folders down: os.walk of Python 3.11
    recurses, and a deeper tree (a hostile archive, a link farm) would end it in a RecursionError.
    The folders left unread are appended to ``deep``; ``onerror`` is os.walk's. Every walk of a
    user's folder goes through here: ingest, predict, rank, calibrate's out-of-distribution folder,
    check."""
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames.sort()
        if len(Path(dirpath).relative_to(root).parts) >= max_depth:
            if deep is not None:
                deep += [Path(dirpath, d) for d in dirnames]
            dirnames.clear()
        yield Path(dirpath), dirnames, sorted(filenames)


def out_of_space(err: BaseException) -> bool:
    """``err`` says a disk is full: an OSError, or TensorFlow's ResourceExhaustedError for a file."""
    return (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        type(err).__name__ == "ResourceExhaustedError" and "space" in str(err).lower())


def check_free_space(path: Any, needed: int, what: str) -> None:
    """Stop before writing ``needed`` bytes under ``path``'s folder if its disk has less free."""
    folder = Path(path).absolute().parent
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise StageError(f"{path}: {what} needs about {needed / 1e6:,.0f} MB but its disk has "
                         f"{free / 1e6:,.0f} MB free; free space there (or move the project)")


@contextlib.contextmanager
def atomic_dir(final: Path, kind: Kind | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``final`` on success. An existing
    ``final`` is replaced only where ``check_output`` allows it (``kind``: what this writes)."""
    with _atomic(final, is_dir=True, kind=kind) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_file(final: Path, kind: Kind | None = None) -> Iterator[Path]:
    """Yield a temporary file path that replaces ``final`` on success (see ``atomic_dir``)."""
    with _atomic(final, is_dir=False, kind=kind) as tmp:
        yield tmp


def write_json(path: Path, data: Any, kind: Kind | None = None) -> None:
    """Write strict JSON: a NaN or infinity (which json.dumps would write as bare NaN, invalid
    for DVC and most readers) stops the stage instead."""
    try:
        text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False)
    except ValueError as err:
        raise StageError(f"{path}: refusing to write a non-finite number ({err}); an earlier step "
                         "produced NaN or infinity") from err
    with atomic_file(path, kind) as tmp:
        tmp.write_text(text + "\n")


@contextlib.contextmanager
def _atomic(final: Path, is_dir: bool, kind: Kind | None) -> Iterator[Path]:
    final = Path(final)
    check_output(final, folder=is_dir, kind=kind)  # never replaces what this command did not create
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
    except BaseException as err:
        _remove(tmp)
        if out_of_space(err):
            free = shutil.disk_usage(final.parent).free
            raise StageError(f"{final}: the disk ran out of space while writing it ({free / 1e6:,.0f} MB "
                             "free now); the previous version, if any, is untouched. Free space and "
                             "rerun") from err
        raise
    # rename() cannot replace a non-empty directory: move the old one aside first.
    old = final.with_name(f".{final.stem}.old-{os.getpid()}{final.suffix}")
    if final.exists() or final.is_symlink():
        os.replace(final, old)
    os.replace(tmp, final)
    _WRITTEN.add(final.absolute())
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
