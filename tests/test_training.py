"""Training options (class weights, schedules, label smoothing), saving for inference, and the
learning-rate range test, on tiny arrays and models."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from conftest import ROOT
from pipeline.lib import artifacts, models, training
from pipeline import lr_find
from pipeline.lib.artifacts import StageError


def test_class_weights_auto_turns_on_only_past_the_ratio():
    labels = ["a", "b", "c"]
    assert training.class_weights([100, 90, 80], labels, "auto", 3.0) is None
    weights = training.class_weights([300, 100, 100], labels, "auto", 3.0)
    # sklearn's "balanced": n / (k * count), so every class carries the same total weight
    assert weights == pytest.approx({0: 500 / 900, 1: 500 / 300, 2: 500 / 300})
    assert training.class_weights([100, 90, 80], labels, "balanced", 3.0) is not None
    assert training.class_weights([300, 10, 10], labels, "none", 3.0) is None


def test_weighted_classes_contribute_equally_to_the_loss():
    counts = np.array([60, 20, 20])
    weights = training.class_weights(counts, ["a", "b", "c"], "balanced", 1.0)
    totals = [counts[i] * weights[i] for i in range(3)]
    assert totals == pytest.approx([totals[0]] * 3)


def test_smoothed_loss_matches_the_formula_and_is_plain_crossentropy_at_zero():
    y = np.array([0, 2])
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype="float32")
    s = 0.1
    target = (1 - s) * np.eye(3)[y] + s / 3
    expected = float(np.mean(-(target * np.log(p)).sum(axis=1)))
    got = float(keras.ops.convert_to_numpy(training.loss(s)(y, p)))
    assert got == pytest.approx(expected, rel=1e-5)
    plain = float(keras.ops.convert_to_numpy(training.loss(0.0)(y, p)))
    assert plain == pytest.approx(float(np.mean(-np.log(p[[0, 1], y]))), rel=1e-5)
    assert got > plain  # smoothing penalises the confident correct answers


def test_learning_rate_schedules():
    assert training.learning_rate(1e-3, "constant", 0, 100) == 1e-3
    rate = lambda schedule, step: float(training.learning_rate(1e-3, schedule, 10, 110)(step))  # noqa: E731
    assert rate("cosine", 0) == 0.0  # warm-up starts from zero...
    assert rate("cosine", 5) == pytest.approx(5e-4)  # ...grows linearly...
    assert rate("cosine", 10) == pytest.approx(1e-3)  # ...to the peak
    assert rate("cosine", 60) == pytest.approx(5e-4)  # half way through the cosine
    assert rate("cosine", 110) == pytest.approx(0.0, abs=1e-12)
    assert rate("constant", 60) == pytest.approx(1e-3)  # warm-up, then flat
    no_warmup = training.learning_rate(1e-3, "cosine", 0, 100)
    assert float(no_warmup(0)) == pytest.approx(1e-3) and float(no_warmup(100)) == pytest.approx(0.0, abs=1e-12)


def test_saved_model_has_no_optimizer_state_and_predicts_the_same(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    training.compile_classifier(model, 1e-2, label_smoothing=0.1)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    model.fit(x, np.arange(32) % 3, epochs=1, verbose=0)
    model.save(tmp_path / "compiled.keras")
    models.save(model, tmp_path / "inference.keras")
    loaded = models.load(tmp_path / "inference.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert getattr(loaded, "optimizer", None) is None and not loaded.compiled
    assert (tmp_path / "inference.keras").stat().st_size < (tmp_path / "compiled.keras").stat().st_size


def test_lr_find_suggests_a_tenth_of_the_rate_where_the_loss_starts_to_climb():
    rates = np.logspace(-6, 0, 61)
    losses = (np.log10(rates) + 2) ** 2 + 1  # lowest (1) at 1e-2; 25% higher past 10**-1.5
    assert lr_find.suggest(rates, losses) == pytest.approx(10 ** -1.5 / 10)
    falling = np.linspace(3, 1, 61)  # never turns up: the lowest loss's rate
    assert lr_find.suggest(rates, falling) == pytest.approx(rates[-1] / 10)


def test_lr_find_range_test_stops_when_the_loss_explodes():
    keras.utils.set_random_seed(0)
    import tensorflow as tf

    x = np.random.default_rng(0).normal(size=(256, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    batches = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(32)
    rates, losses = lr_find.range_test(model, batches, training.loss(), np.ones(2), 1e-5, 1e4, 200)
    assert len(rates) < 200  # diverged before the last, absurd rates
    assert np.isfinite(losses).all()  # a NaN step ends the curve without entering it (JSON has no NaN)
    assert 1e-4 < lr_find.suggest(rates, losses) < 10


def test_lr_find_reads_the_stage_inputs_from_dvc_yaml():
    paths = lr_find.stage_paths("finetune", ROOT / "dvc.yaml")
    assert {"augmented", "extractor", "head", "live"} <= set(paths)
    assert str(paths["head"]).endswith("head.keras")


def test_lr_find_on_a_flat_curve_goes_by_where_the_loss_climbs():
    rates = np.logspace(-7, -2, 51)  # 10 steps a decade
    losses = np.full(51, 0.4) + np.random.default_rng(0).normal(0, 0.01, 51)
    losses[0] = 0.1  # a lucky first batch of an already trained model: ignored
    losses[40:] = 0.4 * 1.5 ** np.arange(1, 12)  # climbs from 1e-3 on
    assert lr_find.suggest(rates, losses) == pytest.approx(rates[39] / 10)


def test_a_diverging_fit_stops_naming_the_learning_rate_and_writes_nothing(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 16)).astype("float32"), rng.integers(0, 3, 200)
    head = models.build_head(x, 3, 0, 0.2)
    training.compile_classifier(head, 1e38)  # finite, but the first Adam steps overflow
    with pytest.raises(StageError, match=r"training diverged: the loss became nan in epoch 1 \(loss\)\. "
                                         r"Lower train_head.learning_rate \(now 1e\+38\)"):
        with training.training_log(tmp_path / "log", 5, len(x), "t", "train_head.learning_rate", 1e38) as (_, cb):
            head.fit(x, y, epochs=3, validation_data=(x, y), callbacks=cb, verbose=0)
    assert list(tmp_path.iterdir()) == []  # neither the log nor its temporary folder


def test_json_outputs_refuse_nan(tmp_path):
    with pytest.raises(StageError, match="m.json: refusing to write a non-finite number"):
        artifacts.write_json(tmp_path / "m.json", {"accuracy": float("nan")})
    assert list(tmp_path.iterdir()) == []
