"""2-D ``.npy`` files (features, embeddings) read and written a few rows at a time, through the file.

Neither loaded whole nor memory-mapped: a mapped page that was read or written counts as the
process's own memory until the kernel needs it back, so a map of 100,000 feature vectors grows
the stage's peak memory with the images as surely as loading them. Through ``os.pread`` and
``os.pwrite`` memory holds the rows asked for, and the page cache (which is not the process's)
keeps the file warm. The files are plain ``.npy``: ``np.load`` reads them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

CHUNK_BYTES = 1 << 24  # rows read or copied at a time, at most 16 MB


class Writer:
    """A new ``.npy`` file of ``shape`` (rows, columns) and ``dtype``; rows written in any order
    (``write``), each once. The header is NumPy's own (``open_memmap`` writes the same bytes)."""

    def __init__(self, path: Path, dtype, shape: tuple[int, int]):
        self.dtype, self.shape = np.dtype(dtype), tuple(shape)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(os.dup(self.fd), "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                     "fortran_order": False, "shape": self.shape})
            self.offset = f.tell()
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        os.ftruncate(self.fd, self.offset + self.shape[0] * self.row_bytes)

    def write(self, rows, values: np.ndarray) -> None:
        """``file[rows] = values``: ``rows`` a start index (consecutive rows) or one index per row."""
        values = np.ascontiguousarray(values, self.dtype).reshape(-1, *self.shape[1:])
        if np.isscalar(rows):
            os.pwrite(self.fd, values.tobytes(), self.offset + int(rows) * self.row_bytes)
            return
        for start, stop, at in _runs(np.asarray(rows)):
            os.pwrite(self.fd, values[at:at + stop - start].tobytes(), self.offset + start * self.row_bytes)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Reader:
    """The rows of a checked ``.npy`` file (``schemas.read_npy(..., rows=True)`` makes one)."""

    def __init__(self, path: Path, dtype, shape: tuple[int, ...], offset: int):
        self.path, self.dtype, self.shape, self.offset = Path(path), np.dtype(dtype), tuple(shape), offset
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        self.chunk = max(1, CHUNK_BYTES // max(1, self.row_bytes))

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows) -> np.ndarray:
        """``file[rows]`` for indices in any order (a shuffled batch)."""
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        order = np.argsort(rows, kind="stable")
        with open(self.path, "rb", buffering=0) as f:
            for start, stop, at in _runs(rows[order]):
                block = os.pread(f.fileno(), (stop - start) * self.row_bytes, self.offset + start * self.row_bytes)
                out[order[at:at + stop - start]] = np.frombuffer(block, self.dtype).reshape(-1, *self.shape[1:])
        return out

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows)`` of the whole file, 16 MB at a time."""
        for start in range(0, len(self), self.chunk):
            yield start, self.take(np.arange(start, min(start + self.chunk, len(self))))


def _runs(rows: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """``(start, stop, position)`` of each run of consecutive indices in ``rows``, in order."""
    if not len(rows):
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for at, end in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
        yield int(rows[at]), int(rows[at]) + int(end - at), int(at)
