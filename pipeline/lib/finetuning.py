"""The fine-tuning set-up the finetune stage and ``lr_find finetune`` share, so the range test
trains what the stage would: the assembled model with the backbone's top layers unfrozen, and an
epoch's training batches."""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.lib import augmentation, keras_files, models, shards, training

log = logging.getLogger("pipeline.lib.finetuning")


def unfrozen_model(extractor: Path, head: Path, unfreeze_layers: int, precision: str):
    """Preprocessing, backbone and trained head as one model computing in ``precision``, the
    backbone's top layers unfrozen (BatchNorm excluded). Call it in the distribution strategy's scope."""
    model = models.with_precision(models.assemble(keras_files.load(extractor), keras_files.load(head)), precision)
    backbone = models.backbone_of(model)
    n_trainable = models.unfreeze_top(backbone, unfreeze_layers)
    log.info("%s: top %d of %d layers unfrozen (%d with weights, BatchNorm excluded)", backbone.name,
             min(unfreeze_layers, len(backbone.layers)), len(backbone.layers), n_trainable)
    return model


def training_batches(augmented: Path, p, batch: int, epoch: int):
    """Epoch ``epoch``'s shuffled training batches, through the augment.* transforms if
    finetune.online_augmentation, both seeded by the epoch (training.epoch_seed)."""
    seed = training.epoch_seed(p.seed, epoch)
    transform = augmentation.online_augmentation(p.augment, seed) if p.finetune.online_augmentation else None
    return shards.dataset(augmented, "train", batch, shuffle_seed=seed, transform=transform)
