"""Training shared by train-head and finetune: loss, class weights, learning-rate schedule, and
one training loop for every distribution strategy, with early stopping, a stop on a non-finite
loss, DVCLive logs and curves, and a backup after each epoch that a rerun resumes from."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf
from dvclive import Live

from pipeline.lib import artifacts, errors, models, plots_training, rows

log = logging.getLogger("pipeline.lib.training")
# DVCLive's names for the loop's metrics: what its Keras callback wrote, so plots and
# `dvc metrics diff` keep their keys.
LIVE_NAMES = {"loss": "train/loss", "accuracy": "train/accuracy", "val_loss": "eval/loss",
              "val_accuracy": "eval/accuracy"}


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


def loss(label_smoothing: float = 0.0, reduction: str | None = "sum_over_batch_size") -> keras.losses.Loss:
    """The training loss: plain sparse cross-entropy, or its smoothed form."""
    if label_smoothing:
        return SmoothedSparseCrossentropy(label_smoothing, reduction=reduction)
    return keras.losses.SparseCategoricalCrossentropy(reduction=reduction)


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


def label_weights(positives: list[int], images: int, labels: list[str], mode: str,
                  auto_ratio: float) -> np.ndarray | None:
    """task: multi_label's class weights: per label, a weight for its absent (row 0) and its present
    (row 1) targets, ``images / (2 * count)`` of each (sklearn's "balanced" for one label's yes/no),
    or None for equal weights. ``auto`` weighs once the commonest label is on ``auto_ratio`` times
    the images of the rarest, as ``class_weights`` does for classes. The choice is logged."""
    positives = np.asarray(positives, dtype=np.float64)
    ratio = positives.max() / max(positives.min(), 1)
    if mode == "none" or (mode == "auto" and ratio < auto_ratio):
        log.info("label weights: none (class_weights.mode %s; commonest/rarest label %.1fx)", mode, ratio)
        return None
    weights = images / (2 * np.maximum(np.stack([images - positives, positives]), 1))
    log.info("label weights (class_weights.mode %s; commonest/rarest label %.1fx), present / absent: %s", mode,
             ratio, ", ".join(f"{label} {w1:.2f}/{w0:.2f}" for label, w0, w1 in zip(labels, *weights)))
    return weights


def multi_label_losses(weights: tf.Tensor, labels, probabilities, label_smoothing: float = 0.0) -> tf.Tensor:
    """task: multi_label: each example's binary cross-entropy, averaged over its labels, each label's
    present and absent targets weighted by ``weights`` (``label_weights``' 2 x labels, or ones).
    Label smoothing pulls each 0/1 target towards 1/2 by ``label_smoothing / 2``."""
    y = tf.cast(labels, tf.float32)
    weight = tf.gather(weights, 0) * (1 - y) + tf.gather(weights, 1) * y
    if label_smoothing:
        y = y * (1 - label_smoothing) + 0.5 * label_smoothing
    p = tf.clip_by_value(tf.cast(probabilities, tf.float32), 1e-7, 1 - 1e-7)
    return tf.reduce_mean(-weight * (y * tf.math.log(p) + (1 - y) * tf.math.log(1 - p)), axis=-1)


def weight_vector(class_weights: dict[int, float] | None, n_classes: int) -> tf.Tensor:
    """``class_weights()``'s answer (None: equal weights) as one weight per class index."""
    return tf.constant([(class_weights or {}).get(i, 1.0) for i in range(n_classes)], tf.float32)


def weighted_losses(loss_fn: keras.losses.Loss, weights: tf.Tensor, labels, probabilities) -> tf.Tensor:
    """Each example's loss (``loss_fn`` with ``reduction=None``) times its class's weight: the one
    way class weights are applied, by the training loop and by lr_find alike."""
    return loss_fn(labels, probabilities) * tf.gather(weights, labels)


def learning_rate(peak: float, schedule: str, warmup_steps: int, total_steps: int):
    """A constant rate, or a schedule: linear warm-up from 0 over ``warmup_steps``, then
    constant or cosine decay to 0 at ``total_steps``."""
    if schedule == "constant" and not warmup_steps:
        return peak
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup_steps else peak, decay_steps=max(1, total_steps - warmup_steps),
        alpha=1.0 if schedule == "constant" else 0.0,  # alpha 1: no decay
        warmup_target=peak if warmup_steps else None, warmup_steps=warmup_steps)


