"""params.yaml validation: every mistake names its key."""
from __future__ import annotations

import copy
import re

import pytest
import yaml

from conftest import ROOT
from pipeline.lib import params
from pipeline.lib.params import ParamsError

DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def broken(edit) -> dict:
    raw = copy.deepcopy(DEFAULT)
    edit(raw)
    return raw


def test_default_params_are_valid():
    parsed = params.parse(DEFAULT)
    assert parsed["finetune"].learning_rate == pytest.approx(1e-4)
    assert parsed["base"].backbone == "MobileNetV2"


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["finetune"].update(learnig_rate=0.1), "unknown key 'finetune.learnig_rate'"),
    (lambda r: r.update(trian={}), "unknown key 'trian'"),
    (lambda r: r["train_head"].update(epochs="ten"), "train_head.epochs must be int, got 'ten'"),
    (lambda r: r["train_head"].update(epochs=True), "train_head.epochs must be int"),
    (lambda r: r["finetune"].update(epochs=0), "finetune.epochs must be >= 1"),
    (lambda r: r["split"].update(val_fraction=-0.1), "split.val_fraction must be in (0, 1)"),
    (lambda r: r["split"].update(val_fraction=0.5, test_fraction=0.5), "must be < 1"),
    (lambda r: r["split"].update(strategy="random"), "split.strategy must be one of auto"),
    (lambda r: r["finetune"].update(learning_rate=0), "finetune.learning_rate must be > 0"),
    (lambda r: r["finetune"].pop("epochs"), "missing key 'finetune.epochs'"),
    (lambda r: r["base"].update(image_size=16), "base.image_size must be in [32, 1024], got 16"),
    (lambda r: r["finetune"].update(online_augmentation="yes"), "finetune.online_augmentation must be bool"),
    (lambda r: r["finetune"].update(schedule="linear"), "finetune.schedule must be one of constant, cosine"),
    (lambda r: r["finetune"].update(warmup_epochs=10), "finetune.warmup_epochs must be < finetune.epochs"),
    (lambda r: r["train_head"].update(label_smoothing=1.0), "train_head.label_smoothing must be in [0, 1)"),
    (lambda r: r["class_weights"].update(mode="on"), "class_weights.mode must be one of auto, balanced, none"),
    (lambda r: r["class_weights"].update(auto_ratio=0.5), "class_weights.auto_ratio must be >= 1"),
    (lambda r: r["export"].update(representative_images=0), "export.representative_images must be in [1, 10000]"),
    (lambda r: r.pop("seed"), "missing key 'seed'"),
    (lambda r: r.update(seed=-1), "seed must be in [0, 4294967295], got -1"),
    (lambda r: r.update(seed=2**32), "seed must be in [0, 4294967295], got 4294967296"),
    (lambda r: r["finetune"].update(learning_rate=float("inf")), "finetune.learning_rate must be a finite number, got inf"),
    (lambda r: r["train_head"].update(dropout=float("nan")), "train_head.dropout must be a finite number, got nan"),
    (lambda r: r["split"].update(val_fraction=float("-inf")), "split.val_fraction must be a finite number"),
    (lambda r: r["base"].update(image_size=100000), "base.image_size must be in [32, 1024], got 100000"),
    (lambda r: r["extract"].update(batch_size=10**6), "extract.batch_size must be in [1, 1024]"),
    (lambda r: r["finetune"].update(batch_size=4096), "finetune.batch_size must be in [1, 1024]"),
    (lambda r: r["evaluate"].update(batch_size=4096), "evaluate.batch_size must be in [1, 1024]"),
    (lambda r: r["train_head"].update(batch_size=10**6), "train_head.batch_size must be in [1, 65536]"),
    (lambda r: r["augment"].update(copies=1000), "augment.copies must be in [0, 100]"),
    (lambda r: r["base"].update(weights="weights.txt"), "base.weights must be imagenet, none or a Keras weights file"),
    (lambda r: r["ingest"].update(max_expansion_ratio=0.5), "ingest.max_expansion_ratio must be >= 1"),
    (lambda r: r["audit"].update(duplicate_similarity=1.5), "audit.duplicate_similarity must be in (0, 1]"),
    (lambda r: r["audit"].update(folds=1), "audit.folds must be in [2, 50]"),
    (lambda r: r["audit"].update(dark=0.9, bright=0.5), "audit.dark (0.9) must be below audit.bright (0.5)"),
    (lambda r: r["split"].update(group_near_duplicates="on"), "split.group_near_duplicates must be bool"),
])
def test_mistakes_are_named(edit, message):
    with pytest.raises(ParamsError, match=re.escape(message)):
        params.parse(broken(edit))


def test_yaml_infinity_in_the_file_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text().replace("learning_rate: 1.0e-04", "learning_rate: .inf"))
    with pytest.raises(ParamsError, match=re.escape("finetune.learning_rate must be a finite number, got inf")):
        params.load(["finetune"], path)


def test_int_is_accepted_for_float():
    parsed = params.parse(broken(lambda r: r["train_head"].update(learning_rate=1)))
    assert parsed["train_head"].learning_rate == 1.0


def test_view_holds_only_declared_keys(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(DEFAULT))
    view = params.load(["seed", "finetune", "base.image_size"], path)
    assert view.base.image_size == DEFAULT["base"]["image_size"]
    assert view.finetune.epochs == DEFAULT["finetune"]["epochs"]
    with pytest.raises(AttributeError):
        view.base.backbone  # not declared by this stage
    with pytest.raises(AttributeError):
        view.train_head


def test_expand_sections_and_reject_unknown():
    assert "finetune.learning_rate" in params.expand(["finetune"])
    assert params.expand(["seed", "base.pooling"]) == ["seed", "base.pooling"]
    with pytest.raises(ParamsError, match="unknown params key 'base.size'"):
        params.expand(["base.size"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        params.load(["seed"], tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        params.load(["seed"], bad)


@pytest.mark.parametrize("text, value", [("3e-05", 3e-5), ("1e-5", 1e-5), ("2.5E+2", 250.0), ("1.0e-05", 1e-5)])
def test_exponent_floats_without_a_dot_are_floats(tmp_path, text, value):
    """`dvc exp run -S finetune.learning_rate=3e-5` writes `3e-05`, a string to YAML 1.1 readers."""
    raw = (ROOT / "params.yaml").read_text().replace("learning_rate: 1.0e-04", f"learning_rate: {text}")
    assert f"learning_rate: {text}" in raw
    (tmp_path / "params.yaml").write_text(raw)
    assert params.load(["finetune"], tmp_path / "params.yaml").finetune.learning_rate == pytest.approx(value)
