"""The real `dvc repro` on a generated dataset with a tiny random backbone, then rerun granularity."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from project import BIN, Project, default_params
from shapes import make_dataset

ARTIFACTS = ("data/split", "data/augmented", "data/features", "reports/metrics.json", "reports/ingest.json")

TINY = dict(
    split={"strategy": "auto", "val_fraction": 0.2, "test_fraction": 0.25},
    base={"backbone": "MobileNetV2", "weights": "none", "image_size": 32, "pooling": "avg"},
    augment={"copies": 1},
    train_head={"epochs": 40, "patience": 10, "learning_rate": 0.003, "batch_size": 32},
    finetune={"unfreeze_layers": 5, "epochs": 1, "learning_rate": 1e-4, "batch_size": 16, "patience": 1},
)


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under the reproducible artifacts, by relative path."""
    out = {}
    for name in ARTIFACTS:
        for path in sorted([root / name] if (root / name).is_file() else (root / name).rglob("*")):
            if path.is_file():
                out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("data") / "shapes", per_class=40, size=40)
    (data / "circle" / "broken.png").write_bytes(b"\x89PNG not really")
    return data


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, dataset):
    proj = Project(tmp_path_factory.mktemp("e2e") / "project", default_params(ingest={"source": str(dataset)}, **TINY))
    ran = proj.repro()
    assert ran == ["ingest", "split", "augment", "extract_features", "train_head", "finetune", "evaluate"]
    return proj, digests(proj.path)


@pytest.fixture
def project(first_run):
    return first_run[0]


def test_outputs_exist_with_the_right_shapes(project):
    p = project.path
    labels = json.loads((p / "data/split/labels.json").read_text())
    assert labels == ["circle", "square", "triangle"]
    meta = json.loads((p / "data/augmented/meta.json").read_text())
    assert meta["counts"]["train"] == meta["counts"]["train_aug"] > 0
    x, y = np.load(p / "data/features/train_x.npy"), np.load(p / "data/features/train_y.npy")
    assert x.shape == (meta["counts"]["train"] * 2, 1280) and y.shape == (len(x),)
    assert set(np.unique(y)) == {0, 1, 2}
    for f in ("models/head.keras", "models/model.keras", "models/extractor.keras",
              "reports/evaluate/confusion_finetune.png", "reports/train_head/metrics.json"):
        assert (p / f).stat().st_size > 0, f
    report = json.loads((p / "reports/ingest.json").read_text())
    assert report["kept"] == 120 and report["skipped_files"][0]["path"] == "circle/broken.png"
    per_class = json.loads((p / "reports/evaluate/per_class.json").read_text())
    assert set(per_class["finetune"]) == set(labels)


def test_test_accuracy_is_well_above_chance(project):
    metrics = project.metrics()
    assert metrics["test_images"] == 30
    assert metrics["head"]["accuracy"] >= 0.6, metrics  # chance is 1/3
    assert metrics["finetune"]["accuracy"] >= 0.6, metrics


def test_nothing_to_do_after_a_full_run(project):
    assert project.changed_stages() == set()


def test_finetune_param_reruns_only_finetune_and_evaluate(project):
    project.set_param("finetune.learning_rate", 2e-4)
    # `dvc status` names the stage whose own deps changed; repro follows on downstream.
    assert project.changed_stages() == {"finetune"}
    assert project.repro() == ["finetune", "evaluate"]


def test_train_head_param_reruns_head_finetune_evaluate(project):
    project.set_param("train_head.dropout", 0.3)
    assert project.changed_stages() == {"train_head"}
    assert project.repro() == ["train_head", "finetune", "evaluate"]
    assert project.changed_stages() == set()


def test_invalid_param_stops_the_stage_naming_the_key(project):
    project.set_param("finetune.epochs", 0)
    out = project.run("dvc", "repro", check=False)
    assert out.returncode != 0
    assert "finetune.epochs must be >= 1" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    project.set_param("finetune.epochs", 1)


def test_same_seed_same_bytes_in_another_directory(first_run, dataset, tmp_path):
    _, expected = first_run
    again = Project(tmp_path / "again", default_params(ingest={"source": str(dataset)}, **TINY))
    again.repro()
    got = digests(again.path)
    assert len(got) > 10 and got == expected


def test_interrupted_stage_leaves_nothing_half_written(project):
    project.set_param("finetune.epochs", 3)
    proc = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=project.path, env=project.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list((project.path / "reports").glob(".finetune.tmp-*")):  # training has begun
        assert proc.poll() is None and time.monotonic() < deadline, "finetune never started"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)  # what Ctrl-C in a terminal, or a CI timeout, does to the group
    proc.wait(timeout=60)
    leftovers = [p.name for d in ("reports", "models") for p in (project.path / d).glob(".*tmp-*")]
    assert leftovers == []
    assert not (project.path / "models" / "model.keras").exists()  # DVC removed it before the run
    assert "finetune" in project.changed_stages()
    assert project.repro() == ["finetune", "evaluate"]
    assert project.changed_stages() == set()


def test_push_clone_pull_gives_identical_files(project, tmp_path):
    project.run("dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "results")
    project.run("dvc", "push")
    clone = tmp_path / "clone"
    project.run("git", "clone", "-q", str(project.path), str(clone))
    cloned = Project.attach(clone, project.env)
    cloned.run("dvc", "pull")
    assert cloned.changed_stages() == set()
    files = ["models/model.keras", "models/head.keras", "models/extractor.keras", "data/raw/manifest.csv"]
    assert digests(clone) == digests(project.path)
    for name in files:
        assert (clone / name).read_bytes() == (project.path / name).read_bytes()
