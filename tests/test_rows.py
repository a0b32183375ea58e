"""rows.py: 2-D .npy files read and written a few rows at a time, never whole nor mapped."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.lib import rows, schemas
from pipeline.lib.errors import StageError


def test_rows_written_in_any_order_read_back_as_numpy_writes_them(tmp_path, monkeypatch):
    data = np.random.default_rng(0).normal(size=(37, 5)).astype(np.float32)
    with rows.Writer(tmp_path / "a.npy", np.float32, data.shape) as w:
        w.write(np.array([36, 0, 1, 2, 10]), data[[36, 0, 1, 2, 10]])
        w.write(3, data[3:10])  # a start: consecutive rows
        w.write(np.arange(11, 36), data[11:36])
    np.save(tmp_path / "b.npy", data)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    monkeypatch.setattr(rows, "CHUNK_BYTES", 3 * 5 * 4)  # three rows a chunk
    reader = schemas.read_npy(tmp_path / "a.npy", "float32", 2, rows=True)
    assert len(reader) == 37 and reader.shape == (37, 5)
    np.testing.assert_array_equal(reader.take([5, 2, 2, 30, 31, 0]), data[[5, 2, 2, 30, 31, 0]])
    assert [start for start, _ in reader.chunks()] == list(range(0, 37, 3))
    np.testing.assert_array_equal(np.concatenate([part for _, part in reader.chunks()]), data)


def test_a_nan_row_is_named_when_read_by_rows(tmp_path):
    data = np.zeros((9, 2), np.float32)
    data[7, 1] = np.nan
    np.save(tmp_path / "x.npy", data)
    with pytest.raises(StageError, match="row 7 holds NaN"):
        schemas.read_npy(tmp_path / "x.npy", "float32", 2, rows=True)