class Trainer:
    """Adam on class-weighted (smoothed) sparse cross-entropy, one compiled call per epoch.

    TensorFlow's custom-training-loop recipe for ``tf.distribute``: a step run on every replica
    by ``strategy.run`` over a distributed dataset, its sums reduced across replicas. It works
    under every strategy, MultiWorkerMirroredStrategy included, where Keras 3's ``fit`` does not
    (keras-team/keras#20585), so there is one loop for all. Each global batch is split over the
    replicas (``tf.data`` DATA sharding), and a step's loss is its weighted sum divided by the
    global batch's size, so the gradients the optimizer sums over replicas are the global batch's
    mean however it was split: one device and many train alike. Build the model and call this
    in the strategy's scope; ``precision`` is the model's dtype policy (``models.with_precision``).
    """

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy, learning_rate,
                 label_smoothing: float = 0.0, class_weights: dict[int, float] | np.ndarray | None = None,
                 precision: str = "float32"):
        self.model, self.strategy = model, strategy
        optimizer = keras.optimizers.Adam(learning_rate)
        if precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)  # float16 gradients underflow otherwise
        optimizer.build(model.trainable_variables)  # here, in the scope: not inside the compiled step
        self.optimizer = optimizer
        n_classes = model.output_shape[-1]
        # task: multi_label ends in sigmoids (one yes/no per label): binary cross-entropy, the
        # "accuracy" the share of labels right at 0.5; ``class_weights`` then ``label_weights``'.
        self.multi_label = models.is_multi_label(model)
        if self.multi_label:
            self.class_weights = tf.constant(np.ones((2, n_classes)) if class_weights is None else class_weights,
                                             tf.float32)
            self.loss = lambda labels, p: multi_label_losses(self.class_weights, labels, p, label_smoothing)
        else:
            self.loss = loss(label_smoothing, reduction=None)
            self.class_weights = weight_vector(class_weights, n_classes)
        self._train = tf.function(self._over_batches(self._train_step))
        self._test = tf.function(self._over_batches(self._test_step))

    def train_epoch(self, batches: tf.data.Dataset) -> tuple[float, float, int]:
        """One pass over ``batches`` (global batches): mean training loss, accuracy, images."""
        return self._result(self._train(*self._feed(batches)))

    def evaluate(self, batches: tf.data.Dataset) -> tuple[float, float]:
        """Mean loss and accuracy over ``batches``, unweighted, in inference mode."""
        return self._result(self._test(*self._feed(batches)))[:2]

    def state(self) -> list[tf.Variable]:
        """Everything a resumed run needs: the model's weights and random-seed states, the optimizer's."""
        return list(self.model.variables) + list(self.optimizer.variables)

    def _feed(self, batches: tf.data.Dataset):
        """The compiled epoch's arguments: an iterator over the distributed batches and the step count.
        (An iterator made out here, not a loop over the dataset inside the function, which ran
        fine-tuning slower: docs/performance.md.)"""
        steps = int(batches.cardinality())
        if steps < 0:
            raise ValueError("training.Trainer needs batches of known length (tf.data cardinality)")
        options = tf.data.Options()  # every worker reads all, takes its share of each global batch
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return iter(self.strategy.experimental_distribute_dataset(batches.with_options(options))), tf.constant(steps)

    @staticmethod
    def _result(sums) -> tuple[float, float, int]:
        total_loss, correct, n = (float(v) for v in sums.numpy())
        return total_loss / max(n, 1), correct / max(n, 1), int(n)

    def _over_batches(self, step: Callable) -> Callable:
        def run(iterator, steps):
            sums = tf.zeros([3])
            for _ in tf.range(steps):
                images, labels = next(iterator)
                sums += self.strategy.reduce("SUM", self.strategy.run(step, args=(images, labels)), axis=None)
            return sums
        return run

    def _train_step(self, images, labels):
        n = tf.cast(tf.shape(labels)[0], tf.float32)
        global_n = tf.distribute.get_replica_context().all_reduce("SUM", n)
        with tf.GradientTape() as tape:
            probabilities = self.model(images, training=True)
            losses = self.loss(labels, probabilities) if self.multi_label else \
                weighted_losses(self.loss, self.class_weights, labels, probabilities)
            scaled = self.optimizer.scale_loss(tf.reduce_sum(losses) / global_n)
        variables = self.model.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return self._sums(labels, probabilities, losses)

    def _test_step(self, images, labels):
        probabilities = self.model(images, training=False)
        return self._sums(labels, probabilities, self.loss(labels, probabilities))

    def _sums(self, labels, probabilities, losses):
        if self.multi_label:  # per image, the share of its labels right at 0.5
            right = tf.equal(tf.cast(probabilities >= 0.5, tf.int32), tf.cast(labels, tf.int32))
            correct = tf.reduce_sum(tf.reduce_mean(tf.cast(right, tf.float32), axis=-1))
            n = tf.cast(tf.shape(labels)[0], tf.float32)
        else:
            predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            correct = tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32))
            n = tf.cast(tf.size(labels), tf.float32)
        return tf.stack([tf.reduce_sum(tf.cast(losses, tf.float32)), correct, n])


