"""Damaged artifacts and hostile inputs, one reader per kind: each damaged copy (cut off, random
bytes, a wrong header, lying metadata) becomes one StageError naming the file and the stage of
dvc.yaml that writes it, before anything large is read; a full disk leaves the old output; a
FIFO never hangs; params.yaml and its label values are checked like any input."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from pipeline.lib import artifacts, images, params, schemas, sources
from pipeline.lib.errors import StageError
from pipeline.lib.params import ParamsError


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty folder with the project's dvc.yaml, as the working directory (stages run there)."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def header(shape, dtype="<f4") -> bytes:
    """A .npy header alone, for any shape (a lie about the size that follows)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@pytest.mark.parametrize("damage, what", [
    (lambda f: np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True), "object"),
    (lambda f: f.write_bytes(header((10 ** 9, 128)) + b"\0" * 64), "header promises"),
    (lambda f: np.save(f, np.zeros((4, 3), np.float64)), "not a 2-dimensional float32"),
    (lambda f: f.write_bytes(os.urandom(300)), "not a NumPy .npy file"),
    (lambda f: f.write_bytes(np.lib.format.MAGIC_PREFIX + b"\x01\x00" + b"\xff" * 40), "not a NumPy .npy file"),
])
def test_a_damaged_npy_is_named_with_the_stage_that_writes_it(project, damage, what):
    path = project / "data/features/train_x.npy"
    path.parent.mkdir(parents=True)
    np.save(project / "data/features/train_y.npy", np.zeros(4, np.int32))
    damage(path)
    with pytest.raises(StageError, match=what) as err:
        schemas.read_features(project / "data/features", "train", 3)
    assert "train_x.npy is damaged" in str(err.value) and "dvc repro -f -s extract_features" in str(err.value)
    assert "dvc checkout data/features" in str(err.value)


def test_features_and_labels_that_disagree_are_damaged(project):
    folder = project / "data/features"
    folder.mkdir(parents=True)
    np.save(folder / "val_x.npy", np.zeros((4, 3), np.float32))
    np.save(folder / "val_y.npy", np.array([0, 1, 2, 7], np.int32))
    with pytest.raises(StageError, match="class indices outside 0..2"):
        schemas.read_features(folder, "val", 3)
    np.save(folder / "val_y.npy", np.zeros(5, np.int32))
    with pytest.raises(StageError, match="5 labels for 4 feature vectors"):
        schemas.read_features(folder, "val", 3)


def test_json_labels_and_csv_artifacts_that_are_damaged_are_named(project):
    split = project / "data/split"
    split.mkdir(parents=True)
    (split / "labels.json").write_text("[\"a\", ")
    with pytest.raises(StageError, match=r"labels.json is damaged \(not valid JSON.*dvc repro -f -s split"):
        schemas.read_labels(split / "labels.json")
    (split / "labels.txt").write_bytes("circle\nsquare\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(StageError, match=r"not UTF-8 text: line 3"):
        schemas.read_labels(split / "labels.txt")
    (split / "train.csv").write_text("path,label\x00,split\nx.png,a,train\n")
    with pytest.raises(StageError, match="train.csv is damaged"):
        schemas.read_csv(split / "train.csv", schemas.MANIFEST_FIELDS)
    (split / "train.csv").write_text("file,label\nx.png,a\n")  # a column renamed
    with pytest.raises(StageError, match="no column path"):
        schemas.read_csv(split / "train.csv", schemas.MANIFEST_FIELDS)


def test_damaged_shards_and_meta_are_named(project):
    pytest.importorskip("tensorflow")
    from pipeline.lib import shards

    out = project / "data/augmented"
    out.mkdir(parents=True)
    writer = shards.ShardWriter(out, "train")
    for i in range(6):
        writer.write(np.full((8, 8, 3), 40 * i, np.uint8), i % 2)
    writer.close()
    meta = {"image_size": 8, "counts": {"train": 6}, "labels": ["a", "b"], "class_counts": {"train": [3, 3]}}
    (out / "meta.json").write_text(json.dumps(meta))

    def read():
        with shards.reading(out):
            return sum(len(y) for _, y in shards.dataset(out, "train", 4))

    assert read() == 6
    (out / "meta.json").write_text(json.dumps({**meta, "counts": {"train": 0}}))
    with pytest.raises(StageError, match="counts 0 train records, but .* holds 1"):
        shards.meta(out)
    (out / "meta.json").write_text(json.dumps({**meta, "counts": {"train": 7}}))  # a lie within the shard
    with pytest.raises(StageError, match=r"meta.json is damaged \(it counts 7 train records, but the train "
                                         r"shards hold 6\).*-s augment"):
        read()
    (out / "meta.json").write_text("{not json")
    with pytest.raises(StageError, match="meta.json is damaged"):
        shards.meta(out)
    (out / "meta.json").write_text(json.dumps(meta))
    shard = out / "train-00000.tfrecord"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])  # cut off
    with pytest.raises(StageError, match=r"train-00000.tfrecord is damaged \(DataLossError: [^{]*\): rerun") as err:
        read()
    assert "function_node" not in str(err.value)
    shard.write_bytes(good[:100] + os.urandom(200) + good[300:])  # random bytes inside
    with pytest.raises(StageError, match=r"train-00000.tfrecord is damaged \(\w+Error"):
        read()


