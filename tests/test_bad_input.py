"""A corpus of everything that goes wrong in real image folders, through the real ingest and split stages."""
from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from project import Project, default_params
from test_images import png_header_only
from shapes import make_dataset


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corpus")
    root = make_dataset(tmp / "corpus", per_class=6, size=32, seed=1)  # circle, square, triangle
    good = (root / "circle" / "000.png").read_bytes()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp / "whole.jpg", quality=90)
    jpeg = (tmp / "whole.jpg").read_bytes()
    (root / "circle" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "circle" / "zero.jpg").write_bytes(b"")
    (root / "circle" / "text.jpg").write_text("this is not a JPEG")
    (root / "circle" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "square" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 thumbnails")
    (root / "square" / "README.txt").write_text("photos by me")
    Image.new("RGB", (40, 30), (10, 200, 10)).save(root / "square" / "ünïcødé 画像.png")
    (root / "triangle" / "dup.png").write_bytes((root / "triangle" / "000.png").read_bytes())  # duplicate
    (root / "triangle" / "conflict.png").write_bytes(good)  # the same bytes as a circle: conflicting label
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(root / "circle" / "cmyk.jpg")
    Image.new("I;16", (30, 30), 40000).save(root / "square" / "sixteen.png")
    Image.new("RGB", (9000, 7000), (30, 30, 200)).save(root / "triangle" / "huge.jpg", quality=50)
    png_header_only(root / "triangle" / "bomb.png", 13000, 13000)  # 169 megapixels, no pixel data
    (root / "empty").mkdir()
    (root / "single").mkdir()
    Image.new("RGB", (30, 30), (1, 2, 250)).save(root / "single" / "only.png")
    (root / "LICENSE").write_text("CC0")
    # Random weights at 32 px, near duplicates not grouped (random features find everything alike):
    # these tests are about ingest and split's label rules, and need no ImageNet weights in the cache.
    project = Project(tmp / "project", default_params(split={"val_fraction": 0.2, "test_fraction": 0.25,
                                                             "group_near_duplicates": False},
                                                      base={"weights": "none", "image_size": 32}),
                      data=root)
    out = project.run("dvc", "repro", "split")
    return project, out.stdout + out.stderr


def test_ingest_report_lists_every_case(corpus):
    project, _ = corpus
    report = json.loads((project.path / "reports" / "ingest.json").read_text())
    reasons = {f["path"]: f["reason"] for f in report["skipped_files"]}
    assert reasons == {
        "circle/truncated.jpg": "not a readable image",
        "circle/zero.jpg": "not a readable image",
        "circle/text.jpg": "not a readable image",
        "circle/.DS_Store": "hidden file",
        "square/Thumbs.db": "not a readable image",
        "square/README.txt": "not a readable image",
        "triangle/dup.png": "duplicate image",
        "circle/000.png": "same image under several labels",
        "triangle/conflict.png": "same image under several labels",
        "triangle/bomb.png": "image too large to decode",
        "empty/": "empty class folder",
        "LICENSE": "not inside a class folder",
    }
    assert report["per_class"]["circle"] == {"kept": 6, "skipped": {
        "hidden file": 1, "not a readable image": 3, "same image under several labels": 1}}
    assert report["kept"] == sum(c["kept"] for c in report["per_class"].values()) == 6 + 8 + 7 + 1


def test_odd_images_are_kept_and_the_source_untouched(corpus):
    project, _ = corpus
    manifest = (project.path / "data" / "manifest.csv").read_text(encoding="utf-8")
    for name in ("square/ünïcødé 画像.png", "circle/cmyk.jpg", "square/sixteen.png", "triangle/huge.jpg"):
        assert name in manifest
        assert (project.path / "data" / "images" / name).is_file()
    huge = next(line for line in manifest.splitlines() if line.startswith("triangle/huge.jpg,"))
    assert huge.endswith(",9000,7000")  # width and height of the original, decoded at 1/8 scale


def test_the_log_summarises_what_was_skipped(corpus):
    _, log = corpus
    assert "skipped 5: not a readable image" in log
    assert "small classes (< 3 images) dropped: single (1)" in log
    assert "Traceback" not in log


def test_split_drops_the_single_image_class_and_never_shares_an_image(corpus):
    project, _ = corpus
    split_dir = project.path / "data" / "split"
    assert json.loads((split_dir / "labels.json").read_text()) == ["circle", "square", "triangle"]
    hashes = [set(line.split(",")[-1] for line in (split_dir / f"{s}.csv").read_text().splitlines()[1:])
              for s in ("train", "val", "test")]
    assert not (hashes[0] & hashes[1] or hashes[0] & hashes[2] or hashes[1] & hashes[2])
    report = json.loads((project.path / "reports" / "split.json").read_text())
    assert report["label_changes"] == {"single": "dropped (1 images)"}


@pytest.fixture
def own_corpus(corpus, tmp_path):
    """A copy of the corpus project, for a test that changes it (a failed stage loses its outputs)."""
    return corpus[0].copy(tmp_path / "project")


def test_small_class_can_fail_the_stage_by_name(own_corpus):
    project = own_corpus
    project.set_param("split.small_classes", "fail")
    out = project.run("dvc", "repro", "split", check=False)
    assert out.returncode != 0
    assert "fewer than split.min_images_per_class=3 images: single (1)" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.parametrize("edit, message", [
    (("ingest", "sourse", "x"), "unknown key 'ingest.sourse'"),
    (("split", "val_fraction", "0.1"), "split.val_fraction must be float, got '0.1'"),
])
def test_bad_params_stop_ingest_with_a_message(own_corpus, edit, message):
    project = own_corpus
    before = project.params()
    section, key, value = edit
    params = project.params()
    params[section][key] = value
    project.write_params(params)
    # -f: DVC itself ignores keys no stage declares, so a typo alone would not rerun anything
    out = project.run("dvc", "repro", "-f", "ingest", check=False)
    project.write_params(before)
    assert out.returncode != 0 and message in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    # DVC removes a stage's outputs before running it; the failed run left nothing half-written,
    # and the last good output comes back from the DVC cache.
    assert not list((project.path / "data").glob(".manifest.tmp-*"))
    project.run("dvc", "checkout", "ingest")
    assert (project.path / "data" / "manifest.csv").exists()


def ingest(project: Project, source: str, check: bool = True):
    """The ingest stage's command with another --source (dvc.yaml always passes data/images)."""
    return project.run("python", "-m", "pipeline", "ingest", "--source", source, "--manifest", "data/manifest.csv",
                       "--report", "reports/ingest.json", check=check)


@pytest.mark.parametrize("source, message", [
    ("/no/such/folder", "source '/no/such/folder' does not exist"),
    ("http://127.0.0.1:9/data.zip", "could not download http://127.0.0.1:9/data.zip"),
    ("keras:imagenet", "the keras datasets are keras:mnist, keras:fashion_mnist"),
])
def test_missing_sources_stop_ingest_with_a_message(corpus, source, message):
    project, _ = corpus
    manifest = (project.path / "data" / "manifest.csv").read_bytes()
    out = ingest(project, source, check=False)
    assert out.returncode != 0 and message in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert (project.path / "data" / "manifest.csv").read_bytes() == manifest  # untouched


def _idx(path, array, header):
    with gzip.open(path, "wb") as f:
        f.write(header + np.asarray(array, np.uint8).tobytes())


def test_keras_dataset_source_uses_the_keras_cache(tmp_path):
    """keras:fashion_mnist read offline from a pre-seeded $KERAS_HOME/datasets (tiny stand-in files)."""
    cache = tmp_path / "keras-home" / "datasets" / "fashion-mnist"
    cache.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 6)):
        _idx(cache / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 3, b"\0" * 8)
        _idx(cache / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)), b"\0" * 16)
    project = Project(tmp_path / "project", default_params(), env={"KERAS_HOME": str(tmp_path / "keras-home")})
    ingest(project, "keras:fashion_mnist")
    report = json.loads((project.path / "reports" / "ingest.json").read_text())
    assert {k: v["kept"] for k, v in report["per_class"].items()} == {"pullover": 6, "t-shirt_top": 6, "trouser": 6}
    manifest = (project.path / "data" / "manifest.csv").read_text()
    assert "train/trouser/00001.png,trouser,train," in manifest and "test/pullover/00002.png,pullover,test," in manifest
    shutil.rmtree(cache)
    out = ingest(project, "keras:mnist", check=False)
    assert out.returncode != 0 and "could not load keras.datasets.mnist" in out.stdout + out.stderr
