"""train-head: data/features + labels.json -> models/head.keras + reports/train_head/ (DVCLive).

A small classifier (train_head.*) trained on the cached features: seconds per
epoch instead of a backbone pass per image. Early stopping on validation loss
keeps the best epoch's weights. Imbalanced classes are weighted
(class_weights.*); label smoothing is optional. Runs on one device or several
(distribution.strategy; train_head.batch_size is per device).
"""
from __future__ import annotations

import logging

import numpy as np

from pipeline.lib import artifacts, distribution, models, params, training

PARAMS = ["train_head", "class_weights", "distribution", "seed"]
log = logging.getLogger("pipeline.stages.train_head")


def main() -> None:
    args = artifacts.start(__doc__, "features", "labels", "model", "live")
    p = params.load(PARAMS)
    strategy = distribution.strategy(p.distribution.strategy)  # before any model exists
    models.set_seed(p.seed)
    hp = p.train_head
    labels = artifacts.read_json(args.labels)
    x, y = (np.load(args.features / f"train_{a}.npy") for a in "xy")
    val = tuple(np.load(args.features / f"val_{a}.npy") for a in "xy")
    log.info("%d training and %d validation feature vectors of size %d", len(x), len(val[0]), x.shape[1])
    weights = training.class_weights(np.bincount(y, minlength=len(labels)), labels, p.class_weights.mode,
                                      p.class_weights.auto_ratio)

    with strategy.scope():
        head = models.build_head(x, len(labels), hp.hidden_units, hp.dropout)
        training.compile_classifier(head, hp.learning_rate, hp.label_smoothing)
    batch = distribution.global_batch(hp.batch_size, strategy)
    live_dir = distribution.output_path(args.live, strategy)
    with training.training_log(live_dir, hp.patience, len(x), "Head on cached features",
                               "train_head.learning_rate", hp.learning_rate) as (live, callbacks):
        head.fit(x, y, batch_size=batch, epochs=hp.epochs, validation_data=val,
                 class_weight=weights, callbacks=callbacks, verbose=2)
        val_loss, val_accuracy = head.evaluate(*val, batch_size=batch, verbose=0)
        live.summary.update(best_val_loss=val_loss, best_val_accuracy=val_accuracy,
                            class_weights="balanced" if weights else "none")
    models.save(head, distribution.output_path(args.model, strategy))
    log.info("best epoch: val accuracy %.4f, val loss %.4f", val_accuracy, val_loss)


if __name__ == "__main__":
    artifacts.run(main)
