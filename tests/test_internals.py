"""Each guard of docs/internals.md trips on what it guards against, saying what to check."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile

import pytest

from conftest import ROOT
from pipeline import check
from pipeline.lib import compat
from pipeline.lib.errors import StageError


def test_require_names_the_use_the_versions_and_what_to_check(monkeypatch):
    compat.require("dvc", compat.installed("dvc").rsplit(".", 1)[0], "x", "y")  # this version: passes
    monkeypatch.setattr(compat, "installed", lambda package: "9.0.1")
    with pytest.raises(StageError, match=r"the thing relies on an undocumented part of dvc 3\.67, and dvc 9\.0\.1 "
                                         r"is installed: check this; then update its guard"):
        compat.require("dvc", "3.67", "the thing", "check this")


def test_the_version_prefix_matches_whole_parts_only(monkeypatch):
    monkeypatch.setattr(compat, "installed", lambda package: "3.150.0")
    assert compat.matches("keras", "3.150") and not compat.matches("keras", "3.15")


def test_the_metadata_stand_in_stops_on_another_mediapipe(monkeypatch):
    from pipeline.lib import formats

    name = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
    monkeypatch.delitem(sys.modules, name, raising=False)  # as the wheels ship: missing
    monkeypatch.setattr(compat, "installed", lambda package: "1.3.0" if package == "mediapipe" else None)
    with pytest.raises(StageError, match="stand-in for mediapipe's missing _pywrap_metadata_version.*mediapipe 1.3.0"):
        formats._metadata_writer()


def test_the_reproducible_save_stops_on_another_keras_archive_layout(tmp_path):
    from pipeline.lib import keras_files

    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "4.0.0"}))  # no date_saved
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.safetensors", b"")
    with pytest.raises(StageError, match=r"m\.keras: this Keras .* was written for Keras 3\.15's"):
        keras_files._make_reproducible(path)


@pytest.mark.parametrize("out", ['["ingest"]', '{"ingest": {"changed": true}}', '{"ingest": [{"changed deps": []}]}'])
def test_the_lock_check_refuses_a_dvc_status_layout_it_does_not_know(out):
    with pytest.raises(check.Failed, match=r"`dvc status --json` printed a layout .* check check_lock"):
        check.status_json(out)


def test_the_lock_check_reads_the_layouts_dvc_prints():
    known = {"train_head": [{"changed deps": {"params.yaml": {"train_head.dropout": "modified"}}}],
             "data/images.dvc": [{"changed outs": {"data/images": "modified"}}], "summary": ["changed command"]}
    assert check.status_json(json.dumps(known)) == known and check.status_json("") == {}


def test_the_log_filter_stays_off_on_another_tensorflow_and_says_so(tmp_path):
    """quiet.install on a TensorFlow its patterns were not written for (faked through the version
    it reads): stderr is left alone, one line says why."""
    code = ("import os, sys; from pipeline.lib import compat, quiet; compat.installed = lambda p: '9.9.0'; "
            "before = os.readlink('/proc/self/fd/2'); quiet.install(); "
            "assert os.readlink('/proc/self/fd/2') == before, 'fd 2 was redirected'")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "the stderr filter was written for tensorflow 2.21, not 9.9.0" in out.stderr


@pytest.mark.parametrize("marked", [True, False])
def test_worker_processes_do_not_hold_the_filter_open_at_exit(marked):
    """A process that routes stderr through the filter and then spawns workers (pools.process_batches)
    exits at once, its last stderr line passed on: it waits for the filter to pass on its end mark,
    not for the pipe to close (multiprocessing's resource tracker, started by the workers, holds it
    until the process has ended). The control (the end mark never sent) waits the filter's 10 s."""
    code = ("import sys; from pipeline.lib import pools, quiet; "
            + ("" if marked else "quiet._write = lambda fd, data: None; ")
            + "quiet.install(); print(sum(sum(b) for b in pools.process_batches(abs, list(range(-50, 50)), 10))); "
            + "print('the last line', file=sys.stderr)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    assert out.returncode == 0 and out.stdout.strip() == "2500", out.stderr
    if marked:
        assert seconds < 6, f"exit took {seconds:.1f} s: the filter did not answer the end mark"
        assert out.stderr.endswith("the last line\n") and "\0" not in out.stderr
    else:
        assert seconds > 9, f"the control exited in {seconds:.1f} s: the test no longer shows the problem"
