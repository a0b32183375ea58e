"""Training options (class weights, schedules, label smoothing), saving for inference, and the
learning-rate range test, on tiny arrays and models."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from pipeline.lib import artifacts, dvcyaml, keras_files, models, training
from pipeline import lr_find
from pipeline.lib.errors import StageError


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
    model.compile(keras.optimizers.Adam(1e-2), loss=training.loss(0.1))
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    model.fit(x, np.arange(32) % 3, epochs=1, verbose=0)
    model.save(tmp_path / "compiled.keras")
    keras_files.save(model, tmp_path / "inference.keras")
    loaded = keras_files.load(tmp_path / "inference.keras")
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
    rates, losses = lr_find.range_test(model, batches, 0.0, None, 1e-5, 1e4, 200)
    assert len(rates) < 200  # diverged before the last, absurd rates
    assert np.isfinite(losses).all()  # a NaN step ends the curve without entering it (JSON has no NaN)
    assert 1e-4 < lr_find.suggest(rates, losses) < 10


def test_lr_find_gets_the_stage_paths_from_its_command_in_dvc_yaml():
    paths = dvcyaml.paths(dvcyaml.stages(ROOT)["finetune"])
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
    trainer = training.Trainer(head, tf.distribute.get_strategy(), 1e38)  # finite, but the first Adam steps overflow
    with pytest.raises(StageError, match=r"training diverged: the loss became nan in epoch 1 \(loss\)\. "
                                         r"Lower train_head.learning_rate \(now 1e\+38\)"):
        fit(trainer, x, y, tmp_path, epochs=3, rate=1e38)
    assert list(tmp_path.iterdir()) == []  # neither the log nor its temporary folder, nor a backup


def problem(seed: int = 0, n: int = 240):
    """Three classes told apart by the first of 8 features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    return x, np.digitize(x[:, 0], [-0.43, 0.43]).astype("int32")


def fit(trainer, x, y, tmp_path, epochs, patience=10, val=None, batches=None, inputs="inputs", rate=0.05):
    """training.fit as the stages call it: seeded per-epoch batches, a log, a backup; returns the log."""
    data = tf.data.Dataset.from_tensor_slices((x, y))
    batches = batches or (lambda epoch: data.shuffle(len(x), seed=training.epoch_seed(0, epoch)).batch(32))
    val = tf.data.Dataset.from_tensor_slices(val or (x, y)).batch(64)
    backup = training.Backup(tmp_path / "backup", inputs)
    with training.training_log(tmp_path / "log", "t") as log:
        training.fit(trainer, batches, val, epochs=epochs, patience=patience, log_to=log, backup=backup,
                     rate_key="train_head.learning_rate", rate=rate)
    return log


def interrupted_at(stop: int, batches):
    """``batches`` until epoch ``stop`` (0-based), which is interrupted as it starts."""
    def maybe(epoch):
        if epoch == stop:
            raise KeyboardInterrupt
        return batches(epoch)
    return maybe


def new_trainer(precision="float32", dropout=0.2, **kwargs):
    keras.utils.set_random_seed(0)
    head = models.with_precision(models.build_head(problem()[0], 3, 0, dropout), precision)
    return training.Trainer(head, tf.distribute.get_strategy(), 0.05, precision=precision, **kwargs)


def test_the_loop_reports_keras_losses_and_learns_with_class_weights():
    x, y = problem()
    trainer = new_trainer(class_weights={0: 1.0, 1: 2.0, 2: 1.0})
    val = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    loss, accuracy = trainer.evaluate(val)
    probabilities = trainer.model.predict(x, verbose=0)
    assert loss == pytest.approx(float(keras.losses.SparseCategoricalCrossentropy()(y, probabilities)), rel=1e-5)
    assert accuracy == pytest.approx(np.mean(probabilities.argmax(-1) == y))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    first = trainer.train_epoch(data)
    assert first[2] == len(x)  # every image once, the last batch partial
    for _ in range(5):
        last = trainer.train_epoch(data)
    assert last[0] < 0.7 * first[0] and trainer.evaluate(val)[1] > 0.8


def test_fit_keeps_the_epoch_with_the_lowest_val_loss(tmp_path):
    x, y = problem()
    wrong = (y + 1) % 3  # validating on shifted labels: the val loss rises as training learns
    one = new_trainer(dropout=0.0)
    fit(one, x, y, tmp_path / "one", epochs=1, val=(x, wrong))
    four = new_trainer(dropout=0.0)
    log = fit(four, x, y, tmp_path / "four", epochs=4, val=(x, wrong))
    assert len(log.history["val_loss"]) == 4 and np.argmin(log.history["val_loss"]) == 0
    for kept, first in zip(four.model.get_weights(), one.model.get_weights()):
        np.testing.assert_array_equal(kept, first)  # epoch 1's weights, though no early stop came
    metrics = json.loads((tmp_path / "four" / "log" / "metrics.json").read_text())
    assert metrics["step"] == 3 and metrics["eval"]["loss"] == pytest.approx(log.history["val_loss"][-1])


