"""train-head: data/features + labels.json -> models/head.keras + reports/train_head/ (DVCLive).

A small classifier (train_head.*) trained on the cached features: seconds per
epoch instead of a backbone pass per image. Early stopping on validation loss
keeps the best epoch's weights.
"""
from __future__ import annotations

import logging

import keras
import numpy as np
from dvclive import Live
from dvclive.keras import DVCLiveCallback

from pipeline import artifacts, models, params

PARAMS = ["train_head", "seed"]
log = logging.getLogger("pipeline.train_head")


def main() -> None:
    args = artifacts.start(__doc__, "features", "labels", "model", "live")
    p = params.load(PARAMS)
    models.set_seed(p.seed)
    hp = p.train_head
    labels = artifacts.read_json(args.labels)
    x, y = (np.load(args.features / f"train_{a}.npy") for a in "xy")
    val = tuple(np.load(args.features / f"val_{a}.npy") for a in "xy")
    log.info("%d training and %d validation feature vectors of size %d", len(x), len(val[0]), x.shape[1])

    head = models.build_head(x, len(labels), hp.hidden_units, hp.dropout)
    head.compile(keras.optimizers.Adam(hp.learning_rate), loss="sparse_categorical_crossentropy",
                   metrics=["accuracy"])
    with artifacts.atomic_dir(args.live) as live_dir:
        live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False)
        stop = keras.callbacks.EarlyStopping(patience=hp.patience, restore_best_weights=True)
        head.fit(x, y, batch_size=hp.batch_size, epochs=hp.epochs, validation_data=val,
                 callbacks=[stop, DVCLiveCallback(live=live)], verbose=2)
        val_loss, val_accuracy = head.evaluate(*val, batch_size=hp.batch_size, verbose=0)
        live.summary.update(best_val_loss=val_loss, best_val_accuracy=val_accuracy)
        live.make_summary()
    with artifacts.atomic_file(args.model) as tmp:
        head.save(tmp)
    log.info("best epoch: val accuracy %.4f, val loss %.4f", val_accuracy, val_loss)


if __name__ == "__main__":
    artifacts.run(main)
