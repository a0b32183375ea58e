"""The artifacts the stages hand each other, each read and written one way: the manifest and split
CSVs (their fields, the split names and priority), the class names, the stages' NumPy arrays and
features, and JSON. A reader checks what it reads and calls a file that cannot be what its stage
wrote ``damaged``, naming it and the stage that writes it (errors.damaged)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pipeline.lib import errors
from pipeline.lib import rows as rows_  # read_npy's argument is called rows
from pipeline.lib.errors import damaged


# What ingest records of each image it keeps: its path inside the source, label, the source's own
# split (or ""), content hash, size in bytes and pixels. Later stages read the source through it.
MANIFEST_FIELDS = ["path", "label", "split", "sha256", "bytes", "width", "height"]


SPLITS = ("train", "val", "test")


# Where a group of copies spanning the source's own splits goes (ingest keeps one copy, split
# places a near-duplicate group): the first of its splits in this order, so an evaluation image
# is never moved into training. "": the source had no split folders.
SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2, "": 3}


# What the split stage records of each image in train.csv, val.csv and test.csv.
SPLIT_FIELDS = ["path", "label", "sha256"]  # the hash: later stages check each image they read against it


def read_csv(path: Path, required: Iterable[str] = ()) -> list[dict[str, str]]:
    """The rows of a CSV a stage wrote, which must have the ``required`` columns: a file that is
    not such a CSV (not UTF-8, a NUL byte, a row longer than the header, a column renamed) is
    ``damaged``, named with the stage that writes it."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise errors.damaged(path, f"no column {', '.join(missing)}")
            rows = list(reader)
    except (csv.Error, UnicodeDecodeError) as err:
        raise errors.damaged(path, f"not a readable UTF-8 CSV: {err}") from err
    if required and any(None in row or None in row.values() for row in rows):
        raise errors.damaged(path, "a row has more or fewer fields than the header")
    return rows


def write_csv(path: Path, rows: Iterable[dict], fields: list[str]) -> None:
    """Write rows to ``path`` (call inside an atomic context: this writes in place)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_npy(path: Any, dtype: str, ndim: int, mmap: bool = False, rows: bool = False) -> np.ndarray:
    """A ``.npy`` file a stage wrote, checked before anything is read: NumPy's header must give
    ``dtype`` (or any integer type, for ``"integer"``) and ``ndim`` dimensions, and the file must hold exactly the bytes the header
    promises, so neither pickled data nor a header claiming a huge array is ever loaded.
    ``rows``: a ``rows.Reader`` instead of the array, which memory never holds whole."""
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
    array = rows_.Reader(path, found, shape, offset) if rows else \
        np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    if np.issubdtype(found, np.floating) and len(array):  # a NaN row poisons every distance to it
        chunks = array.chunks() if rows else (
            (start, array[start:start + step]) for step in [max(1, (1 << 24) // max(1, array[0].nbytes))]
            for start in range(0, len(array), step))  # 16 MB at a time: a memory map stays on disk
        for start, part in chunks:
            finite = np.isfinite(part)
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


def read_features(folder: Any, part: str, classes: int, multi: bool = False,
                  rows: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of extract_features' ``<part>_x.npy`` (float32 vectors) and ``<part>_y.npy``
    (class indices, or with ``multi`` one 0/1 per label: ``features_are_multi_label``), checked to
    agree with each other and with the ``classes`` labels. ``rows``: ``x`` is a ``rows.Reader``."""
    folder = Path(folder)
    x = read_npy(folder / f"{part}_x.npy", "float32", 2, rows=rows)
    y = read_npy(folder / f"{part}_y.npy", "integer", 2 if multi else 1)
    if len(x) != len(y):
        raise damaged(folder / f"{part}_y.npy", f"{len(y):,} labels for {len(x):,} feature vectors")
    if multi and (y.shape[1] != classes or (len(y) and not np.isin(y, (0, 1)).all())):
        raise damaged(folder / f"{part}_y.npy", f"not one 0/1 per label for {classes} labels")
    if not multi and len(y) and not (0 <= y.min() and y.max() < classes):
        raise damaged(folder / f"{part}_y.npy", f"class indices outside 0..{classes - 1}")
    return x, y


def features_are_multi_label(folder: Any) -> bool:
    """Whether extract_features wrote multi_label targets (a 2-D ``train_y.npy``), read from its header."""
    path = Path(folder) / "train_y.npy"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            shape = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)(f, max_header_size=10_000)[0]
    except FileNotFoundError:
        raise
    except (ValueError, OSError, SyntaxError, TypeError) as err:
        raise damaged(path, f"not a NumPy .npy file: {err}") from err
    return len(shape) == 2


def read_json(path: Path, kind: type | None = None) -> Any:
    """A JSON file a stage wrote (of type ``kind``, if given): anything else is ``damaged``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise damaged(path, f"not valid JSON: {err}") from err
    if kind is not None and not isinstance(data, kind):
        raise damaged(path, f"a JSON {type(data).__name__}, not a {kind.__name__}")
    return data
