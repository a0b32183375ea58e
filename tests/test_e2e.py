"""The real `dvc repro` on a generated dataset with a tiny random backbone, then rerun granularity."""
from __future__ import annotations

import json

import numpy as np
import pytest

from project import Project, default_params
from shapes import make_dataset

TINY = dict(
    split={"strategy": "auto", "val_fraction": 0.2, "test_fraction": 0.25},
    base={"backbone": "MobileNetV2", "weights": "none", "image_size": 32, "pooling": "avg"},
    augment={"copies": 1},
    train_head={"epochs": 40, "patience": 10, "learning_rate": 0.003, "batch_size": 32},
    finetune={"unfreeze_layers": 5, "epochs": 1, "learning_rate": 1e-4, "batch_size": 16, "patience": 1},
)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    data = make_dataset(tmp / "shapes", per_class=40, size=40)
    (data / "circle" / "broken.png").write_bytes(b"\x89PNG not really")
    proj = Project(tmp / "project", default_params(ingest={"source": str(data)}, **TINY))
    ran = proj.repro()
    assert ran == ["ingest", "split", "augment", "extract_features", "train_head", "finetune", "evaluate"]
    return proj


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
