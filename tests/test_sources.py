"""Every kind of source through ingest, split and augment: the images are read where they are (a
folder or a labels CSV) or where they were unpacked once (an archive, a keras dataset), never copied."""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import ROOT
from pipeline.lib import schemas
from project import default_params
from shapes import make_dataset

pytestmark = pytest.mark.e2e


def keras_stand_in(home):
    """Tiny fashion-mnist idx files in $KERAS_HOME/datasets, as Keras' loader reads them offline."""
    cache = home / "datasets" / "fashion-mnist"
    cache.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 24), ("t10k", 12)):
        for name, array, header in (("labels-idx1", np.arange(n) % 3, 8),
                                    ("images-idx3", rng.integers(0, 255, (n, 28, 28)), 16)):
            with gzip.open(cache / f"{prefix}-{name}-ubyte.gz", "wb") as f:
                f.write(b"\0" * header + np.asarray(array, np.uint8).tobytes())


def make_source(kind, tmp_path):
    data = make_dataset(tmp_path / "shapes", per_class=12, size=24)
    if kind == "folder":
        return str(data)
    if kind == "zip archive":
        return shutil.make_archive(str(tmp_path / "shapes"), "zip", tmp_path, "shapes")
    if kind == "labels CSV":
        rows = [f"{p.relative_to(data).as_posix()},{p.parent.name}-label" for p in sorted(data.rglob("*.png"))]
        (data / "labels.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
        return str(data / "labels.csv")
    keras_stand_in(tmp_path / "keras-home")
    return "keras:fashion_mnist"


@pytest.mark.parametrize("kind", ["folder", "zip archive", "labels CSV", "keras dataset"])
def test_each_source_goes_through_ingest_split_and_augment_without_a_copy(kind, tmp_path):
    source = make_source(kind, tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    # Grouping near duplicates would read embed's output; embed finds the source as augment does.
    params = default_params(base={"image_size": 32}, split={"val_fraction": 0.25, "test_fraction": 0.25,
                                                             "group_near_duplicates": False})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_HOME": str(tmp_path / "keras-home"),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    logs = []
    for stage, args in (("ingest", ["--source", source, "--manifest", "data/manifest.csv", "--report", "ingest.json"]),
                        ("split", ["--manifest", "data/manifest.csv", "--embeddings", "data/embeddings",
                                   "--out", "data/split", "--report", "split.json"]),
                        ("augment", ["--source", source, "--split", "data/split", "--out", "data/augmented"])):
        out = subprocess.run([sys.executable, "-m", "pipeline", stage, *args], cwd=project, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{stage}: {out.stderr[-2000:]}"
        logs.append(out.stderr)
    manifest = schemas.read_csv(project / "data/manifest.csv")
    assert len(manifest) == 36
    unpacked = tmp_path / "keras-home" / "datasets" / "unpacked"
    if kind in ("zip archive", "keras dataset"):  # unpacked once, by ingest; augment found it there
        assert len(list(unpacked.iterdir())) == 1
        folder = next(unpacked.iterdir())
        assert "unpacking into" in logs[0] and "unpacking" not in logs[2]
    else:
        assert not unpacked.exists()
        folder = tmp_path / "shapes"
    assert all(hashlib.sha256((folder / r["path"]).read_bytes()).hexdigest() == r["sha256"] for r in manifest)
    written = [f for f in project.rglob("*") if f.is_file()]
    recorded = {r["sha256"] for r in manifest}
    assert not [f for f in written if hashlib.sha256(f.read_bytes()).hexdigest() in recorded]
    assert sorted(f.name for f in (project / "data" / "augmented").iterdir()) == [
        "meta.json", "recipe.json", "train-00000.tfrecord", "train_aug-00000.tfrecord", "val-00000.tfrecord"]