class Backup:
    """The state of a fit after its last finished epoch, in a scratch folder outside DVC's outputs,
    so a stage killed mid-fit (SIGTERM, SIGKILL, a lost machine) resumes there when rerun.

    It holds the trainer's variables (weights, optimizer, random-seed states), the best epoch's
    weights and the loop's counters, written atomically after every epoch, and ``inputs``, a
    fingerprint of the stage's params and input files: a backup made from other inputs is
    ignored. The stage removes the folder once its outputs are written.
    """

    def __init__(self, directory: Path, inputs: str):
        self.directory, self.inputs = Path(directory), inputs

    def save(self, trainer: Trainer, counters: dict, best_weights: list[np.ndarray]) -> None:
        with artifacts.atomic_dir(self.directory, artifacts.BACKUP) as tmp:
            np.savez(tmp / "state.npz", *[np.asarray(v.numpy()) for v in trainer.state()])
            np.savez(tmp / "best.npz", *best_weights)
            (tmp / "counters.json").write_text(json.dumps({"inputs": self.inputs, **counters}))

    def restore(self, trainer: Trainer) -> tuple[dict, list[np.ndarray]] | None:
        """The saved counters and best weights, the trainer's variables set back; None if no usable backup."""
        path = self.directory / "counters.json"
        if not path.is_file():
            return None
        counters = json.loads(path.read_text())
        if counters.pop("inputs") != self.inputs:
            log.warning("ignoring the backup in %s: its params or input files differ from this run's", self.directory)
            self.clear()
            return None
        with np.load(self.directory / "state.npz") as state, np.load(self.directory / "best.npz") as best:
            variables = trainer.state()
            if len(state.files) != len(variables):
                log.warning("ignoring the backup in %s: it holds another model", self.directory)
                self.clear()
                return None
            for i, v in enumerate(variables):
                v.assign(state[f"arr_{i}"])
            return counters, [best[f"arr_{i}"] for i in range(len(best.files))]

    def clear(self) -> None:
        """Remove the backup: call it once the stage's outputs are written."""
        shutil.rmtree(self.directory, ignore_errors=True)


