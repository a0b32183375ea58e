"""embed: data/manifest.csv + the source (data/images) -> data/embeddings/ (features.npy + images.csv).

Every image ingest kept, of every split, goes once through the frozen backbone
(base.*), un-augmented: ``features.npy`` holds one embedding per manifest row,
in manifest order: the sum of the image's and its mirror image's features,
so that a mirrored copy has the very same embedding (and a cropped one a
closer one) while distinct images come no closer (docs/data.md#the-audit).
``images.csv`` is the manifest with each image's measured quality
(brightness, contrast, sharpness, entropy: images.quality). Split reads
them to keep near duplicates together, the audit to find what is wrong with
the data. ``original.npy`` holds each image's own features, un-mirrored: the
original views extract_features would otherwise compute again (models.views).
Features are written batch by batch into the file (rows.Writer), so
memory holds a few batches, never the dataset. An image the previous output
holds (same content hash, same recipe) is copied from it (pipeline/lib/reuse.py).
"""
from __future__ import annotations

import functools
import logging
import time

import numpy as np
from tqdm import tqdm

from pipeline.lib import artifacts, cli, images, models, params, pools, quality, reuse, runtime, schemas, sources
from pipeline.lib import rows as rows_  # rows: the manifest's

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
    forward = tf.function(lambda x: models.views(extractor, x),
                          input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    dim = extractor.output_shape[-1]

    # An image embedded by the previous run with the same recipe is copied, not computed (reuse.py).
    # The weights' fingerprint tells extract_features whether its extractor is this one.
    made = reuse.recipe([__file__, images, models, quality], stage="embed", base=vars(p.base),
                        seed=p.seed, weights=models.fingerprint(extractor))
    old = reuse.previous(args.out, made)
    old_rows = schemas.read_csv(old / "images.csv", schemas.MANIFEST_FIELDS + quality.QUALITY_FIELDS) if old else []
    new, was = reuse.matches([r["sha256"] for r in rows], [r["sha256"] for r in old_rows])
    todo = np.setdiff1d(np.arange(len(rows)), new)
    log.info("%d of %d images embedded by the previous run; embedding %d", len(new), len(rows), len(todo))

    started = time.perf_counter()
    with artifacts.atomic_dir(args.out) as tmp:
        x = rows_.Writer(tmp / "features.npy", np.float32, (len(rows), dim))
        own = rows_.Writer(tmp / "original.npy", np.float32, (len(rows), dim))
        measured = [None] * len(rows)
        if len(new):
            for name, out in (("features.npy", x), ("original.npy", own)):
                reuse.copy_rows(out, new, schemas.read_npy(old / name, "float32", 2, rows=True), was)
            for i, j in zip(new, was):
                measured[i] = {**rows[i], **{k: old_rows[j][k] for k in quality.QUALITY_FIELDS}}
        padded = reuse.Padded(forward, batch)
        decoded = pools.process_batches(functools.partial(images.decode_and_measure, source, size),
                                        [rows[i] for i in todo], batch)
        with tqdm(total=len(todo), desc="embed", unit="img") as bar:
            for start, part in zip(range(0, len(todo), batch), decoded):
                where = todo[start:start + len(part)]
                features, embedded = padded(np.stack([pixels for pixels, _ in part]).astype(np.float32))
                x.write(where, embedded)
                own.write(where, features)
                for i, (_, stats) in zip(where, part):
                    measured[i] = {**rows[i], **{k: f"{v:.6g}" for k, v in stats.items()}}
                bar.update(len(part))
        x.close()
        own.close()
        schemas.write_csv(tmp / "images.csv", measured, schemas.MANIFEST_FIELDS + quality.QUALITY_FIELDS)
        reuse.write_recipe(tmp, made)
    seconds = time.perf_counter() - started
    log.info("embedded %d images (%d features each, %s) in %.1f s (%.1f images/s)", len(todo), dim,
             p.base.backbone, seconds, len(todo) / max(seconds, 1e-9))


if __name__ == "__main__":
    cli.run(main)
