"""Stage plumbing: command-line paths, logging, and atomic writes of outputs.

Every output is built under a hidden temporary name beside its final path and
renamed into place only when complete, so an interrupted stage (Ctrl-C,
SIGTERM, a crash) never leaves a half-written artifact for DVC to cache.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import numpy as np

from pipeline.lib import dvcyaml
from pipeline.lib.params import ParamsError

log = logging.getLogger(__name__)


def start(doc: str, *paths: str, writes: Iterable[str] | dict[str, Kind | None] = ()) -> argparse.Namespace:
    """Parse ``--<path> VALUE`` arguments (paths live in dvc.yaml only) and set up logging.

    ``writes`` names the arguments that are this stage's outputs (or maps them to the ``Kind``
    of a scratch folder): each is checked before any work (``check_output``) against the other
    arguments, which it reads, and against what the pipeline does not create. The stage is the
    program's last word, ``python -m pipeline <stage>`` as dvc.yaml runs it (or the stage's file
    name): of what exists, it replaces only its own outputs in ./dvc.yaml."""
    global _STAGE
    _STAGE = Path(sys.argv[0].split()[-1]).stem if sys.argv and sys.argv[0].strip() else None
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
        check_output(getattr(args, name), kind=kind, reads=reads, flag=f"--{name.replace('_', '-')}")
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
    except KeyboardInterrupt:  # Ctrl-C: the outputs are as they were (written atomically)
        logging.getLogger("pipeline").error("interrupted: no output was changed; `dvc repro` "
                                            "starts again (finetune resumes from its last epoch)")
        sys.exit(130)


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
_STAGE: str | None = None  # the stage this process runs (set by start): it replaces its own outputs
_WRITTEN: set[Path] = set()  # what this process's writers put in place: theirs to replace again


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


def read_npy(path: Any, dtype: str, ndim: int, mmap: bool = False) -> np.ndarray:
    """A ``.npy`` file a stage wrote, checked before anything is read: NumPy's header must give
    ``dtype`` (or any integer type, for ``"integer"``) and ``ndim`` dimensions, and the file must hold exactly the bytes the header
    promises, so neither pickled data nor a header claiming a huge array is ever loaded."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"unknown .npy format version {version}")
            shape, fortran, found = read_header(f, max_header_size=10_000)
            offset = f.tell()
    except FileNotFoundError:
        raise
    except (ValueError, OSError, SyntaxError, TypeError) as err:  # NumPy's header parser raises these
        raise damaged(path, f"not a NumPy .npy file: {err}") from err
    right_type = np.issubdtype(found, np.integer) if dtype == "integer" else found == np.dtype(dtype)
    if not right_type or len(shape) != ndim or fortran:
        raise damaged(path, f"holds a {'x'.join(map(str, shape)) or 'scalar'} {found} array, "
                            f"not a {ndim}-dimensional {dtype} one")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * found.itemsize
    if (size := path.stat().st_size) != expected:
        raise damaged(path, f"{size:,} bytes, but its header promises {expected:,}")
    array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    if np.issubdtype(array.dtype, np.floating) and len(array):  # a NaN row poisons every distance to it
        step = max(1, (1 << 24) // max(1, array[0].nbytes))  # 16 MB at a time: a memory map stays on disk
        for start in range(0, len(array), step):
            finite = np.isfinite(array[start:start + step])
            if not finite.all():
                raise damaged(path, f"row {start + int(np.argwhere(~finite)[0][0]):,} holds NaN or infinity")
    return array


def read_labels(path: Any) -> list[str]:
    """Class names, in output order: a ``labels.txt`` (one per line, as export writes it) or a JSON
    list (the split stage's ``labels.json``). Not UTF-8, not JSON, not a list of distinct names:
    ``damaged``, naming the file (and the line)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise damaged(path, f"not UTF-8 text: line {line} holds {data[err.start:err.start + 4]!r}") from err
    if path.suffix == ".json":
        try:
            labels = json.loads(text)
        except ValueError as err:
            raise damaged(path, f"not valid JSON: {err}") from err
    else:
        labels = [line for line in text.splitlines() if line.strip()]
    if not (isinstance(labels, list) and labels and all(isinstance(x, str) and x for x in labels)):
        raise damaged(path, "not a list of class names")
    if len(set(labels)) != len(labels):
        raise damaged(path, "a class name appears twice")
    return labels


def read_features(folder: Any, part: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of extract_features' ``<part>_x.npy`` (float32 vectors) and ``<part>_y.npy``
    (class indices), checked to agree with each other and with the ``classes`` labels."""
    folder = Path(folder)
    x = read_npy(folder / f"{part}_x.npy", "float32", 2)
    y = read_npy(folder / f"{part}_y.npy", "integer", 1)
    if len(x) != len(y):
        raise damaged(folder / f"{part}_y.npy", f"{len(y):,} labels for {len(x):,} feature vectors")
    if len(y) and not (0 <= y.min() and y.max() < classes):
        raise damaged(folder / f"{part}_y.npy", f"class indices outside 0..{classes - 1}")
    return x, y


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


def keras_cache_dir() -> Path:
    """Keras' cache (``$KERAS_HOME``, default ``~/.keras``): downloads land there, so a
    pre-seeded cache works offline."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


class StageError(RuntimeError):
    """Bad input a user can fix: the message says what and where."""


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


def read_json(path: Path, kind: type | None = None) -> Any:
    """A JSON file a stage wrote (of type ``kind``, if given): anything else is ``damaged``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise damaged(path, f"not valid JSON: {err}") from err
    if kind is not None and not isinstance(data, kind):
        raise damaged(path, f"a JSON {type(data).__name__}, not a {kind.__name__}")
    return data


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
