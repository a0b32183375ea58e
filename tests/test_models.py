"""Backbones, preprocessing, head and the fine-tuning freeze rules, on tiny random models."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from pipeline.lib import augmentation, keras_files, models
from pipeline.lib.errors import StageError

BASE = SimpleNamespace(backbone="MobileNetV2", weights="none", image_size=32, pooling="avg")


@pytest.fixture
def classifier():
    """A fresh tiny classifier (random MobileNetV2 at 32 px + head) for each test."""
    keras.utils.set_random_seed(0)
    extractor = models.build_extractor(BASE)
    features = extractor.predict(np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)), verbose=0)
    head = models.build_head(features, 3, hidden_units=8, dropout=0.1)
    return models.assemble(extractor, head)


def test_every_keras_application_has_its_preprocessing():
    names = models.backbones()
    assert {"MobileNetV2", "MobileNet", "EfficientNetB0", "ResNet50"} <= set(names)
    for name in names:
        assert callable(models.preprocess_function(name)), name


@pytest.mark.parametrize("backbone, module", [("MobileNetV2", "mobilenet_v2"), ("ResNet50", "resnet"),
                                              ("EfficientNetB0", "efficientnet")])
def test_preprocess_layer_matches_the_backbone_function(backbone, module):
    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = getattr(keras.applications, module).preprocess_input(x.copy())
    got = keras.ops.convert_to_numpy(models.Preprocess(backbone)(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(StageError, match="'MobileNetV9' is not a keras.applications model.*MobileNetV2"):
        models.build_extractor(SimpleNamespace(**{**vars(BASE), "backbone": "MobileNetV9"}))


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(StageError, match="no such file"):
        models.build_extractor(SimpleNamespace(**{**vars(BASE), "weights": str(tmp_path / "w.h5")}))


@pytest.mark.parametrize("name, content", [
    ("notes.weights.h5", b"these are not weights\n"),
    ("other.weights.h5", None),  # a real weights file of another model
    ("empty.keras", b""),
])
def test_unreadable_weights_file_is_named(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save_weights(path)
    else:
        path.write_bytes(content)
    with pytest.raises(StageError, match=f"base.weights '{re.escape(str(path))}' is not a readable Keras "
                                         "weights file for MobileNetV2 without its top at 32 px"):
        models.build_extractor(SimpleNamespace(**{**vars(BASE), "weights": str(path)}))


def test_offline_imagenet_download_says_which_cache_file(tmp_path):
    # A fresh interpreter with an empty KERAS_HOME: Keras reads the variable at import time.
    code = ("from types import SimpleNamespace as S; from pipeline.lib import models\n"
            "try:\n models.build_extractor(S(backbone='MobileNetV2', weights='imagenet', image_size=96,"
            " pooling='avg'))\nexcept models.StageError as e: print('ERROR', e)\nelse: print('DOWNLOADED')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"KERAS_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})
    if "DOWNLOADED" in out.stdout:
        pytest.skip("this machine reached the download host, so there is no offline error to check")
    assert "ERROR could not download MobileNetV2 ImageNet weights" in out.stdout, out.stdout + out.stderr
    assert str(tmp_path / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5") \
        in out.stdout


def test_standardize_rescales_tiny_features():
    features = np.random.default_rng(2).normal(5e-12, 1e-12, (64, 4)).astype("float32")
    layer = models.Standardize()
    layer.build(features.shape)
    layer.fit(features)
    out = keras.ops.convert_to_numpy(layer(features))
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(out.std(axis=0), 1, atol=1e-2)


def test_unfreeze_top_keeps_batchnorm_frozen(classifier):
    backbone = models.backbone_of(classifier)
    n = models.unfreeze_top(backbone, 20)
    top = backbone.layers[-20:]
    assert n == sum(bool(layer.weights) and not isinstance(layer, keras.layers.BatchNormalization)
                    for layer in top) > 0
    assert not any(layer.trainable for layer in backbone.layers[:-20])
    assert not any(layer.trainable for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization))


def _batchnorm_stats(backbone):
    return [keras.ops.convert_to_numpy(w).copy() for layer in backbone.layers
            if isinstance(layer, keras.layers.BatchNormalization)
            for w in (layer.moving_mean, layer.moving_variance)]


def _one_fit_step(model):
    """One step of the pipeline's own training loop (training.Trainer, as finetune runs it)."""
    from pipeline.lib import training

    trainer = training.Trainer(model, tf.distribute.get_strategy(), 1e-3)
    x = np.random.default_rng(3).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    trainer.train_epoch(tf.data.Dataset.from_tensor_slices((x, np.arange(8, dtype="int32") % 3)).batch(8))


