"""Training helpers shared by train-head, finetune and lr_find: loss, class weights,
learning-rate schedule, compilation, and the training log (DVCLive, early stopping,
curves, speed)."""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf
from dvclive import Live
from dvclive.keras import DVCLiveCallback

from pipeline.lib import artifacts, plots

log = logging.getLogger("pipeline.lib.training")

# Training steps per compiled call, to spread Keras' per-step Python overhead, which a
# small CPU has no core to spare for (bench/README.md).
STEPS_PER_EXECUTION = 8


def compile_classifier(model: keras.Model, learning_rate, label_smoothing: float = 0.0) -> None:
    """Adam, (smoothed) sparse categorical cross-entropy, accuracy: for the head and for fine-tuning.

    ``learning_rate`` is a number or a ``keras.optimizers.schedules`` schedule. Call it in
    the distribution strategy's scope, as the model was built.
    """
    # With two or more replicas, several steps per call fail in Keras 3 ("You must feed a value
    # for placeholder tensor", keras-team/keras#19246, open): one step per call there.
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    model.compile(keras.optimizers.Adam(learning_rate), loss=loss(label_smoothing), metrics=["accuracy"],
                  steps_per_execution=STEPS_PER_EXECUTION if replicas == 1 else 1)


@keras.saving.register_keras_serializable(package="pipeline")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy on integer labels with label smoothing, which Keras' sparse loss lacks:
    the target is ``(1 - s) * one_hot + s / n_classes``."""

    def __init__(self, label_smoothing: float, name: str = "smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        ops = keras.ops
        one_hot = ops.one_hot(ops.reshape(ops.cast(y_true, "int32"), [-1]), ops.shape(y_pred)[-1])
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def loss(label_smoothing: float = 0.0) -> keras.losses.Loss:
    """The training loss: plain sparse cross-entropy, or its smoothed form."""
    if label_smoothing:
        return SmoothedSparseCrossentropy(label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


def class_weights(counts: list[int], labels: list[str], mode: str, auto_ratio: float) -> dict[int, float] | None:
    """Per-class loss weights ``n / (k * count)`` (sklearn's "balanced"), or None for equal weights.

    ``mode`` is ``balanced``, ``none``, or ``auto``: balanced only once the largest class
    has ``auto_ratio`` times the images of the smallest, so a roughly balanced set trains
    exactly as without weights. The choice is logged.
    """
    counts = np.asarray(counts, dtype=np.float64)
    ratio = counts.max() / max(counts.min(), 1)
    if mode == "none" or (mode == "auto" and ratio < auto_ratio):
        log.info("class weights: none (class_weights.mode %s; largest/smallest class %.1fx)", mode, ratio)
        return None
    weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
    log.info("class weights (class_weights.mode %s; largest/smallest class %.1fx): %s", mode, ratio,
             ", ".join(f"{label} {w:.2f}" for label, w in zip(labels, weights)))
    return {i: float(w) for i, w in enumerate(weights)}


def learning_rate(peak: float, schedule: str, warmup_steps: int, total_steps: int):
    """A constant rate, or a schedule: linear warm-up from 0 over ``warmup_steps``, then
    constant or cosine decay to 0 at ``total_steps``."""
    if schedule == "constant" and not warmup_steps:
        return peak
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup_steps else peak, decay_steps=max(1, total_steps - warmup_steps),
        alpha=1.0 if schedule == "constant" else 0.0,  # alpha 1: no decay
        warmup_target=peak if warmup_steps else None, warmup_steps=warmup_steps)


class TrainingSpeed(keras.callbacks.Callback):
    """Log each epoch's training throughput, validation excluded (bench/ reads these lines)."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images = images_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.seconds = time.perf_counter(), None

    def on_test_begin(self, logs=None):  # validation starts: the training part of the epoch is over
        self.seconds = self.seconds or time.perf_counter() - self.start

    def on_epoch_end(self, epoch, logs=None):
        seconds = self.seconds or time.perf_counter() - self.start
        log.info("epoch %d: trained on %d images in %.2f s (%.1f images/s)",
                                           epoch + 1, self.images, seconds, self.images / seconds)


class StopOnNonFinite(keras.callbacks.Callback):
    """Stop the stage (an error, so nothing is saved) once the loss is NaN or infinite: the
    weights are ruined, and every later epoch and metric would be NaN too."""

    def __init__(self, rate_key: str, rate: float):
        super().__init__()
        self.rate_key, self.rate = rate_key, rate

    def on_epoch_end(self, epoch, logs=None):
        for key in ("loss", "val_loss"):
            self._check((logs or {}).get(key), f"in epoch {epoch + 1} ({key})")

    def _check(self, value, where: str) -> None:
        if value is not None and not np.isfinite(float(value)):
            raise artifacts.StageError(
                f"training diverged: the loss became {float(value)} {where}. Lower {self.rate_key} "
                f"(now {self.rate:g}); nothing was written")


@contextlib.contextmanager
def training_log(directory: Path, patience: int, images_per_epoch: int, title: str,
                 rate_key: str, rate: float) -> Iterator[tuple[Live, list]]:
    """Yield ``(live, callbacks)`` for ``fit``: DVCLive metrics and curves, early stopping on
    validation loss that restores the best epoch, a stop on a non-finite loss that names
    ``rate_key``, and a speed log. The curves are also drawn to ``curves.png``. The log lands
    in ``directory`` atomically."""
    with artifacts.atomic_dir(directory) as tmp:
        live = Live(str(tmp), dvcyaml=None, save_dvc_exp=False)  # dvc.yaml declares the outputs
        stop = keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)
        history = keras.callbacks.History()
        yield live, [StopOnNonFinite(rate_key, rate), stop, history, DVCLiveCallback(live=live),
                     TrainingSpeed(images_per_epoch)]
        live.make_summary()
        plots.training_curves(history.history, tmp / "curves.png", title)

