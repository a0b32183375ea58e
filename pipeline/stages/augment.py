"""augment: data/split + the source (data/images) -> data/augmented/ (train and val TFRecord shards + meta.json).

Every image is resized to base.image_size. Training images are written once
as they are (``train``) and ``augment.copies`` more times through the seeded
transforms (``train_aug``): features are cached once, so random augmentation
has to happen here, before extraction. Each copy's random draws come from the
image's content hash (augmentation.draws), so an image's copies are the same
whatever other images the split holds: extract_features reuses their features. Val images are resized
only. Each image is read from the source and checked against the hash ingest
recorded. Test images are not packed: evaluate and export decode them from the
source exactly as ``pipeline.predict`` decodes a user's images.
"""
from __future__ import annotations

import collections
import functools
import logging
import time

import numpy as np
from tqdm import tqdm

from pipeline.lib import artifacts, augmentation, cli, images, multilabel, params, pools, reuse, runtime, schemas, shards, sources

PARAMS = ["augment", "base.image_size", "seed", "task"]
BATCH = 64  # images decoded and augmented together; bounds memory, not a hyperparameter
log = logging.getLogger("pipeline.stages.augment")


def main() -> None:
    args = cli.start(__doc__, "source", "split", "out", writes=("out",))
    p = params.load(PARAMS)
    source = sources.locate(str(args.source))
    import keras  # TensorFlow's import, once the inputs and params are known good (pipeline/lib/__init__.py)

    runtime.log_devices()
    runtime.set_seed(p.seed)
    size, copies = p.base.image_size, p.augment.copies
    labels = schemas.read_labels(args.split / "labels.json")
    index = {label: i for i, label in enumerate(labels)}
    multi = p.task == "multi_label"

    parts = {split: schemas.read_csv(args.split / f"{split}.csv", schemas.SPLIT_FIELDS) for split in ("train", "val")}
    # A quality-95 JPEG of a photo takes about 3 bits a pixel; half a byte a pixel leaves a margin.
    images_total = len(parts["train"]) * (1 + copies) + len(parts["val"])
    artifacts.check_free_space(args.out, images_total * size * size // 2, "writing the shards")
    # An image whose views the previous output holds (same recipe) is copied from it (reuse.py)
    made = reuse.recipe([__file__, augmentation, images, shards], stage="augment",
                        augment=vars(p.augment), image_size=size, seed=p.seed)
    old = reuse.previous(args.out, made)
    old = shards.Previous(old, ["train", "train_aug", "val"]) if old else None

    def encoded(rows: list[dict], views: int):
        """Each of ``rows``' ``views`` encoded images (the image as it is, then its augmented
        copies), decoded and augmented BATCH rows at a time, in order."""
        decoded = pools.process_batches(functools.partial(images.decode_recorded, source, size), rows, BATCH)
        for start, batch in zip(range(0, len(rows), BATCH), decoded):
            pixels, chunk = np.stack(batch), rows[start:start + BATCH]
            views_of = [[shards.encode(image) for image in pixels]]
            for copy in range(views - 1):
                u = np.stack([augmentation.draws(r["sha256"], copy, p.seed) for r in chunk])
                out = keras.ops.convert_to_numpy(augmentation.apply(p.augment, pixels.astype("float32"), u))
                views_of.append([shards.encode(image) for image in np.clip(np.rint(out), 0, 255).astype(np.uint8)])
            yield from zip(*views_of)

    with artifacts.atomic_dir(args.out) as tmp:
        counts, class_counts, started, computed = {}, {}, time.perf_counter(), 0
        for split, rows in parts.items():  # evaluate and export read the test images as predict does
            writers = [shards.ShardWriter(tmp, split)]
            if split == "train" and copies:
                writers.append(shards.ShardWriter(tmp, "train_aug"))
            keys = [[f"{r['sha256']}/{view}" for view in range(len(writers))] for r in rows]
            known = [old is not None and all(k in old for k in ks) for ks in keys]
            fresh = encoded([r for r, k in zip(rows, known) if not k], len(writers))
            computed += known.count(False)
            y = multilabel.targets(rows, labels) if multi else [index[r["label"]] for r in rows]
            with tqdm(total=len(rows), desc=f"augment {split}", unit="img") as bar:
                for ks, label, reused in zip(keys, y, known):
                    views = [old.image(k) for k in ks] if reused else next(fresh)
                    for writer, key, jpeg in zip(writers, ks, views):
                        writer.write_encoded(jpeg, label, key)
                    bar.update()
            for writer in writers:
                writer.close()
                counts[writer.name] = writer.count
            # images per class (index order of labels): what class weights are computed from
            # (multi_label: images that carry each label)
            found = multilabel.counts(rows) if multi else collections.Counter(r["label"] for r in rows)
            class_counts[split] = [found[label] for label in labels]
        artifacts.write_json(tmp / "meta.json", {"image_size": size, "counts": counts, "labels": labels,
                                                 "class_counts": class_counts,
                                                 **({"task": p.task} if multi else {})})
        reuse.write_recipe(tmp, made)
        seconds = time.perf_counter() - started
    log.info("%d of %d images decoded and augmented; the rest copied from the previous run", computed,
             sum(len(rows) for rows in parts.values()))
    log.info("wrote %s", ", ".join(f"{k}: {v}" for k, v in counts.items()))
    log.info("wrote %d images in %.1f s (%.0f images/s)", sum(counts.values()), seconds,
             sum(counts.values()) / max(seconds, 1e-9))


if __name__ == "__main__":
    cli.run(main)
