"""train-head: data/features + labels.json -> models/head.keras + reports/train_head/ (DVCLive).

A small classifier (train_head.*) trained on the cached features: seconds per
epoch instead of a backbone pass per image. Early stopping on validation loss
keeps the best epoch's weights. Imbalanced classes are weighted
(class_weights.*); label smoothing is optional. Runs on one device or several
(distribution.strategy; train_head.batch_size is per device), in float32 or mixed
precision (distribution.precision). A run stopped mid-fit resumes from its last
finished epoch, kept in the --backup scratch folder, when rerun.
"""
from __future__ import annotations

import logging

import numpy as np

from pipeline.lib import artifacts, cli, distribution, keras_files, models, params, runtime, schemas, training

PARAMS = ["train_head", "class_weights", "distribution", "seed"]
log = logging.getLogger("pipeline.stages.train_head")


def main() -> None:
    args = cli.start(__doc__, "features", "labels", "model", "live", "backup",
                           writes={"model": None, "live": None, "backup": artifacts.BACKUP})
    p = params.load(PARAMS)
    hp = p.train_head
    labels = schemas.read_labels(args.labels)
    multi = schemas.features_are_multi_label(args.features)  # task: multi_label, one 0/1 per label
    # Read a batch at a time when it is due: memory does not grow with the images
    x, y = schemas.read_features(args.features, "train", len(labels), multi, rows=True)
    val = schemas.read_features(args.features, "val", len(labels), multi, rows=True)

    runtime.log_devices()
    strategy = distribution.strategy(p.distribution.strategy)  # before any model exists
    runtime.set_seed(p.seed)
    log.info("%d training and %d validation feature vectors of size %d", len(x), len(val[0]), x.shape[1])
    if multi:
        weights = training.label_weights(y.sum(axis=0), len(y), labels, p.class_weights.mode,
                                         p.class_weights.auto_ratio)
    else:
        weights = training.class_weights(np.bincount(y, minlength=len(labels)), labels, p.class_weights.mode,
                                          p.class_weights.auto_ratio)

    with strategy.scope():
        head = models.with_precision(models.build_head(x, len(labels), hp.hidden_units, hp.dropout, multi),
                                     p.distribution.precision)
        trainer = training.Trainer(head, strategy, hp.learning_rate, hp.label_smoothing, weights,
                                   p.distribution.precision)
    batch = distribution.global_batch(hp.batch_size, strategy)
    val = training.feature_batches(*val, None, 0, batch)
    backup = training.Backup(distribution.scratch_path(args.backup, strategy),
                             training.fingerprint(p, args.features, args.labels))
    with training.training_log(distribution.output_path(args.live, strategy), "Head on cached features") as epoch_log:
        training.fit(trainer, lambda epoch: training.feature_batches(x, y, p.seed, epoch, batch), val, epochs=hp.epochs, patience=hp.patience, log_to=epoch_log, backup=backup,
                     rate_key="train_head.learning_rate", rate=hp.learning_rate)
        val_loss, val_accuracy = trainer.evaluate(val)
        epoch_log.live.summary.update(best_val_loss=val_loss, best_val_accuracy=val_accuracy,
                                   class_weights="none" if weights is None else "balanced")
    keras_files.save(head, distribution.output_path(args.model, strategy))
    backup.clear()
    log.info("best epoch: val accuracy %.4f, val loss %.4f", val_accuracy, val_loss)


if __name__ == "__main__":
    cli.run(main)
