"""Real ImageNet MobileNetV2 weights (via the Keras cache) on real clothing photos, through `dvc repro`.

Uses the offline assets in ../shared; skipped, saying so, where they are absent.
"""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import shared_or_skip
from pipeline.lib.exports import FORMATS
from project import RUNNING_STAGE, Project, default_params

pytestmark = pytest.mark.integration

PER_SPLIT = {"train": 20, "validation": 5, "test": 8}  # images per class


@pytest.fixture(scope="module")
def clothing(tmp_path_factory):
    source = shared_or_skip("datasets", "clothing-dataset-small")
    weights = shared_or_skip("keras-cache", "models")
    tmp = tmp_path_factory.mktemp("integration")
    subset = tmp / "clothing"
    for split, n in PER_SPLIT.items():
        for class_dir in sorted((source / split).iterdir()):
            target = subset / split / class_dir.name
            target.mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:n]:  # the first n: a fixed, per-class subsample
                shutil.copy(image, target / image.name)
    keras_home = tmp / "keras-home"
    (keras_home / "models").mkdir(parents=True)
    for f in weights.iterdir():
        (keras_home / "models" / f.name).symlink_to(f)
    params = default_params(
        base={"image_size": 96},  # the smallest MobileNetV2 ImageNet weights: the suite's longest test
        train_head={"epochs": 40, "patience": 8},
        finetune={"unfreeze_layers": 10, "epochs": 1, "learning_rate": 1e-5, "batch_size": 16},
        # 50 int8 calibration images: on the clothing photos 50 to 1,000 moved agreement no more than the
        # sample's seed did (docs/export.md#when-int8-disagrees), and a real backbone's take seconds each
        export={"timing_runs": 8, "representative_images": 50},
    )
    return Project(tmp / "project", params, env={"KERAS_HOME": str(keras_home)}, data=subset)


def test_imagenet_weights_beat_random_weights(clothing):
    assert clothing.repro()[0] == "ingest"
    pretrained = clothing.metrics()
    export = json.loads((clothing.path / "reports" / "export.json").read_text())
    assert pretrained["test_images"] == 10 * PER_SPLIT["test"]
    head = json.loads((clothing.path / "reports/train_head/metrics.json").read_text())
    # Same data and params, random backbone: extract_features and train_head alone (-s: embed and split
    # would rerun too, and neither changes what the head is trained on), up to train_head, whose
    # validation accuracy tells the backbones apart: fine-tuning one epoch at a low rate and exporting
    # a random model would only cost time.
    out = clothing.run("dvc", "exp", "run", "-S", "base.weights=none", "-s", "extract_features", "train_head").stdout
    ran = RUNNING_STAGE.findall(out)
    assert "extract_features" in ran and "augment" not in ran, out
    random = json.loads((clothing.path / "reports/train_head/metrics.json").read_text())
    print(f"fine-tuned test accuracy, imagenet: {pretrained['finetune']['accuracy']:.3f}; head's best validation "
          f"accuracy: imagenet {head['best_val_accuracy']:.3f}, random init {random['best_val_accuracy']:.3f}")
    assert pretrained["finetune"]["accuracy"] >= 0.4, pretrained  # chance is 0.1
    assert head["best_val_accuracy"] >= random["best_val_accuracy"] + 0.25, (head, random)
    # Exported files of the real model: the float formats give the Keras model's answers.
    print("agreement with Keras:", {k: v["agreement"] for k, v in export.items() if isinstance(v, dict) and "agreement" in v})
    for name in ("keras", "saved_model", "onnx", "tflite_float32", "tflite_float16"):
        assert export[name]["agreement"] >= FORMATS[name].min_agreement, (name, export)
    # int8 rounds, and 80 test images make each one 1.25%: looser than export's warning limit (0.9)
    assert export["tflite_int8"]["agreement"] >= 0.8, export
