"""extract-features: data/augmented shards -> data/features/*.npy + models/extractor.keras.

The frozen backbone (base.*) with its own preprocessing runs once over train
(originals and augmented copies) and val. Features are written batch by
batch into memory-mapped .npy files, so memory is bounded by the batch, not
the dataset. The extractor is saved too: fine-tuning starts from exactly the
weights that made these features (which matters for ``base.weights: none``).
Under ``distribution.strategy: multi_worker`` every machine extracts every n-th
batch and the chief writes them all, in order: the same files one machine writes.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
from tqdm import tqdm

from pipeline.lib import artifacts, cli, distribution, errors, keras_files, models, params, runtime, shards

PARAMS = ["base", "extract.batch_size", "distribution.strategy", "seed"]
PARTS = {"train": ["train", "train_aug"], "val": ["val"]}  # the head trains and validates on these
log = logging.getLogger("pipeline.stages.extract_features")


def in_order(forward, batches, n: int, batch_size: int, strategy, dim: int, label_shape=()):
    """``(features, labels)`` of each of the ``n`` images' batches (a tf.data.Dataset), in order. Across workers, batch
    ``k`` is extracted by worker ``k % workers``, and each round of one batch per worker is gathered
    to every worker (a collective op: memory holds one round)."""
    import tensorflow as tf

    index, workers = distribution.worker_share(strategy)
    if workers == 1:
        for images, labels in batches:
            yield forward(images).numpy(), labels.numpy()
        return
    mine, n_batches = iter(batches.shard(workers, index)), math.ceil(n / batch_size)
    for first in range(0, n_batches, workers):
        if first + index < n_batches:
            images, labels = next(mine)
            features = forward(images)
        else:  # the last round may have no batch for this worker, which must take part all the same
            features, labels = tf.zeros([0, dim]), tf.zeros([0, *label_shape], tf.int32)
        pad = batch_size - len(labels)  # the same shapes on every worker
        where, features, labels = (g.numpy() for g in distribution.all_gather(strategy, (
            tf.constant([[first + index, len(labels)]]), tf.pad(features, [[0, pad], [0, 0]]), tf.pad(labels, [[0, pad]] + [[0, 0]] * len(label_shape)))))
        for slot in np.argsort(where[:, 0]):  # by batch number: the gathered order is the workers'
            k, start = where[slot, 1], slot * batch_size
            yield features[start:start + k], labels[start:start + k]


def main() -> None:
    args = cli.start(__doc__, "augmented", "out", "extractor", writes=("out", "extractor"))
    p = params.load(PARAMS)
    import tensorflow as tf  # once the inputs and params are known good (pipeline/lib/__init__.py)

    runtime.log_devices()
    # Extraction is split across machines only: one machine's devices run it as one device.
    strategy = distribution.strategy("multi_worker") if p.distribution.strategy == "multi_worker" \
        else tf.distribute.get_strategy()
    runtime.set_seed(p.seed)  # a weights: none backbone is seeded too
    meta = shards.meta(args.augmented)
    if meta["image_size"] != p.base.image_size:
        raise errors.StageError(f"shards in {args.augmented} are {meta['image_size']} px but "
                                   f"base.image_size is {p.base.image_size}: rerun augment (dvc repro)")
    label_shape = shards.label_shape(meta)
    extractor = models.build_extractor(p.base)
    # One trace for every batch size (the last batch of each part is smaller): each
    # retrace of the backbone costs about a second.
    size = p.base.image_size
    forward = tf.function(lambda x: extractor(x, training=False),
                          input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    dim = extractor.output_shape[-1]
    log.info("%s (%s weights, %d px, %s pooling): %d features per image",
             p.base.backbone, p.base.weights, p.base.image_size, p.base.pooling, dim)

    # Trace (and let TensorFlow optimise) the graph once up front, so the one-off cost is
    # logged on its own and the throughput below is the loop's (bench/throughput.py).
    started = time.perf_counter()
    forward(tf.zeros([1, size, size, 3]))
    log.info("traced the backbone in %.1f s", time.perf_counter() - started)

    images_total = sum(shards.count(args.augmented, name) for names in PARTS.values() for name in names)
    artifacts.check_free_space(args.out, images_total * (dim + 1) * 4, "writing the features")
    started, total = time.perf_counter(), 0
    with artifacts.atomic_dir(distribution.output_path(args.out, strategy)) as tmp:
        for part, names in PARTS.items():
            names = [name for name in names if shards.count(args.augmented, name)]  # copies: 0 has no train_aug
            n = sum(shards.count(args.augmented, name) for name in names)
            x = np.lib.format.open_memmap(tmp / f"{part}_x.npy", "w+", np.float32, (n, dim))
            # a class index per image, or (multi_label) one 0/1 per label
            y = np.lib.format.open_memmap(tmp / f"{part}_y.npy", "w+", np.int32, (n, *label_shape))
            i = 0
            with tqdm(total=n, desc=f"features {part}", unit="img") as bar, shards.reading(args.augmented):
                batches = shards.dataset(args.augmented, names, p.extract.batch_size)
                for features, labels in in_order(forward, batches, n, p.extract.batch_size, strategy, dim,
                                                     label_shape):
                    k = len(labels)
                    x[i:i + k], y[i:i + k] = features, labels
                    i += k
                    bar.update(k)
            x.flush(), y.flush()
            del x, y  # close the memory maps before the directory is renamed
            total += n
    seconds = time.perf_counter() - started
    log.info("extracted %d images in %.1f s (%.1f images/s)", total, seconds, total / seconds)
    keras_files.save(extractor, distribution.output_path(args.extractor, strategy))
    distribution.barrier(strategy)
    log.info("features written to %s", args.out)


if __name__ == "__main__":
    cli.run(main)
