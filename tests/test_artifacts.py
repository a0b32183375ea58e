"""Atomic outputs: complete or absent, never half-written."""
from __future__ import annotations

import pytest

from pipeline.lib import artifacts, schemas


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "out"
    with artifacts.atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"

    with pytest.raises(RuntimeError):
        with artifacts.atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert (out / "a.txt").read_text() == "first"  # the previous output survives intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left behind

    with artifacts.atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]  # replaced wholesale, no stale files


def test_atomic_file_keeps_suffix_and_cleans_stale(tmp_path):
    stale = tmp_path / ".model.tmp-99999.keras"
    stale.write_text("left by a killed run")
    with artifacts.atomic_file(tmp_path / "model.keras") as tmp:
        assert tmp.suffix == ".keras"  # Keras refuses to save to other suffixes
        tmp.write_text("ok")
    assert not stale.exists()
    assert (tmp_path / "model.keras").read_text() == "ok"


def test_json_roundtrip(tmp_path):
    artifacts.write_json(tmp_path / "r" / "m.json", {"accuracy": 0.5})
    assert schemas.read_json(tmp_path / "r" / "m.json") == {"accuracy": 0.5}
