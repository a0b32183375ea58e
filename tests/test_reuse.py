"""Per-image work done once per image content (pipeline/lib/reuse.py): embed and extract_features
rerun on a few more images compute only those, and write what a run from scratch writes, byte for
byte. The stages run in this process (their own ``main``, as the command line runs it), on the
tiny settings: a randomly initialised 32 px MobileNetV2."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import digests
from pipeline.lib import reuse, schemas
from project import default_params
from shapes import make_dataset
from tiny_run import TINY


def stage(folder: Path, name: str, *args: str) -> str:
    """``python -m pipeline NAME ARGS`` in ``folder``, in this process; returns what it logged."""
    log, cwd, argv = io.StringIO(), os.getcwd(), sys.argv
    handler, logger = logging.StreamHandler(log), logging.getLogger("pipeline")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        os.chdir(folder)
        sys.argv = [f"python -m pipeline {name}", *args]
        with contextlib.redirect_stderr(io.StringIO()):
            runpy.run_module(f"pipeline.stages.{name}", run_name="__main__")
    except SystemExit as exit_:
        if exit_.code:
            raise AssertionError(f"{name} failed: {exit_.code}\n{log.getvalue()}") from None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        os.chdir(cwd)
        sys.argv = argv
    return log.getvalue()


def same(a: Path, b: Path) -> bool:
    """Folders ``a`` and ``b`` hold the same files, byte for byte."""
    files = digests(a, ["."]), digests(b, ["."])
    assert len(files[0]) > 1
    return files[0] == files[1]


def test_a_few_more_images_are_computed_alone_and_the_outputs_equal_a_run_from_scratch(tmp_path):
    root = tmp_path / "p"
    make_dataset(root / "data/images", per_class=8, size=40)  # fewer: near-duplicate groups swallow a class
    (root / "params.yaml").write_text(yaml.safe_dump(default_params(**TINY)))
    stage(root, "ingest", "--source", "data/images", "--manifest", "data/manifest.csv", "--report", "ingest.json")
    manifest = schemas.read_csv(root / "data/manifest.csv", schemas.MANIFEST_FIELDS)
    # The images of the week before: three left out, the order shuffled (a moved image keeps its hash)
    schemas.write_csv(root / "before.csv", manifest[3:][::-1], schemas.MANIFEST_FIELDS)

    embed = ("--source", "data/images", "--out")
    stage(root, "embed", *embed, "data/embeddings", "--manifest", "before.csv")
    logged = stage(root, "embed", *embed, "data/embeddings", "--manifest", "data/manifest.csv")
    assert f"{len(manifest) - 3} of {len(manifest)} images embedded by the previous run; embedding 3" in logged
    stage(root, "embed", *embed, "scratch/embeddings", "--manifest", "data/manifest.csv")
    assert same(root / "data/embeddings", root / "scratch/embeddings")

    stage(root, "split", "--manifest", "data/manifest.csv", "--embeddings", "data/embeddings", "--out", "data/split",
          "--report", "split.json")
    train = schemas.read_csv(root / "data/split/train.csv", schemas.SPLIT_FIELDS)
    (root / "before").mkdir()
    for name in ("val.csv", "test.csv", "labels.json"):
        (root / "before" / name).write_bytes((root / "data/split" / name).read_bytes())
    schemas.write_csv(root / "before/train.csv", train[:-2], schemas.SPLIT_FIELDS)
    extract = ("--embeddings", "data/embeddings", "--out", "data/features", "--extractor", "extractor.keras")
    stage(root, "augment", "--source", "data/images", "--split", "before", "--out", "data/augmented")
    shutil.copytree(root / "data/augmented", root / "aug-before")
    logged = stage(root, "augment", "--source", "data/images", "--split", "data/split", "--out", "data/augmented")
    assert f"2 of {len(train) + len(schemas.read_csv(root / 'data/split/val.csv'))} images decoded and augmented" in logged
    stage(root, "augment", "--source", "data/images", "--split", "data/split", "--out", "scratch/augmented")
    assert same(root / "data/augmented", root / "scratch/augmented")
    stage(root, "extract_features", "--augmented", "aug-before", *extract)
    logged = stage(root, "extract_features", "--augmented", "data/augmented", *extract)
    # Every image as it is comes from embed; every augmented copy but the two new images' from the
    # previous run (augment draws a copy's transforms from the image's own hash, so the other
    # images' copies did not change)
    val = len(schemas.read_csv(root / "data/split/val.csv"))
    assert (f"features train: {len(train)} of {2 * len(train)} images embedded by embed, {len(train) - 2} from "
            "the previous run; extracting 2") in logged
    assert f"features val: {val} of {val} images embedded by embed, 0 from the previous run; extracting 0" in logged
    stage(root, "extract_features", "--augmented", "data/augmented", "--embeddings", "data/embeddings",
          "--out", "scratch/features", "--extractor", "x.keras")
    assert same(root / "data/features", root / "scratch/features")

    # embed's original views are the images' own: computed again from the shards (which hold them
    # as JPEG) by an extract_features that cannot use embed's (another extractor's recipe), each
    # original's features are closest to its own row's (a random 32 px backbone finds every image
    # alike: 0.87-0.98 between distinct ones)
    made = reuse.made_by(root / "data/embeddings")
    shutil.copytree(root / "data/embeddings", root / "other/embeddings")
    reuse.write_recipe(root / "other/embeddings", {**made, "weights": "0" * 16})
    logged = stage(root, "extract_features", "--augmented", "data/augmented", "--embeddings", "other/embeddings",
                   "--out", "other/features", "--extractor", "x.keras")
    assert "computing the original views too: other/embeddings was made with other weights" in logged
    assert f"features val: 0 of {val} images embedded by embed, 0 from the previous run; extracting {val}" in logged
    ours, theirs = (np.load(root / f / "features/val_x.npy") for f in ("data", "other"))
    ours, theirs = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (ours, theirs))
    cosine = ours @ theirs.T
    assert (np.diag(cosine) > 0.98).all() and (cosine.argmax(axis=1) == np.arange(val)).all(), cosine


def test_another_recipe_or_a_damaged_record_of_it_is_never_reused(tmp_path, caplog):
    made = reuse.recipe([reuse], stage="embed", base={"backbone": "MobileNetV2"}, seed=0)
    assert reuse.previous(tmp_path, made) is None  # nothing there: a run from scratch
    reuse.write_recipe(tmp_path, made)
    assert reuse.previous(tmp_path, made) == tmp_path
    with caplog.at_level(logging.INFO, "pipeline.lib.reuse"):
        assert reuse.previous(tmp_path, {**made, "seed": 1}) is None
        assert reuse.previous(tmp_path, {**made, "code": {"reuse.py": "0" * 16}}) is None  # edited code
        (tmp_path / reuse.RECIPE).write_text("{")
        assert reuse.previous(tmp_path, made) is None
    assert "made with other seed" in caplog.text and "other code" in caplog.text and "unreadable" in caplog.text


@pytest.mark.parametrize("keys, old, found", [
    (["a", "b", "c"], ["c", "x", "a"], ([0, 2], [2, 0])),
    (["a"], [], ([], [])),
])
def test_matches_pairs_each_key_with_its_previous_row(keys, old, found):
    new, was = reuse.matches(keys, old)
    assert (new.tolist(), was.tolist()) == found
