"""scripts/get-data.sh and get-ood.sh: a missing data/images or data/ood is filled and checked
against its .dvc file."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, shared_or_skip
from project import BIN
from shapes import make_dataset


def checkout(path: Path) -> Path:
    """A git + DVC repository holding what the script reads: data/images.dvc and the script."""
    (path / "data").mkdir(parents=True)
    (path / "scripts").mkdir()
    for name in ("data/images.dvc", "data/ood.dvc", "data/.gitignore", "scripts/get-data.sh", "scripts/get-ood.sh", "scripts/pinned.sh",
                 "scripts/fashion_mnist_ood.py"):
        shutil.copy(ROOT / name, path / name)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                ["git", "config", "user.name", "ci"], [str(BIN / "dvc"), "init", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "data"]):
        subprocess.run(cmd, cwd=path, check=True, capture_output=True)
    return path


def get_data(repo: Path, shared: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/get-data.sh", str(shared)], cwd=repo, capture_output=True, text=True,
                          env={"PATH": f"{BIN}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1", "HOME": str(repo)})


def test_the_offline_copy_is_exactly_the_pinned_version(tmp_path):
    shared = shared_or_skip("datasets", "clothing-dataset-small").parents[1]
    repo = checkout(tmp_path / "repo")
    out = get_data(repo, shared)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "data/images matches data/images.dvc" in out.stdout
    assert sorted(p.name for p in (repo / "data" / "images").iterdir()) == ["test", "train", "validation"]
    status = subprocess.run([str(BIN / "dvc"), "status", "data/images.dvc"], cwd=repo, capture_output=True, text=True)
    assert "up to date" in status.stdout
    assert get_data(repo, shared).stdout == ""  # already there: nothing to do


def test_images_that_differ_from_the_pin_are_refused_and_kept_aside(tmp_path):
    fake = tmp_path / "shared" / "datasets" / "clothing-dataset-small"
    for split in ("train", "validation", "test"):
        make_dataset(fake / split, per_class=1, size=32)
    repo = checkout(tmp_path / "repo")
    out = get_data(repo, tmp_path / "shared")
    assert out.returncode == 1
    assert "the files differ from the version pinned in data/images.dvc" in out.stderr
    assert not (repo / "data" / "images").exists() and (repo / "data" / "images.unpinned" / "train").is_dir()
    assert subprocess.run(["git", "diff", "--quiet"], cwd=repo).returncode == 0  # the pin is untouched


def test_another_dataset_is_pulled_not_guessed(tmp_path):
    repo = checkout(tmp_path / "repo")
    (repo / "data" / "images.dvc").write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  path: images\n")
    out = get_data(repo, tmp_path / "no-shared")
    assert out.returncode == 1
    assert "could not fetch it; configure the team's remote" in out.stderr


def test_the_default_ood_set_is_exactly_the_pinned_version(tmp_path):
    """Fashion-MNIST's bags, from Debian's copy as scripts/offline-cache.sh links it for Keras."""
    debian = Path("/usr/share/datasets/fashion-mnist")
    if not debian.is_dir():
        pytest.skip(f"{debian} missing: Debian's dataset-fashion-mnist package (.ci/run installs it as root)")
    repo = checkout(tmp_path / "repo")
    (tmp_path / "keras" / "datasets").mkdir(parents=True)
    (tmp_path / "keras" / "datasets" / "fashion-mnist").symlink_to(debian)
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1", "HOME": str(repo), "TF_CPP_MIN_LOG_LEVEL": "3",
           "KERAS_HOME": str(tmp_path / "keras")}
    out = subprocess.run(["bash", "scripts/get-ood.sh"], cwd=repo, capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "get-ood: data/ood matches data/ood.dvc" in out.stdout, out.stdout + out.stderr
    assert len(list((repo / "data" / "ood").glob("fashion-mnist-bag-*.png"))) == 500
    assert subprocess.run(["git", "diff", "--quiet"], cwd=repo).returncode == 0  # the pin is untouched