@pytest.mark.parametrize("name", ["model.keras", "model.tflite", "model.onnx", "saved_model"])
def test_a_damaged_model_of_each_format_is_named(tmp_path, name):
    pytest.importorskip("tensorflow")
    from pipeline.lib import inference

    path = tmp_path / name
    if name == "saved_model":
        path.mkdir()
        (path / "saved_model.pb").write_bytes(os.urandom(500))
    else:
        path.write_bytes(os.urandom(500))
    with pytest.raises(StageError, match=f"{name} is damaged") as err:
        inference.load(path)
    assert "\n" not in str(err.value)
    with pytest.raises(StageError, match="not a .keras, .tflite or .onnx file or a SavedModel folder"):
        inference.load(tmp_path / "model.pt")


def test_predict_skips_a_fifo_at_once_and_names_a_damaged_labels_file(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    (tmp_path / "model.keras").write_bytes(b"junk")
    run = [sys.executable, "-m", "pipeline", "predict", str(tmp_path / "model.keras"), str(fifo)]
    out = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not a regular file" in out.stderr and "Traceback" not in out.stderr
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "labels.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    out = subprocess.run(run[:-1] + [str(tmp_path / "a.png")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "labels.txt is damaged (not UTF-8 text: line 1" in out.stderr.strip().splitlines()[-1]


def test_a_full_disk_leaves_the_previous_output_and_no_temporary_file(tmp_path):
    final = tmp_path / "out.json"
    artifacts.write_json(final, "old")  # this process's own output: its writer may replace it
    with pytest.raises(StageError, match=r"out.json: the disk ran out of space .* MB free now"):
        with artifacts.atomic_file(final) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert final.read_text() == '"old"\n' and [p.name for p in tmp_path.iterdir()] == ["out.json"]

    class ResourceExhaustedError(Exception):  # what TensorFlow's file writers raise
        pass

    with pytest.raises(StageError, match="ran out of space"):
        with artifacts.atomic_dir(tmp_path / "shards") as tmp:
            raise ResourceExhaustedError("data/augmented/train-00000.tfrecord; No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_stage_that_knows_its_size_checks_the_free_space_first(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(free=10_000_000))
    artifacts.check_free_space(tmp_path / "features", 9_000_000, "writing the features")
    with pytest.raises(StageError, match="features: writing the features needs about 20 MB but its disk has 10 MB free"):
        artifacts.check_free_space(tmp_path / "features", 20_000_000, "writing the features")


GOOD = (ROOT / "params.yaml").read_text()


@pytest.mark.parametrize("text, message", [
    (GOOD.replace("drop_labels: []", "drop_labels: [\"caf\xe9\"]").encode("latin-1"), "not UTF-8 text \\(line"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi")), "expand to [0-9,]+ or more nodes"),
    (GOOD.replace("seed: 42", "seed: 42\nseed: 7"), "line \\d+: key 'seed' given twice"),
    (GOOD + "# padding\n" * 100_000, "over the 1,000,000 a params file may hold"),
    (GOOD + "".join(f"k{i}: 1\n" for i in range(5000)), "and 4,980 more"),
    (GOOD.replace("merge_labels: {}", 'merge_labels: {square: "sq\\nuare"}'),
     "split.merge_labels: label 'sq\\\\nuare' has control characters"),
    (GOOD.replace("drop_labels: []", 'drop_labels: [""]'), "split.drop_labels: label '' is empty"),
    (GOOD.replace("drop_labels: []", 'drop_labels: ["a/b"]'), "holds a path separator"),
])
def test_params_yaml_is_checked_as_input(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    with pytest.raises(ParamsError, match=message) as err:
        params.load(["seed"], path)
    assert len(str(err.value)) < 5000


def test_labels_named_in_params_must_exist(tmp_path):
    from pipeline.stages import split

    rows = [{"label": "Not sure"}, {"label": "cat"}, {"label": "cat"}]
    p = SimpleNamespace(drop_labels=["not sure"], merge_labels={}, min_images_per_class=1, small_classes="drop")
    with pytest.raises(StageError, match="split.drop_labels: no image has the label 'not sure'.*did you mean 'Not sure'"):
        split.relabel(rows, p)
    with pytest.raises(StageError, match="split.merge_labels: no image has the label 'dog'"):
        split.relabel(rows, SimpleNamespace(**{**vars(p), "drop_labels": [], "merge_labels": {"dog": "cat"}}))


def test_what_ingest_does_not_read_is_reported_and_nothing_hangs_or_recurses(tmp_path):
    root = tmp_path / "images"
    for label in ("circle", "square", ".hidden_class"):
        (root / label).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / label / "a.png")
    (root / "circle/.thumbnails").mkdir()
    Image.new("RGB", (8, 8)).save(root / "circle/.thumbnails/a.png")
    os.mkfifo(root / "square/pipe.png")
    (root / ".DS_Store").write_bytes(b"\0")
    deep = root / "square" / Path(*["d"] * 40)
    deep.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(deep / "deep.png")
    files, skipped = sources.scan(root)
    reasons = {s["path"]: s["reason"] for s in skipped}
    assert [f["path"] for f in files] == ["circle/a.png", "square/a.png"]
    assert reasons[".hidden_class/"] == reasons["circle/.thumbnails/"] == "hidden folder (not read)"
    assert reasons["square/pipe.png"] == "not a regular file (a FIFO, device or socket)"
    assert reasons[".DS_Store"] == "hidden file"
    assert any("nested deeper than 32" in r for r in reasons.values())


def test_a_labels_csv_names_every_unlisted_file_and_must_lie_inside_the_source(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for name in ("a.png", "b.png", "unlisted.png"):
        Image.new("RGB", (8, 8)).save(root / name)
    (root / "labels.csv").write_text("image,label\na.png,x\nb.png,y\n")
    p = SimpleNamespace(labels_csv="labels.csv", image_dir=None, csv_image_column="image", csv_label_column="label",
                        csv_split_column=None, label_separator="|", csv_label_columns=[], max_unpacked_mb=10,
                        max_expansion_ratio=10)
    _, _, files, skipped = sources.open_source(str(root), p)
    assert len(files) == 2 and skipped == [{"path": "unlisted.png", "label": "", "reason": "no row in the labels CSV"}]
    (tmp_path / "outside").mkdir()
    with pytest.raises(StageError, match="ingest.image_dir '../outside' points outside the source"):
        sources.open_source(str(root), SimpleNamespace(**{**vars(p), "image_dir": "../outside"}))


def test_the_ingest_report_stays_small_whatever_the_source(tmp_path):
    from pipeline.stages import ingest

    skipped = [{"path": f"missing{i}.png", "label": f"label{i}", "reason": "listed in the CSV but not found"}
               for i in range(100_000)]
    report = ingest.summarize("data/images", [{"label": "a"}], skipped, "v")
    text = json.dumps(report)
    assert len(text) < 20_000 and report["skipped"] == 100_000 and len(report["skipped_files"]) == ingest.EXAMPLES
    assert report["per_class"]["(labels with no kept image)"]["skipped"] == {"listed in the CSV but not found": 100_000}


def test_a_large_16_bit_canvas_decodes_through_the_shrunk_path(tmp_path):
    side = 2400  # 5.8 megapixels: past LARGE_DECODE_PIXELS, so shrunk before any conversion
    grey = np.tile(np.linspace(0, 65535, side, dtype=np.uint16), (side, 1))
    Image.fromarray(grey).save(tmp_path / "big.png")
    assert Image.open(tmp_path / "big.png").mode == "I;16" and side * side > images.LARGE_DECODE_PIXELS
    pixels = images.load_image(tmp_path / "big.png", 32)
    assert pixels.shape == (32, 32, 3) and pixels[:, 0].max() < 10 and pixels[:, -1].min() > 245
    assert images.examine(tmp_path / "big.png")["width"] == side


def test_a_damaged_exif_jpeg_and_a_large_16_bit_canvas_go_through_ingest_augment_and_predict(tmp_path):
    """The two hard images the issue found, through the real stages as subprocesses: ingest keeps
    both (read, the EXIF orientation ignored where the block is damaged), augment writes them into
    its shards (a split written here puts both in train), predict classifies them."""
    import yaml

    from project import default_params
    from shapes import damaged_exif, exif_jpeg, make_dataset

    source = make_dataset(tmp_path / "source", per_class=4, size=16)
    (source / "circle" / "exif.jpg").write_bytes(damaged_exif(*exif_jpeg(np.random.default_rng(0))))
    side = 2400  # past LARGE_DECODE_PIXELS
    Image.fromarray(np.tile(np.linspace(0, 65535, side, dtype=np.uint16), (side, 1))).save(source / "triangle" / "big.png")
    project = tmp_path / "project"
    project.mkdir()
    settings = default_params(base={"image_size": 32}, augment={"copies": 1})
    (project / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}

    def stage(name, *args):
        out = subprocess.run([sys.executable, "-m", "pipeline", name, *map(str, args)], cwd=project, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and "Traceback" not in out.stderr, f"{name}: {out.stderr[-2000:]}"

    stage("ingest", "--source", source, "--manifest", "manifest.csv", "--report", "ingest.json")
    rows = schemas.read_csv(project / "manifest.csv")
    assert {"circle/exif.jpg", "triangle/big.png"} <= {row["path"] for row in rows}
    # the split written here, not by the split stage, so that both hard images are in train
    (project / "split").mkdir()
    val = [row for row in rows if row["path"].endswith("001.png")]
    train = [row for row in rows if row not in val]
    for part, chosen in (("train", train), ("val", val), ("test", val)):
        schemas.write_csv(project / "split" / f"{part}.csv", chosen, schemas.SPLIT_FIELDS)
    artifacts.write_json(project / "split" / "labels.json", ["circle", "square", "triangle"])
    stage("augment", "--source", source, "--split", "split", "--out", "augmented")
    meta = json.loads((project / "augmented" / "meta.json").read_text())
    assert meta["counts"] == {"train": len(train), "train_aug": len(train), "val": len(val)}

    import keras

    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")])
    model.save(tmp_path / "model.keras")
    (tmp_path / "labels.txt").write_text("circle\nsquare\ntriangle\n")
    out = subprocess.run([sys.executable, "-m", "pipeline", "predict", str(tmp_path / "model.keras"),
                          str(source / "circle" / "exif.jpg"), str(source / "triangle" / "big.png"), "--json"],
                         cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert [Path(r["path"]).name for r in json.loads(out.stdout)] == ["exif.jpg", "big.png"]