def test_finetune_step_leaves_batchnorm_statistics_unchanged(classifier):
    backbone = models.backbone_of(classifier)
    models.unfreeze_top(backbone, len(backbone.layers))  # everything but BatchNorm trainable
    before_stats = _batchnorm_stats(backbone)
    before_kernels = [keras.ops.convert_to_numpy(w).copy() for w in backbone.trainable_weights]
    _one_fit_step(classifier)
    for a, b in zip(before_stats, _batchnorm_stats(backbone)):
        np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, keras.ops.convert_to_numpy(w))
               for a, w in zip(before_kernels, backbone.trainable_weights)]
    assert any(changed), "the unfrozen layers did not train at all"


def test_without_the_freeze_batchnorm_drifts(classifier):
    """The control: plain `trainable = True` lets a training step update moving statistics, the base's
    `training=False` notwithstanding (keras#20285)."""
    backbone = models.backbone_of(classifier)
    backbone.trainable = True  # the usual recipe line, with nothing done about BatchNorm
    assert all(layer.trainable for layer in backbone.layers)
    before = _batchnorm_stats(backbone)
    _one_fit_step(classifier)
    assert any(not np.array_equal(a, b) for a, b in zip(before, _batchnorm_stats(backbone)))


def test_saved_classifier_loads_in_safe_mode_with_same_predictions(classifier, tmp_path):
    x = np.random.default_rng(4).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    classifier.save(tmp_path / "m.keras")
    loaded = keras_files.load(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), classifier.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_the_same_model_saved_by_two_processes_is_the_same_file(tmp_path):
    """Keras stamps the save time and Python object addresses (config.json's shared_object_id) into
    a .keras file; keras_files.save takes them out, so a stage rerun that builds the same model writes
    the same bytes and DVC sees no change."""
    code = ("import sys; from types import SimpleNamespace as S; from pipeline.lib import keras_files, models, runtime\n"
            "runtime.set_seed(0)\n"
            "m = models.build_extractor(S(backbone='MobileNetV2', weights='none', image_size=32, pooling='avg'))\n"
            "keras_files.save(m, sys.argv[1])")
    for name in ("a.keras", "b.keras"):  # a second apart at least: Keras' dates have one-second resolution
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], cwd=ROOT, check=True, timeout=300,
                       capture_output=True)
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.keras") as zf:
        assert json.loads(zf.read("metadata.json"))["date_saved"] == "1980-01-01@00:00:00"
        assert '"shared_object_id": 0' in zf.read("config.json").decode()
    x = np.random.default_rng(4).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    assert keras_files.load(tmp_path / "b.keras").predict(x, verbose=0).shape == (2, 1280)
    # A command that loads a file and never touches models (predict, rank): the pipeline's own
    # layers are registered by keras_files itself
    load = "import sys; from pipeline.lib import keras_files; print(keras_files.load(sys.argv[1]).output_shape)"
    out = subprocess.run([sys.executable, "-c", load, str(tmp_path / "a.keras")], cwd=ROOT, timeout=300,
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "(None, 1280)", out.stderr[-2000:]


def test_augmentation_is_a_function_of_the_draws_and_skips_zero_factors():
    aug = SimpleNamespace(flip="horizontal", rotation=0.1, zoom=0.0, translation=0.1, contrast=0.0)
    x = np.random.default_rng(5).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    u = np.stack([augmentation.draws(f"{i:064x}", 0, 7) for i in range(4)])
    runs = [keras.ops.convert_to_numpy(augmentation.apply(aug, x, u)) for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], x)
    # An image's draws come from its content hash, the copy and the seed alone
    assert np.array_equal(augmentation.draws("ab" * 32, 1, 7), augmentation.draws("ab" * 32, 1, 7))
    assert not np.array_equal(augmentation.draws("ab" * 32, 1, 7), augmentation.draws("ab" * 32, 0, 7))
    assert not np.array_equal(augmentation.draws("ab" * 32, 1, 7), augmentation.draws("ab" * 32, 1, 8))
    # One image augmented alone is the same as in a batch (bar the last float bits of the warp)
    alone = keras.ops.convert_to_numpy(augmentation.apply(aug, x[2:3], u[2:3]))
    np.testing.assert_allclose(alone[0], runs[0][2], atol=1e-3)
    # Zero factors: nothing moves; flips only
    none = SimpleNamespace(flip="none", rotation=0.0, zoom=0.0, translation=0.0, contrast=0.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augmentation.apply(none, x, u)), x)
    flips = keras.ops.convert_to_numpy(augmentation.apply(SimpleNamespace(**{**vars(none), "flip": "horizontal"}), x, u))
    for image, out, draw in zip(x, flips, u):
        np.testing.assert_array_equal(out, image[:, ::-1] if draw[0] < 0.5 else image)


