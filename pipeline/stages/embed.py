"""embed: data/manifest.csv + the source (data/images) -> data/embeddings/ (features.npy + images.csv).

Every image ingest kept, of every split, goes once through the frozen backbone
(base.*), un-augmented: ``features.npy`` holds one embedding per manifest row,
in manifest order: the sum of the image's and its mirror image's features,
so that a mirrored copy has the very same embedding (and a cropped one a
closer one) while distinct images come no closer (docs/data.md#the-audit).
``images.csv`` is the manifest with each image's measured quality
(brightness, contrast, sharpness, entropy: images.quality). Split reads
them to keep near duplicates together, the audit to find what is wrong with
the data. Features are written batch by batch into a memory-mapped file, so
memory holds a few batches, never the dataset.
"""
from __future__ import annotations

import functools
import logging
import time

import numpy as np
from tqdm import tqdm

from pipeline.lib import artifacts, cli, images, models, params, pools, quality, runtime, schemas, sources

PARAMS = ["base", "extract.batch_size", "seed"]
log = logging.getLogger("pipeline.stages.embed")


def main() -> None:
    args = cli.start(__doc__, "source", "manifest", "out", writes=("out",))
    p = params.load(PARAMS)
    source = sources.locate(str(args.source))
    import tensorflow as tf  # once the inputs and params are known good (pipeline/lib/__init__.py)

    runtime.log_devices()
    runtime.set_seed(p.seed)  # a weights: none backbone is seeded too
    rows = schemas.read_csv(args.manifest, schemas.MANIFEST_FIELDS)
    size, batch = p.base.image_size, p.extract.batch_size
    extractor = models.build_extractor(p.base)
    forward = tf.function(lambda x: models.embedding(extractor, x),
                          input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    dim = extractor.output_shape[-1]

    started = time.perf_counter()
    with artifacts.atomic_dir(args.out) as tmp:
        x = np.lib.format.open_memmap(tmp / "features.npy", "w+", np.float32, (len(rows), dim))
        measured = []
        decoded = pools.process_batches(functools.partial(images.decode_and_measure, source, size), rows, batch)
        with tqdm(total=len(rows), desc="embed", unit="img") as bar:
            for start, part in zip(range(0, len(rows), batch), decoded):
                x[start:start + len(part)] = forward(np.stack([pixels for pixels, _ in part]).astype(np.float32))
                measured += [{**row, **{k: f"{v:.6g}" for k, v in stats.items()}}
                             for row, (_, stats) in zip(rows[start:start + batch], part)]
                bar.update(len(part))
        x.flush()
        del x  # close the memory map before the directory is renamed
        schemas.write_csv(tmp / "images.csv", measured, schemas.MANIFEST_FIELDS + quality.QUALITY_FIELDS)
    seconds = time.perf_counter() - started
    log.info("embedded %d images (%d features each, %s) in %.1f s (%.1f images/s)", len(rows), dim,
             p.base.backbone, seconds, len(rows) / max(seconds, 1e-9))


if __name__ == "__main__":
    cli.run(main)
