"""extract-features: data/augmented shards + data/embeddings -> data/features/*.npy + models/extractor.keras.

The frozen backbone (base.*) with its own preprocessing runs once over train
(originals and augmented copies) and val. embed has already run it over every
original image: an original view's features are copied from its
``original.npy`` when embed's extractor is this one (the same base.* params and
weights fingerprint), so the backbone runs here on the augmented copies only.
Features are written batch by
batch into .npy files through the file (rows.Writer), so memory is bounded by the batch, not
the dataset. The extractor is saved too: fine-tuning starts from exactly the
weights that made these features (which matters for ``base.weights: none``).
``<part>_keys.npy`` holds each row's key (the sha256 of its encoded image): a
record the previous output holds, made by the same recipe, is copied from it
instead of extracted again (pipeline/lib/reuse.py).
Under ``distribution.strategy: multi_worker`` every machine extracts every n-th
batch and the chief writes them all, in order: the same files one machine writes.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
from tqdm import tqdm

from pipeline.lib import artifacts, cli, distribution, errors, keras_files, models, params, reuse, rows, runtime, schemas, shards

PARAMS = ["base", "extract.batch_size", "distribution.strategy", "seed"]
PARTS = {"train": ["train", "train_aug"], "val": ["val"]}  # the head trains and validates on these
KEY_BYTES = 32  # a record's key: the sha256 of its encoded image (shards.index)
log = logging.getLogger("pipeline.stages.extract_features")


def in_order(forward, batches, n: int, batch_size: int, strategy, dim: int, label_shape=()):
    """``(features, labels)`` of each of the ``n`` images' batches (a tf.data.Dataset), in order. Across workers, batch
    ``k`` is extracted by worker ``k % workers``, and each round of one batch per worker is gathered
    to every worker (a collective op: memory holds one round)."""
    import tensorflow as tf

    index, workers = distribution.worker_share(strategy)
    if workers == 1:
        for images, labels in batches:
            yield np.asarray(forward(images)), labels.numpy()
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


class Originals:
    """embed's features of each original image (``original.npy``), by the image's sha256, where
    embed's extractor is ``made``'s (same base.* params, weights and libraries); else empty (logged)."""

    def __init__(self, embeddings, made: dict):
        embed = reuse.made_by(embeddings) or {}
        differs = sorted(k for k in ("base", "weights", "tensorflow", "keras") if embed.get(k) != made[k])
        self.rows, self.features = {}, None
        if differs:
            log.info("computing the original views too: %s was made with other %s", embeddings, ", ".join(differs))
            return
        images = schemas.read_csv(embeddings / "images.csv", schemas.MANIFEST_FIELDS)
        self.features = schemas.read_npy(embeddings / "original.npy", "float32", 2, rows=True)
        if len(self.features) != len(images):
            raise errors.damaged(embeddings / "original.npy", f"{len(self.features)} rows for {len(images)} images")
        self.rows = {r["sha256"]: i for i, r in reversed(list(enumerate(images)))}

    def find(self, views: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(records, rows)``: record ``records[i]`` (view 0 of an image embed holds) is row ``rows[i]``."""
        pairs = [(i, self.rows[v[:-2]]) for i, v in enumerate(views) if v.endswith("/0") and v[:-2] in self.rows]
        found = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        return found[:, 0], found[:, 1]


def main() -> None:
    args = cli.start(__doc__, "augmented", "embeddings", "out", "extractor", writes=("out", "extractor"))
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

    # A record the previous output holds (same encoded image, same recipe) is copied, not computed
    # (reuse.py). Across machines every record is computed: the workers must agree on the work.
    made = reuse.recipe([__file__, models, shards], stage="extract_features", base=vars(p.base),
                        seed=p.seed, weights=models.fingerprint(extractor))
    old = reuse.previous(args.out, made) if distribution.worker_share(strategy)[1] == 1 else None
    originals = Originals(args.embeddings, made)  # every worker reads the same files: they agree
    padded = reuse.Padded(forward, p.extract.batch_size)
    images_total = sum(shards.count(args.augmented, name) for names in PARTS.values() for name in names)
    artifacts.check_free_space(args.out, images_total * (dim + 1) * 4, "writing the features")
    started, total = time.perf_counter(), 0
    with artifacts.atomic_dir(distribution.output_path(args.out, strategy)) as tmp:
        for part, names in PARTS.items():
            names = [name for name in names if shards.count(args.augmented, name)]  # copies: 0 has no train_aug
            keys, labels, views = shards.index(args.augmented, names)
            n = len(keys)
            x = rows.Writer(tmp / f"{part}_x.npy", np.float32, (n, dim))
            # a class index per image, or (multi_label) one 0/1 per label
            np.save(tmp / f"{part}_y.npy", labels)
            np.save(tmp / f"{part}_keys.npy", np.frombuffer(b"".join(keys), np.uint8).reshape(n, KEY_BYTES))
            todo = np.ones(n, bool)
            embedded, at = originals.find(views)
            reuse.copy_rows(x, embedded, originals.features, at)
            todo[embedded] = False
            reused = 0
            if old is not None:  # the augmented copies the previous output holds
                new, was = reuse.matches(keys, [k.tobytes() for k in np.load(old / f"{part}_keys.npy")])
                new, was = new[todo[new]], was[todo[new]]
                reuse.copy_rows(x, new, schemas.read_npy(old / f"{part}_x.npy", "float32", 2, rows=True), was)
                todo[new], reused = False, len(new)
            where = np.flatnonzero(todo)
            log.info("features %s: %d of %d images embedded by embed, %d from the previous run; extracting %d",
                     part, len(embedded), n, reused, len(where))
            i = 0
            with tqdm(total=len(where), desc=f"features {part}", unit="img") as bar, shards.reading(args.augmented):
                batches = shards.dataset(args.augmented, names, p.extract.batch_size, only=todo)
                for features, _ in in_order(padded, batches, len(where), p.extract.batch_size, strategy, dim,
                                            label_shape):
                    k = len(features)
                    x.write(where[i:i + k], features)
                    i += k
                    bar.update(k)
            x.close()
            total += len(where)
        reuse.write_recipe(tmp, made)
    seconds = time.perf_counter() - started
    log.info("extracted %d images in %.1f s (%.1f images/s)", total, seconds, total / seconds)
    keras_files.save(extractor, distribution.output_path(args.extractor, strategy))
    distribution.barrier(strategy)
    log.info("features written to %s", args.out)


if __name__ == "__main__":
    cli.run(main)