def test_the_warp_is_identity_at_zero_and_turns_about_the_centre():
    x = np.random.default_rng(6).uniform(0, 255, (8, 17, 17, 3)).astype("float32")
    u = np.random.default_rng(1).random((8, augmentation.DRAWS))

    def warped(rotation, zoom, translation):
        aug = SimpleNamespace(flip="none", rotation=rotation, zoom=zoom, translation=translation, contrast=0.0)
        return keras.ops.convert_to_numpy(augmentation.apply(aug, x, u))
    # Rotation and zoom pivot on the centre pixel, so it keeps its value exactly;
    # an off-by-half-a-pixel centre would blend it with its neighbours.
    turned = warped(0.2, 0.3, 0.0)
    np.testing.assert_allclose(turned[:, 8, 8], x[:, 8, 8], atol=1e-3)
    assert not np.allclose(turned, x)
    assert not np.allclose(warped(0.0, 0.0, 0.3)[:, 8, 8], x[:, 8, 8])


def test_contrast_stretches_about_each_images_mean_within_the_pixel_range():
    x = np.random.default_rng(8).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    aug = SimpleNamespace(flip="none", rotation=0.0, zoom=0.0, translation=0.0, contrast=0.5)
    u = np.zeros((2, augmentation.DRAWS))
    u[:, 6] = [0.0, 0.999999]  # factor 0.5 and (almost) 1.5
    out = keras.ops.convert_to_numpy(augmentation.apply(aug, x, u))
    mean = x.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out[0], (x[0] - mean[0]) * 0.5 + mean[0], rtol=1e-5)
    assert out[1].min() >= 0 and out[1].max() <= 255 and out[1].std() > x[1].std()


def test_online_augmentation_runs_in_tf_data_on_images_of_unknown_size():
    aug = SimpleNamespace(flip="horizontal", rotation=0.05, zoom=0.1, translation=0.1, contrast=0.1)
    x = np.random.default_rng(7).uniform(0, 255, (10, 16, 16, 3)).astype("float32")

    def batches():
        transform = augmentation.online_augmentation(aug, 7)
        # Decoded images have unknown height and width in tf.data, as in shards.dataset
        ds = tf.data.Dataset.from_generator(lambda: iter(x), output_signature=tf.TensorSpec([None, None, 3]))
        return [b.numpy() for b in ds.batch(4).map(transform)]
    first, again = batches(), batches()
    assert [len(b) for b in first] == [4, 4, 2]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # seeded
    assert not np.allclose(first[0], x[:4])
