"""`make setup` picks TensorFlow's CUDA build where nvidia-smi answers, and the stages say which
devices they run on. No GPU here: a stand-in nvidia-smi on PATH plays the driver."""
from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

H100 = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5bd3a2d1-0000-0000-0000-000000000000)\n"


def stand_in(folder: Path, listing: str | None) -> Path:
    """A fake ``nvidia-smi`` in ``folder`` that prints ``listing`` for ``-L`` (or fails: no driver)."""
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + (f"printf '%s' '{listing}'\n" if listing is not None else
                                       "echo 'NVIDIA-SMI has failed because it could not communicate "
                                       "with the NVIDIA driver.' >&2\nexit 9\n"))
    script.chmod(0o755)
    return folder


def dry_setup(path: str, *args: str) -> subprocess.CompletedProcess:
    """`make -n setup` (prints what it would run, runs nothing) with ``path`` as PATH."""
    env = {**os.environ, "PATH": path}
    return subprocess.run(["make", "-n", "-B", "setup", *args], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("listing, args, build", [
    (H100, (), "cuda"),                      # a driver that answers: the CUDA build
    (None, (), "cpu"),                       # nvidia-smi present but no driver: CPU
    ("absent", (), "cpu"),                   # no nvidia-smi at all
    (H100, ("TENSORFLOW=cpu",), "cpu"),      # the override wins either way
    ("absent", ("TENSORFLOW=cuda",), "cuda"),
])
def test_setup_picks_the_build_from_nvidia_smi(tmp_path, listing, args, build):
    path = os.environ["PATH"] if listing == "absent" else f"{stand_in(tmp_path / 'bin', listing)}:{os.environ['PATH']}"
    if listing == "absent":
        path = ":".join(p for p in path.split(":") if not (Path(p) / "nvidia-smi").exists())
    out = dry_setup(path, *args)
    assert out.returncode == 0, out.stderr
    assert f"bash scripts/setup-venv.sh python3 .venv {build}\n" in out.stdout
    assert f"touch .venv/installed-{build}" in out.stdout


def test_setup_refuses_an_unknown_build():
    out = dry_setup(os.environ["PATH"], "TENSORFLOW=gpu")
    assert out.returncode != 0 and "TENSORFLOW=gpu: use auto, cpu or cuda" in out.stderr


def test_the_cuda_requirements_pin_the_same_version(tmp_path):
    """setup-venv.sh's requirements for each build: only the TensorFlow line differs. A stand-in
    python makes the venv calls no-ops, so nothing is installed."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text("#!/bin/sh\nmkdir -p \"$3/bin\"; printf '#!/bin/sh\\n' > \"$3/bin/pip\"; "
                                 "chmod +x \"$3/bin/pip\"\n")
    (fake / "python").chmod(0o755)
    pinned = (ROOT / "requirements.txt").read_text()
    version = next(line.split("==")[1].split()[0] for line in pinned.splitlines()
                   if line.startswith("tensorflow-cpu=="))
    for build, line in (("cpu", f"tensorflow-cpu=={version}"), ("cuda", f"tensorflow[and-cuda]=={version}")):
        venv = tmp_path / f"venv-{build}"
        out = subprocess.run(["bash", "scripts/setup-venv.sh", str(fake / "python"), str(venv), build], cwd=ROOT,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert f"setup: TensorFlow {version}, {build} build" in out.stdout
        written = (venv / f"requirements-{build}.txt").read_text().splitlines()
        assert line in written
        assert [x for x in written if "tensorflow" not in x.split("#")[0]] == \
               [x for x in pinned.splitlines() if "tensorflow" not in x.split("#")[0]]


def test_stages_name_their_devices_and_warn_when_the_driver_sees_a_gpu_tensorflow_does_not(
        tmp_path, monkeypatch, caplog):
    from pipeline.lib import runtime

    caplog.set_level(logging.INFO, logger="pipeline")
    monkeypatch.setenv("PATH", f"{stand_in(tmp_path / 'bin', H100)}:{os.environ['PATH']}")
    assert runtime.driver_gpus() == ["NVIDIA H100 80GB HBM3"]
    assert runtime.log_devices() == []  # tensorflow-cpu sees no GPU
    assert "devices: CPU (no GPU visible)" in caplog.text
    assert ("nvidia-smi lists NVIDIA H100 80GB HBM3 but TensorFlow sees no GPU, so this runs on the CPU: "
            "this TensorFlow is built without CUDA (tensorflow-cpu): `make setup TENSORFLOW=cuda`") in caplog.text
    caplog.clear()
    monkeypatch.setenv("PATH", f"{stand_in(tmp_path / 'nodriver', None)}:{os.environ['PATH']}")
    assert runtime.driver_gpus() == []
    runtime.log_devices()
    assert "devices: CPU (no GPU visible)" in caplog.text and "nvidia-smi lists" not in caplog.text
