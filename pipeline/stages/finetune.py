"""finetune: shards + models/extractor.keras + models/head.keras -> models/model.keras + reports/finetune/.

The Keras recipe's second phase: one model (preprocessing, backbone, trained
head), the backbone's top ``finetune.unfreeze_layers`` layers unfrozen with
every BatchNormalization layer kept in inference mode, trained on the training
images (optionally through the augment.* transforms, on the fly) at a low
learning rate, constant or warmed up and cosine-decayed (finetune.schedule).
The best epoch by validation loss is kept, and if no epoch beats the head-only
starting point, the starting weights are kept. Runs on one device or several
(distribution.strategy; finetune.batch_size is per device), in float32 or mixed
precision (distribution.precision). A run stopped mid-fit resumes from its last
finished epoch, kept in the --backup scratch folder, when rerun.
"""
from __future__ import annotations

import logging
import math

from pipeline.lib import artifacts, cli, distribution, finetuning, keras_files, params, runtime, shards, training

PARAMS = ["finetune", "class_weights", "distribution", "augment.flip", "augment.rotation", "augment.zoom",
          "augment.translation", "augment.contrast", "seed"]
log = logging.getLogger("pipeline.stages.finetune")


def main() -> None:
    args = cli.start(__doc__, "augmented", "extractor", "head", "model", "live", "backup",
                           writes={"model": None, "live": None, "backup": artifacts.BACKUP})
    p = params.load(PARAMS)
    runtime.log_devices()
    hp = p.finetune
    strategy = distribution.strategy(p.distribution.strategy)  # before any model exists
    runtime.set_seed(p.seed)
    meta = shards.meta(args.augmented)
    n_train = meta["counts"]["train"]
    batch = distribution.global_batch(hp.batch_size, strategy)
    steps = math.ceil(n_train / batch)
    rate = training.learning_rate(hp.learning_rate, hp.schedule, round(hp.warmup_epochs * steps), hp.epochs * steps)
    if meta.get("task") == "multi_label":  # class_counts: the training images that carry each label
        weights = training.label_weights(meta["class_counts"]["train"], n_train, meta["labels"],
                                         p.class_weights.mode, p.class_weights.auto_ratio)
    else:
        weights = training.class_weights(meta["class_counts"]["train"], meta["labels"], p.class_weights.mode,
                                          p.class_weights.auto_ratio)
    with strategy.scope():  # the variables live on every replica
        model = finetuning.unfrozen_model(args.extractor, args.head, hp.unfreeze_layers, p.distribution.precision)
        # A fresh optimizer once `trainable` has changed, as the recipe says, at the low fine-tuning rate.
        trainer = training.Trainer(model, strategy, rate, hp.label_smoothing, weights, p.distribution.precision)

    with shards.reading(args.augmented):  # a damaged shard: one line naming data/augmented
        val = shards.dataset(args.augmented, "val", batch)
        start_loss, start_accuracy = trainer.evaluate(val)
        start_weights = model.get_weights()
        log.info("before fine-tuning: val accuracy %.4f, val loss %.4f", start_accuracy, start_loss)

        backup = training.Backup(distribution.scratch_path(args.backup, strategy),
                                 training.fingerprint(p, args.augmented, args.extractor, args.head))
        with training.training_log(distribution.output_path(args.live, strategy), "Fine-tuning") as epoch_log:
            training.fit(trainer, lambda epoch: finetuning.training_batches(args.augmented, p, batch, epoch), val,
                         epochs=hp.epochs, patience=hp.patience, log_to=epoch_log, backup=backup,
                         rate_key="finetune.learning_rate", rate=hp.learning_rate)
            if min(epoch_log.history["val_loss"]) >= start_loss:
                log.warning("no epoch improved on the head-only val loss %.4f: keeping the starting weights",
                            start_loss)
                model.set_weights(start_weights)
            val_loss, val_accuracy = trainer.evaluate(val)
            epoch_log.live.summary.update(start_val_loss=start_loss, start_val_accuracy=start_accuracy,
                                       best_val_loss=val_loss, best_val_accuracy=val_accuracy)
    keras_files.save(model, distribution.output_path(args.model, strategy))
    backup.clear()
    log.info("kept: val accuracy %.4f, val loss %.4f", val_accuracy, val_loss)


if __name__ == "__main__":
    cli.run(main)