def fingerprint(params, *inputs: Path) -> str:
    """A digest of the params a stage read and its input files' names, sizes and times: what a
    backup must have been made from to be resumed."""
    digest = hashlib.sha256(repr(params).encode())
    for path in map(Path, inputs):
        for f in sorted([path] if path.is_file() else path.rglob("*")):
            if f.is_file():
                stat = f.stat()
                digest.update(f"{f}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


class EpochLog:
    """Each epoch's metrics, to DVCLive (one step per epoch) and to ``history`` for the curves."""

    def __init__(self, live: Live):
        self.live, self.history = live, {}

    def record(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.live.log_metric(LIVE_NAMES[key], value)
            self.history.setdefault(key, []).append(value)
        self.live.next_step()


@contextlib.contextmanager
def training_log(directory: Path, title: str) -> Iterator[EpochLog]:
    """Yield an ``EpochLog`` writing to ``directory``: DVCLive's metrics and plots, and the curves
    drawn to ``curves.png``. The folder lands atomically."""
    with artifacts.atomic_dir(directory) as tmp:
        epoch_log = EpochLog(Live(str(tmp), dvcyaml=None, save_dvc_exp=False))  # dvc.yaml declares the outputs
        yield epoch_log
        epoch_log.live.end()  # writes the summary, the step of the last epoch
        plots_training.training_curves(epoch_log.history, tmp / "curves.png", title)


def fit(trainer: Trainer, batches: Callable[[int], tf.data.Dataset], val: tf.data.Dataset, *, epochs: int,
        patience: int, log_to: EpochLog, backup: Backup, rate_key: str, rate: float) -> None:
    """Train for up to ``epochs`` on ``batches(epoch)`` and leave the model at the epoch with the
    lowest validation loss.

    Early stopping after ``patience`` epochs without a lower validation loss; a NaN or infinite
    loss stops the stage with an error naming ``rate_key`` (nothing is saved). ``batches`` is
    called per epoch and must depend only on the epoch (seeded shuffle and augmentation), so a
    run resumed from ``backup`` sees the same data as an uninterrupted one and ends the same.
    """
    counters = {"epoch": 0, "best_loss": math.inf, "best_epoch": 0, "wait": 0}
    best_weights = None
    resumed = backup.restore(trainer)
    if resumed:
        counters, best_weights = resumed
        history = counters.pop("history")
        for values in zip(*history.values()):  # the finished epochs' metrics, into this run's log
            log_to.record(dict(zip(history, values)))
        log.info("resuming after epoch %d of %d from the backup in %s (best so far: epoch %d, val loss %.4f)",
                 counters["epoch"], epochs, backup.directory, counters["best_epoch"], counters["best_loss"])
    patience = max(patience, 1)  # 0 acts as 1 (params.py says so): stop after the first epoch without a lower val loss
    for epoch in range(counters["epoch"], epochs):
        if counters["wait"] >= patience:
            break
        started = time.perf_counter()
        train_loss, train_accuracy, images = trainer.train_epoch(batches(epoch))
        seconds = time.perf_counter() - started
        val_loss, val_accuracy = trainer.evaluate(val)
        for key, value in (("loss", train_loss), ("val_loss", val_loss)):
            if not math.isfinite(value):
                backup.clear()
                raise errors.StageError(
                    f"training diverged: the loss became {value} in epoch {epoch + 1} ({key}). Lower {rate_key} "
                    f"(now {rate:g}); nothing was written")
        log_to.record({"loss": train_loss, "accuracy": train_accuracy, "val_loss": val_loss,
                       "val_accuracy": val_accuracy})
        log.info("epoch %d/%d: loss %.4f, accuracy %.4f, val loss %.4f, val accuracy %.4f", epoch + 1, epochs,
                 train_loss, train_accuracy, val_loss, val_accuracy)
        log.info("epoch %d: trained on %d images in %.2f s (%.1f images/s)",  # bench/ reads this line
                 epoch + 1, images, seconds, images / seconds)
        if val_loss < counters["best_loss"]:
            counters.update(best_loss=val_loss, best_epoch=epoch + 1, wait=0)
            best_weights = trainer.model.get_weights()
        else:
            counters["wait"] += 1
        counters["epoch"] = epoch + 1
        backup.save(trainer, {**counters, "history": log_to.history}, best_weights)
    if counters["wait"] >= patience:
        log.info("early stopping: no lower val loss in the %d epochs after epoch %d", patience, counters["best_epoch"])
    trainer.model.set_weights(best_weights)


def feature_batches(x, y: np.ndarray, seed: int | None, epoch: int, batch: int) -> tf.data.Dataset:
    """Epoch ``epoch``'s shuffled batches of cached features (train_head, ``lr_find head``), or with
    ``seed`` None all of them in order (validation). ``x`` is an array or a ``rows.Reader``: each
    batch is read when it is due, so memory holds a few batches, never the features."""
    order = np.arange(len(x)) if seed is None else np.random.default_rng(epoch_seed(seed, epoch)).permutation(len(x))
    take = x.take if isinstance(x, rows.Reader) else x.__getitem__  # (an array's own take flattens)

    def read():
        for start in range(0, len(order), batch):
            picked = order[start:start + batch]
            yield take(picked), y[picked]
    ds = tf.data.Dataset.from_generator(read, output_signature=(
        tf.TensorSpec([None, *x.shape[1:]], tf.float32), tf.TensorSpec([None, *y.shape[1:]], tf.as_dtype(y.dtype))))
    return ds.apply(tf.data.experimental.assert_cardinality(-(-len(x) // batch))).prefetch(2)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffle and augmentation: a function of the params' seed and the
    epoch alone, so a resumed run draws what an uninterrupted one would."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] >> 1)
