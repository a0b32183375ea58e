"""Calibration, unknown and ranking arithmetic (pipeline/lib/confidence.py) on synthetic logits
with a known truth, and the temperature built into a Keras model."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.lib import confidence


def sample(n: int, classes: int = 5, seed: int = 0, spread: float = 2.0):
    """(logits, labels drawn from softmax(logits)): a perfectly calibrated set."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, spread, (n, classes))
    p = confidence.calibrated(logits, 1.0)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, y


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_the_fitted_temperature_recovers_a_known_one(true_temperature):
    logits, y = sample(20_000)
    t = confidence.fit_temperature(logits * true_temperature, y)  # over- or under-confident by that factor
    assert t == pytest.approx(true_temperature, rel=0.05)
    assert confidence.nll(logits * true_temperature, y, t) < confidence.nll(logits * true_temperature, y, 1.0)


def test_temperature_never_changes_the_top_class():
    logits, _ = sample(2_000, classes=10, seed=1)
    logits[:5] = logits[:5, :1]  # ties too
    for t in (0.05, 0.3, 1.0, 4.0, 20.0):
        assert np.array_equal(confidence.calibrated(logits, t).argmax(axis=1), logits.argmax(axis=1))


def test_ece_is_near_zero_when_calibrated_and_large_when_overconfident():
    logits, y = sample(20_000, seed=2)
    assert confidence.ece(confidence.calibrated(logits, 1.0), y) < 0.015
    overconfident = confidence.calibrated(logits * 3, 1.0)
    assert confidence.ece(overconfident, y) > 0.1
    # the bins cover every image once
    assert sum(b["images"] for b in confidence.reliability(overconfident, y)) == len(y)
    assert confidence.brier(overconfident, y) > confidence.brier(confidence.calibrated(logits, 1.0), y)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.95, 1.0])
def test_the_threshold_keeps_the_requested_share(keep):
    values = np.random.default_rng(3).random(997)
    threshold = confidence.threshold_for(values, keep)
    kept = np.mean(values >= threshold)
    assert keep <= kept < keep + 2 / len(values)


def test_separation_of_scores():
    inside, outside = np.linspace(0.6, 1, 100), np.linspace(0, 0.5, 50)
    assert confidence.separation(inside, outside) == {"auroc": 1.0, "fpr_at_95_tpr": 0.0}
    same = np.random.default_rng(4).random(4000)
    result = confidence.separation(same[:2000], same[2000:])
    assert result["auroc"] == pytest.approx(0.5, abs=0.05) and result["fpr_at_95_tpr"] > 0.9


def test_the_ranker_puts_the_most_uncertain_first_and_drops_its_duplicate():
    rng = np.random.default_rng(5)
    probs = confidence.calibrated(rng.normal(0, 3, (50, 4)), 1.0)
    features = rng.normal(0, 1, (50, 32))
    probs[17] = 0.25  # as unsure as four classes allow
    probs[30], features[30] = probs[17], features[17] * 2  # its duplicate (same direction)
    for by in ("margin", "entropy"):
        order, uncertainty = confidence.rank(probs, features, similarity=0.95, by=by)
        assert order[0] == 17 and 30 not in order and len(order) == 49
        assert np.all(np.diff(uncertainty) <= 1e-12)  # least sure first
    assert len(confidence.rank(probs, features, 0.95, limit=5)[0]) == 5


def test_the_temperature_built_into_a_model_gives_the_calibrated_probabilities():
    import keras

    from pipeline.lib import models

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax", name="probabilities")(inputs))
    x = np.random.default_rng(6).normal(0, 3, (32, 6)).astype("float32")
    before = model.predict_on_batch(x)
    models.apply_temperature(model, 2.5)
    expected = confidence.calibrated(confidence.logits_of(before), 2.5)
    calibrated = model.predict_on_batch(x)
    np.testing.assert_allclose(calibrated, expected, atol=1e-5)
    assert np.array_equal(calibrated.argmax(axis=1), before.argmax(axis=1))
    logits_model = models.logits(model)
    logits = logits_model.predict_on_batch(x)  # the calibrated logits, z / T
    np.testing.assert_allclose(confidence.calibrated(logits, 1.0), expected, atol=1e-5)
    np.testing.assert_allclose(model.predict_on_batch(x), calibrated)  # the copy's change leaves the model alone
    with pytest.raises(Exception, match="softmax or sigmoid Dense"):
        models.output_layer(logits_model)  # no softmax left: not a classifier of this pipeline