def test_class_weights_scale_each_example_s_loss_by_its_class():
    """training.weighted_losses, the one way the loop and lr_find apply class weights."""
    loss = training.loss(0.0, reduction=None)
    labels, probabilities = tf.constant([0, 1, 1]), tf.constant([[0.5, 0.5]] * 3)
    weights = training.weight_vector({0: 1.0, 1: 3.0}, 2)
    plain = loss(labels, probabilities).numpy()
    np.testing.assert_allclose(training.weighted_losses(loss, weights, labels, probabilities).numpy(),
                               plain * [1, 3, 3], rtol=1e-6)
    assert training.weight_vector(None, 2).numpy().tolist() == [1.0, 1.0]  # None: equal weights


def test_patience_zero_acts_as_one(tmp_path):
    x, y = problem()
    runs = [fit(new_trainer(dropout=0.0), x, y, tmp_path / str(p), epochs=10, patience=p, val=(x, (y + 1) % 3))
            for p in (0, 1)]
    assert len(runs[0].history["val_loss"]) == len(runs[1].history["val_loss"]) == 2


def test_fit_stops_after_patience_epochs_without_improvement(tmp_path, caplog):
    caplog.set_level("INFO")
    x, y = problem()
    log = fit(new_trainer(dropout=0.0), x, y, tmp_path, epochs=10, patience=2, val=(x, (y + 1) % 3))
    assert len(log.history["val_loss"]) == 3  # the best (first) epoch and two more
    assert "early stopping: no lower val loss in the 2 epochs after epoch 1" in caplog.text


def test_a_fit_stopped_mid_run_resumes_from_its_backup_and_ends_the_same(tmp_path, caplog):
    """Killed after epoch 3 of 6 (here: an error as epoch 4 starts), then rerun from scratch: the
    rerun restores epoch 3's weights, optimizer and seeds, and ends exactly as a run never stopped."""
    caplog.set_level("INFO")
    x, y = problem()
    data = tf.data.Dataset.from_tensor_slices((x, y))

    def batches(epoch):
        return data.shuffle(len(x), seed=training.epoch_seed(0, epoch)).batch(32)

    whole = new_trainer()
    whole_log = fit(whole, x, y, tmp_path / "whole", epochs=6, batches=batches)

    with pytest.raises(KeyboardInterrupt):
        fit(new_trainer(), x, y, tmp_path / "run", epochs=6, batches=interrupted_at(3, batches))
    assert json.loads((tmp_path / "run" / "backup" / "counters.json").read_text())["epoch"] == 3
    assert not (tmp_path / "run" / "log").exists()  # the stage's outputs are not written
    resumed = new_trainer()  # a new process: fresh weights and optimizer
    resumed_log = fit(resumed, x, y, tmp_path / "run", epochs=6, batches=batches)
    assert "resuming after epoch 3 of 6 from the backup in" in caplog.text
    assert resumed_log.history == whole_log.history  # the replayed epochs and the rest
    for a, b in zip(resumed.model.get_weights(), whole.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    tsv = (tmp_path / "run" / "log" / "plots" / "metrics" / "eval" / "loss.tsv").read_text().splitlines()
    assert len(tsv) == 7  # a header and all six epochs, as DVCLive logs them


def test_a_backup_from_other_inputs_is_ignored(tmp_path, caplog):
    caplog.set_level("INFO")
    x, y = problem()
    with pytest.raises(KeyboardInterrupt):
        fit(new_trainer(), x, y, tmp_path, epochs=4,
            batches=interrupted_at(2, lambda epoch: tf.data.Dataset.from_tensor_slices((x, y)).batch(32)))
    log = fit(new_trainer(), x, y, tmp_path, epochs=4, inputs="changed params")
    assert "ignoring the backup" in caplog.text and "resuming" not in caplog.text
    assert len(log.history["loss"]) == 4


def test_bfloat16_mixed_precision_trains_above_chance_and_saves_float32(tmp_path):
    x, y = problem()
    trainer = new_trainer("mixed_bfloat16", dropout=0.0)
    assert trainer.model.layers[-2].compute_dtype == "bfloat16" and trainer.model.layers[-1].compute_dtype == "float32"
    log = fit(trainer, x, y, tmp_path, epochs=8)
    assert log.history["val_accuracy"][-1] > 0.8  # chance: 1/3
    keras_files.save(trainer.model, tmp_path / "head.keras")
    saved = keras_files.load(tmp_path / "head.keras")
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    np.testing.assert_allclose(saved.predict(x, verbose=0), trainer.model.predict(x, verbose=0), atol=0.02)


def test_json_outputs_refuse_nan(tmp_path):
    with pytest.raises(StageError, match="m.json: refusing to write a non-finite number"):
        artifacts.write_json(tmp_path / "m.json", {"accuracy": float("nan")})
    assert list(tmp_path.iterdir()) == []
