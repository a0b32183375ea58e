"""extract-features: data/augmented shards -> data/features/*.npy + models/extractor.keras.

The frozen backbone (base.*) with its own preprocessing runs once over train
(originals and augmented copies) and val. Features are written batch by
batch into memory-mapped .npy files, so memory is bounded by the batch, not
the dataset. The extractor is saved too: fine-tuning starts from exactly the
weights that made these features (which matters for ``base.weights: none``).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from pipeline.lib import artifacts, models, params, shards

PARAMS = ["base", "extract.batch_size", "seed"]
PARTS = {"train": ["train", "train_aug"], "val": ["val"]}  # the head trains and validates on these
log = logging.getLogger("pipeline.stages.extract_features")


def main() -> None:
    args = artifacts.start(__doc__, "augmented", "out", "extractor")
    p = params.load(PARAMS)
    models.set_seed(p.seed)  # a weights: none backbone is seeded too
    meta = shards.meta(args.augmented)
    if meta["image_size"] != p.base.image_size:
        raise artifacts.StageError(f"shards in {args.augmented} are {meta['image_size']} px but "
                                   f"base.image_size is {p.base.image_size}: rerun augment (dvc repro)")
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

    started, total = time.perf_counter(), 0
    with artifacts.atomic_dir(args.out) as tmp:
        for part, names in PARTS.items():
            names = [name for name in names if shards.count(args.augmented, name)]  # copies: 0 has no train_aug
            n = sum(shards.count(args.augmented, name) for name in names)
            x = np.lib.format.open_memmap(tmp / f"{part}_x.npy", "w+", np.float32, (n, dim))
            y = np.lib.format.open_memmap(tmp / f"{part}_y.npy", "w+", np.int32, (n,))
            i = 0
            with tqdm(total=n, desc=f"features {part}", unit="img") as bar:
                for images, labels in shards.dataset(args.augmented, names, p.extract.batch_size):
                    k = len(labels)
                    x[i:i + k], y[i:i + k] = forward(images).numpy(), labels.numpy()
                    i += k
                    bar.update(k)
            x.flush(), y.flush()
            del x, y  # close the memory maps before the directory is renamed
            total += n
    seconds = time.perf_counter() - started
    log.info("extracted %d images in %.1f s (%.1f images/s)", total, seconds, total / seconds)
    models.save(extractor, args.extractor)
    log.info("features written to %s", args.out)


if __name__ == "__main__":
    artifacts.run(main)
