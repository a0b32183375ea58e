"""augment: data/split + the source (data/images) -> data/augmented/ (train and val TFRecord shards + meta.json).

Every image is resized to base.image_size. Training images are written once
as they are (``train``) and ``augment.copies`` more times through seeded Keras
preprocessing layers (``train_aug``): features are cached once, so random
augmentation has to happen here, before extraction. Val images are resized
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

from pipeline.lib import artifacts, augmentation, cli, images, multilabel, params, pools, runtime, schemas, shards, sources

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
    augmenter = augmentation.augmenter(p.augment, p.seed)

    parts = {split: schemas.read_csv(args.split / f"{split}.csv", schemas.SPLIT_FIELDS) for split in ("train", "val")}
    # A quality-95 JPEG of a photo takes about 3 bits a pixel; half a byte a pixel leaves a margin.
    images_total = len(parts["train"]) * (1 + copies) + len(parts["val"])
    artifacts.check_free_space(args.out, images_total * size * size // 2, "writing the shards")
    with artifacts.atomic_dir(args.out) as tmp:
        counts, class_counts, started = {}, {}, time.perf_counter()
        for split, rows in parts.items():  # evaluate and export read the test images as predict does
            plain = shards.ShardWriter(tmp, split)
            varied = shards.ShardWriter(tmp, "train_aug") if split == "train" and copies else None
            decoded = pools.process_batches(functools.partial(images.decode_recorded, source, size), rows, BATCH)
            with tqdm(total=len(rows), desc=f"augment {split}", unit="img") as bar:
                for start, batch in zip(range(0, len(rows), BATCH), decoded):
                    pixels = np.stack(batch)
                    chunk = rows[start:start + BATCH]
                    y = multilabel.targets(chunk, labels) if multi else [index[r["label"]] for r in chunk]
                    for image, label in zip(pixels, y):
                        plain.write(image, label)
                    for _ in range(copies if varied else 0):
                        out = keras.ops.convert_to_numpy(augmenter(pixels.astype("float32"), training=True))
                        for image, label in zip(np.clip(np.rint(out), 0, 255).astype(np.uint8), y):
                            varied.write(image, label)
                    bar.update(len(batch))
            for writer in (plain, varied):
                if writer:
                    writer.close()
                    counts[writer.name] = writer.count
            # images per class (index order of labels): what class weights are computed from
            # (multi_label: images that carry each label)
            found = multilabel.counts(rows) if multi else collections.Counter(r["label"] for r in rows)
            class_counts[split] = [found[label] for label in labels]
        artifacts.write_json(tmp / "meta.json", {"image_size": size, "counts": counts, "labels": labels,
                                                 "class_counts": class_counts,
                                                 **({"task": p.task} if multi else {})})
        seconds = time.perf_counter() - started
    log.info("wrote %s", ", ".join(f"{k}: {v}" for k, v in counts.items()))
    log.info("wrote %d images in %.1f s (%.0f images/s)", sum(counts.values()), seconds,
             sum(counts.values()) / max(seconds, 1e-9))


if __name__ == "__main__":
    cli.run(main)
