"""Sources (folders, archives, URLs) and splits, on tiny generated datasets."""
from __future__ import annotations

import collections
import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT
from project import default_params
from pipeline.lib import sources
from pipeline.stages import ingest, split
from pipeline.lib.errors import StageError

DiskUsage = collections.namedtuple("DiskUsage", "total used free")  # what shutil.disk_usage returns


@pytest.fixture(autouse=True)
def keras_home(tmp_path, monkeypatch):
    """Archives unpack (once) under $KERAS_HOME/datasets/unpacked: here, not in the user's ~/.keras."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    return tmp_path / "keras-home"


def ingest_params(**overrides) -> SimpleNamespace:
    return SimpleNamespace(**{**default_params()["ingest"], **overrides})


def extract(archive, dest, **overrides) -> None:
    p = ingest_params(**overrides)
    sources.extract(Path(archive), dest, p.max_unpacked_mb, p.max_expansion_ratio)


def split_params(**overrides) -> SimpleNamespace:
    values = dict(drop_labels=[], merge_labels={}, min_images_per_class=3, small_classes="drop")
    return SimpleNamespace(**{**values, **overrides})


def test_scan_flat_layout_skips_non_images_and_outside_links(shapes_dir, tmp_path):
    (shapes_dir / "README.md").write_text("about")
    (shapes_dir / "circle" / ".DS_Store").write_bytes(b"\0")
    outside = tmp_path / "outside.png"
    shutil.copy(shapes_dir / "circle" / "000.png", outside)
    (shapes_dir / "square" / "link.png").symlink_to(outside)
    files, skipped = sources.scan(shapes_dir)
    assert {f["label"] for f in files} == {"circle", "square", "triangle"}
    assert all(f["split"] == "" for f in files)
    reasons = {s["path"]: s["reason"] for s in skipped}
    assert reasons == {"circle/.DS_Store": "hidden file", "README.md": "not inside a class folder",
                       "square/link.png": "symbolic link pointing outside the source"}


def test_scan_split_layout_normalises_validation(shapes_dir, tmp_path):
    root = tmp_path / "ds"
    for src, dst in (("train", "train"), ("validation", "validation"), ("test", "test")):
        shutil.copytree(shapes_dir, root / dst)
    files, _ = sources.scan(root)
    assert {f["split"] for f in files} == {"train", "val", "test"}
    assert files[0]["path"].startswith("test/circle/")


def test_dataset_root_descends_a_lone_folder(tmp_path):
    (tmp_path / "name-abc123" / "train" / "a").mkdir(parents=True)
    assert sources.dataset_root(tmp_path) == tmp_path / "name-abc123"


def test_zip_and_tar_sources_unpack(shapes_dir, tmp_path):
    for kind in ("zip", "gztar"):
        archive = shutil.make_archive(str(tmp_path / "data"), kind, shapes_dir.parent, "shapes")
        _, root, files, skipped = sources.open_source(archive, ingest_params())
        assert root.name == "shapes" and len(files) == 24 and not skipped


def test_an_archive_is_unpacked_once_and_anew_when_it_changes(shapes_dir, tmp_path, keras_home, monkeypatch):
    unpacks = []
    real = sources.extract
    monkeypatch.setattr(sources, "extract", lambda *a: unpacks.append(a[0]) or real(*a))
    archive = shutil.make_archive(str(tmp_path / "data"), "zip", shapes_dir.parent, "shapes")
    first = sources.locate(archive, ingest_params())
    assert sources.locate(archive, ingest_params()) == first and len(unpacks) == 1  # found, not unpacked again
    assert first.parent == keras_home / "datasets" / "unpacked" and first.name.startswith("data.zip-")
    assert (first / "shapes" / "circle" / "000.png").read_bytes() == (shapes_dir / "circle" / "000.png").read_bytes()
    (shapes_dir / "circle" / "extra.png").write_bytes((shapes_dir / "circle" / "000.png").read_bytes())
    changed = shutil.make_archive(str(tmp_path / "data"), "zip", shapes_dir.parent, "shapes")
    second = sources.locate(changed, ingest_params())
    assert second != first and (second / "shapes" / "circle" / "extra.png").is_file() and len(unpacks) == 2
    with pytest.raises(StageError, match="over the"):  # refused: nothing left behind, complete or not
        sources.locate(str(zeros_zip(tmp_path / "bomb.zip", 30)), ingest_params())
    assert sorted(p.name for p in first.parent.iterdir()) == sorted([first.name, second.name])


def test_a_folder_source_is_read_where_it_is(shapes_dir, keras_home):
    assert sources.locate(str(shapes_dir), ingest_params()) == shapes_dir
    (shapes_dir / "labels.csv").write_text("image,label\ncircle/000.png,c\n")
    assert sources.locate(str(shapes_dir / "labels.csv"), ingest_params()) == shapes_dir
    assert not (keras_home / "datasets").exists()


@pytest.mark.parametrize("member", ["../evil.png", "/abs/evil.png"])
def test_unsafe_archive_members_are_refused(tmp_path, member):
    zpath = tmp_path / "bad.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr(member, b"x")
    with pytest.raises(StageError, match="unsafe archive member"):
        extract(zpath, tmp_path / "out")
    tpath = tmp_path / "bad.tar"
    with tarfile.open(tpath, "w") as tf:
        info = tarfile.TarInfo(member)
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(StageError, match="unsafe archive member"):
        extract(tpath, tmp_path / "out2")
    assert not (tmp_path / "evil.png").exists()


def zeros_zip(path: Path, megabytes: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("shapes/circle/zeros.png", bytes(megabytes * 10**6))
    return path


def broken_sparse_tar(path: Path) -> Path:
    """A tar whose one member is sparse without its map: tarfile raises ValueError, even in is_tarfile."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("a.png")
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "9"}
        tf.addfile(info)
    return path


def test_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    bomb = zeros_zip(tmp_path / "bomb.zip", 30)  # ~30 KB that unpacks to 30 MB
    (tmp_path / "out").mkdir()
    with pytest.raises(StageError, match=r"declare 30,000,000 bytes unpacked, over the [\d,]+-byte cap "
                                         r"\(ingest.max_expansion_ratio=100 x [\d,]+ bytes\)"):
        extract(bomb, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())
    extract(bomb, tmp_path / "out", max_expansion_ratio=2000)  # trusted: the cap can be raised


def test_total_cap_applies_to_archives_that_do_not_compress(tmp_path):
    archive = tmp_path / "big.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("shapes/circle/noise.png")
        info.size = 3 * 10**6
        tf.addfile(info, io.BytesIO(os.urandom(info.size)))
    with pytest.raises(StageError, match=r"over the 2,000,000-byte cap \(ingest.max_unpacked_mb=2\)"):
        extract(archive, tmp_path / "out", max_unpacked_mb=2)


def test_zip_whose_headers_understate_the_size_is_refused(tmp_path):
    """Sizes patched down in both the local and the central header: the data inflates to 30 MB."""
    data = bytearray(zeros_zip(tmp_path / "honest.zip", 30).read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature) + offset
        data[at:at + 4] = (1000).to_bytes(4, "little")
    liar = tmp_path / "liar.zip"
    liar.write_bytes(bytes(data))
    with pytest.raises(StageError, match=r"liar.zip: damaged or unsupported archive \(BadZipFile: Bad CRC-32"):
        extract(liar, tmp_path / "out")
    assert sum(f.stat().st_size for f in (tmp_path / "out").rglob("*") if f.is_file()) <= 1000


def test_sparse_tar_member_declaring_10_gb_is_refused(tmp_path):
    """A 10 KB tar whose (PAX sparse) header makes tarfile write a 10 GB file."""
    data = b"1\n0\n1\n".ljust(512, b"\0") + b"x"  # sparse map: one 1-byte region at offset 0
    archive = tmp_path / "sparse.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("shapes/circle/big.png")
        info.size = len(data)
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                            "GNU.sparse.name": info.name, "GNU.sparse.realsize": str(10**10)}
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(StageError, match="declare 10,000,000,000 bytes unpacked"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "shapes").exists()


def test_bytes_written_are_capped_even_when_headers_agree(tmp_path):
    limit = sources.Limit(zeros_zip(tmp_path / "a.zip", 1), max_mb=1, max_ratio=10**6)
    limit.add(999_999)
    with pytest.raises(StageError, match="unpacking stopped after 1,000,001 bytes"):
        limit.add(2)


def test_free_space_is_checked_before_unpacking(tmp_path, monkeypatch):
    archive = zeros_zip(tmp_path / "a.zip", 1)
    monkeypatch.setattr(sources.shutil, "disk_usage", lambda _: DiskUsage(10**9, 10**9, 1000))
    with pytest.raises(StageError, match=r"needs 1,000,000 bytes but .* has 1,000 free \(set TMPDIR"):
        extract(archive, tmp_path / "out", max_expansion_ratio=10**6)


def test_damaged_archives_are_named(tmp_path):
    half = zeros_zip(tmp_path / "half.zip", 1).read_bytes()
    (tmp_path / "half.zip").write_bytes(half[:len(half) // 2])
    with pytest.raises(StageError, match="half.zip is neither a folder, a .csv nor a readable .zip/.tar"):
        extract(tmp_path / "half.zip", tmp_path / "out")
    broken_sparse_tar(tmp_path / "bad.tar")
    with pytest.raises(StageError, match=r"bad.tar: damaged or unsupported archive \(ValueError"):
        extract(tmp_path / "bad.tar", tmp_path / "out")


def test_missing_source_is_named(tmp_path):
    with pytest.raises(StageError, match="does not exist"):
        sources.open_source(str(tmp_path / "nope"), ingest_params())


@pytest.fixture
def served(tmp_path, shapes_dir):
    """A zip of the shapes served on 127.0.0.1 by a throwaway HTTP server."""
    root = tmp_path / "www"
    root.mkdir()
    shutil.make_archive(str(root / "shapes"), "zip", shapes_dir.parent, "shapes")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/shapes.zip"
    server.shutdown()


def test_download_into_keras_cache_once(served, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    path = sources.download(served)
    assert path == tmp_path / "kh" / "datasets" / "shapes.zip"
    assert zipfile.is_zipfile(path)
    path.write_bytes(b"cached")
    assert sources.download(served).read_bytes() == b"cached"  # the cached copy, not fetched again


def other_disk(path: Path) -> Path | None:
    """A temporary folder on another file system than ``path``'s (tmpfs), or None if there is none."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != path.stat().st_dev else None


@pytest.mark.parametrize("where", ["same disk", "another disk"])
def test_fetch_moves_the_named_folders_of_an_archive(served, tmp_path, monkeypatch, where):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    if where == "another disk":  # the archive unpacks in the temporary folder, then moves to data/images
        if other_disk(tmp_path) is None:
            pytest.skip(f"no writable file system other than {tmp_path}'s (/dev/shm) on this machine")
        monkeypatch.setattr(sources.tempfile, "tempdir", str(other_disk(tmp_path)))
    sources.fetch(served, tmp_path / "images", ["circle", "square"])
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["circle", "square"]
    assert len(list((tmp_path / "images" / "circle").iterdir())) == 8
    with pytest.raises(StageError, match=r"has no folder hexagon/ \(found: \['circle', 'square', 'triangle'\]\)"):
        sources.fetch(served, tmp_path / "more", ["hexagon"])


def test_unreachable_url_says_where_to_put_the_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(StageError, match=r"could not download .*Place the archive at .*datasets/d\.zip"):
        sources.download("http://127.0.0.1:9/d.zip")


def _rows(spec):
    return [{"path": p, "label": label, "split": s, "sha256": h} for p, label, s, h in spec]


def test_deduplicate_keeps_one_copy_and_drops_conflicts():
    rows = _rows([("train/a/1", "a", "train", "h1"), ("test/a/1", "a", "test", "h1"),
                  ("a/2", "a", "", "h2"), ("b/2", "b", "", "h2"), ("b/3", "b", "", "h3")])
    kept, dropped = ingest.deduplicate(rows)
    assert [r["path"] for r in kept] == ["b/3", "test/a/1"]  # the test copy wins over train
    assert {r["path"]: r["reason"] for r in dropped} == {"train/a/1": "duplicate image",
                                                         "a/2": "same image under several labels",
                                                         "b/2": "same image under several labels"}


def _units(rows):
    return [[r] for r in rows]


def test_a_split_made_here_never_moves_an_image_when_images_are_added():
    rows = _rows([(f"{c}/{i}", c, "", f"{c}{i:03d}") for c in "abc" for i in range(60)])
    fractions = {"test": 0.2, "val": 0.1}
    before = {r["path"]: name for name, part in split.assign(_units(rows), fractions, 7, "x").items() for r in part}
    assert {name: sum(v == name for v in before.values()) for name in ("train", "val", "test")} == \
        pytest.approx({"train": 126, "val": 18, "test": 36}, abs=12)  # the shares, in expectation
    more = rows + _rows([(f"{c}/new{i}", c, "", f"new{c}{i}") for c in "abcd" for i in range(25)])
    after = {r["path"]: name for name, part in split.assign(_units(more), fractions, 7, "x").items() for r in part}
    assert {k: after[k] for k in before} == before
    other_seed = {r["path"]: name for name, part in split.assign(_units(rows), fractions, 8, "x").items() for r in part}
    assert other_seed != before


def test_a_new_near_twin_joins_its_group_where_the_group_already_is():
    """The group's position comes from its smallest hash: a twin with a smaller one would move the
    group (the original with it) wherever the twin's hash falls, but for the last split's memory."""
    rows = _rows([(f"a/{i}", "a", "", f"a{i:03d}") for i in range(80)] + [(f"b/{i}", "b", "", f"b{i:03d}") for i in range(80)])
    fractions = {"test": 0.2, "val": 0.1}
    first = split.assign(_units(rows), fractions, 7, "x")
    before = {split.key(r): name for name, part in first.items() for r in part}
    where = {r["path"]: name for name, part in first.items() for r in part}
    twins, units = [], _units(rows)
    for unit in units:  # for each test image, a twin whose hash would place the group in train
        original = unit[0]
        if where[original["path"]] != "test":
            continue
        twin = next(t for t in (f"0twin{original['sha256']}{k}" for k in range(1000))
                    if split.position(7, t) >= 0.3 and t < original["sha256"])
        unit.append({"path": original["path"] + "-mirror", "label": original["label"], "split": "", "sha256": twin})
        twins.append(unit)
    assert twins
    fresh = split.assign(units, fractions, 7, "x")  # no memory: the originals move, as before this rule
    assert all(r["path"] in {x["path"] for x in fresh["train"]} for unit in twins for r in unit)
    kept = split.assign(units, fractions, 7, "x", before)
    test = {r["path"] for r in kept["test"]}
    assert all(r["path"] in test for unit in twins for r in unit)  # the group, twin included, stays in test
    assert {r["path"]: n for n, part in kept.items() for r in part if split.key(r) in before} == where
    assert split.changed(kept, before, {}) == []


def test_the_split_lists_every_image_that_moved_and_why():
    group = _rows([("a/1", "a", "", "h1"), ("a/2", "a", "", "h2")])
    before = {"a/1:h1": "test", "a/2:h2": "train"}  # a new image joined two groups from two splits
    parts = {"train": [], "val": [], "test": group}
    assert split.changed(parts, before, {id(r): group for r in group}) == [
        {"path": "a/2", "from": "train", "to": "test", "why": "its near-duplicate group joined one in test"}]


def test_a_class_the_hash_leaves_out_of_a_split_gets_one_image_and_a_tiny_one_is_named(caplog):
    rows = _rows([(f"a/{i}", "a", "", f"a{i}") for i in range(40)] + [(f"b/{i}", "b", "", f"b{i}") for i in range(3)])
    parts = split.assign(_units(rows), {"test": 0.1, "val": 0.1}, 0, "val or test")
    assert all({r["label"] for r in part} == {"a", "b"} for part in parts.values())
    lonely = rows + _rows([("c/0", "c", "", "c0"), ("c/1", "c", "", "c1")])
    with pytest.raises(StageError, match=r"cannot give the (train|test|val) split an image of class 'c'"):
        split.assign(_units(lonely), {"test": 0.1, "val": 0.1}, 0, "val or test")


def test_near_duplicates_in_the_sources_own_split_go_to_the_evaluation_side():
    group = _rows([("train/a/1", "a", "train", "h1"), ("test/a/1b", "a", "test", "h2"), ("val/a/1c", "a", "val", "h3")])
    together, moved = split.keep_together([group, _rows([("train/a/2", "a", "train", "h4")])], {})
    assert [r["split"] for r in together[0]] == ["test"] * 3 and moved == 2
    assert together[1][0]["split"] == "train"
    # the next run: a new twin of train/a/2 arrives in test/, and joins it in train; the placed group stays
    grown = [group, _rows([("train/a/2", "a", "train", "h4"), ("test/a/2b", "a", "test", "h5")])]
    again, _ = split.keep_together(grown, {"train/a/1:h1": "test", "test/a/1b:h2": "test", "val/a/1c:h3": "test",
                                           "train/a/2:h4": "train"})
    assert [r["split"] for r in again[0]] == ["test"] * 3 and [r["split"] for r in again[1]] == ["train"] * 2


def test_csv_source_with_stems_subfolders_and_split_column(shapes_dir):
    (shapes_dir / "labels.csv").write_text(
        "file,kind,part\n"
        "circle/000.png,round,train\n"
        "001,round,validation\n"             # a bare stem, found anywhere below the folder
        "square/000.png,boxy,test\n"
        "square/404.png,boxy,train\n"        # missing file
        "triangle/000.png,,train\n"           # no label
        "triangle/001.png,pointy,holdout\n"   # unknown split
        "../outside.png,boxy,train\n")
    p = ingest_params(csv_image_column="file", csv_label_column="kind", csv_split_column="part")
    _, root, files, skipped = sources.open_source(str(shapes_dir / "labels.csv"), p)
    assert root == shapes_dir
    assert [(f["path"], f["label"], f["split"]) for f in files] == [
        ("circle/000.png", "round", "train"), ("circle/001.png", "round", "val"), ("square/000.png", "boxy", "test")]
    listed = [s for s in skipped if s["reason"] != "no row in the labels CSV"]
    assert [s["reason"] for s in listed] == [
        "listed in the CSV but not found", "no label in the CSV", "unknown split in the CSV",
        "path outside the image folder"]
    assert listed[2]["detail"] == "'holdout'"
    # every other image of the folder is counted, not passed over in silence
    assert len(skipped) - len(listed) == 24 - 3 - 2 and "triangle/001.png" not in {s["path"] for s in skipped[4:]}


def test_csv_inside_an_archive_with_image_dir(shapes_dir, tmp_path):
    (shapes_dir / "meta").mkdir()
    (shapes_dir / "meta" / "labels.csv").write_text("image,label\ncircle/000.png,c\nsquare/000.png,s\n")
    archive = shutil.make_archive(str(tmp_path / "ds"), "zip", shapes_dir.parent, "shapes")
    p = ingest_params(labels_csv="meta/labels.csv", image_dir="..")  # inside the lone top folder
    _, root, files, skipped = sources.open_source(archive, p)
    assert root.name == "shapes" and [f["label"] for f in files] == ["c", "s"]


def test_csv_with_a_wrong_column_names_the_param(shapes_dir):
    (shapes_dir / "labels.csv").write_text("path,label\ncircle/000.png,c\n")
    with pytest.raises(StageError, match="ingest.csv_image_column 'image' is not a column.*columns: path, label"):
        sources.open_source(str(shapes_dir / "labels.csv"), ingest_params())


def _labelled(counts: dict) -> list[dict]:
    return [{"path": f"{c}/{i}", "label": c, "split": "", "sha256": f"{c}{i}"}
            for c, n in counts.items() for i in range(n)]


def test_relabel_drops_merges_and_handles_small_classes():
    rows = _labelled({"a": 5, "b": 5, "unsure": 4, "tee": 2, "shirt": 2, "tiny": 1, "odd": 1})
    kept, changes = split.relabel(rows, split_params(drop_labels=["unsure"], merge_labels={"tee": "shirt"}))
    assert sorted({r["label"] for r in kept}) == ["a", "b", "shirt"]  # tee + shirt = 4 >= 3
    assert changes["tiny"].startswith("dropped") and changes["unsure"].startswith("dropped")
    merged, _ = split.relabel(rows, split_params(drop_labels=["unsure"], small_classes="merge"))
    labels = [r["label"] for r in merged]
    assert labels.count("other") == 6 and "tiny" not in labels  # tee 2 + shirt 2 + tiny 1 + odd 1
    with pytest.raises(StageError, match=r"fewer than split.min_images_per_class=3 images: odd \(1\), "):
        split.relabel(rows, split_params(small_classes="fail"))


def test_tar_link_pointing_outside_is_refused(tmp_path):
    tpath = tmp_path / "links.tar"
    with tarfile.open(tpath, "w") as tf:
        info = tarfile.TarInfo("a/evil.png")
        info.type, info.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        tf.addfile(info)
    with pytest.raises(StageError, match="unsafe archive member '../../../etc/passwd'"):
        extract(tpath, tmp_path / "out")


def test_scan_reports_file_system_oddities(shapes_dir, tmp_path, monkeypatch):
    circle = shapes_dir / "circle"
    (circle / "loop-a.png").symlink_to(circle / "loop-b.png")
    (circle / "loop-b.png").symlink_to(circle / "loop-a.png")
    (circle / "gone.png").symlink_to(circle / "no-such-file.png")
    os.close(os.open(bytes(circle) + b"/latin1-\xe9.png", os.O_CREAT | os.O_WRONLY))  # not UTF-8
    (shapes_dir / "line\nbreak").mkdir()  # a class folder name that would break labels.txt
    shutil.copy(circle / "000.png", shapes_dir / "line\nbreak" / "000.png")
    os.mkdir(bytes(shapes_dir) + b"/bad-\xff")  # a class folder name that is not UTF-8
    shutil.copy(circle / "000.png", os.fsdecode(bytes(shapes_dir) + b"/bad-\xff/000.png"))
    (shapes_dir / "square" / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path="."):  # as root nothing is unreadable, so make one folder refuse to list
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    files, skipped = sources.scan(shapes_dir)
    reasons = {s["path"]: s["reason"] for s in skipped}
    assert reasons == {
        "circle/loop-a.png": "symbolic link loop", "circle/loop-b.png": "symbolic link loop",
        "circle/gone.png": "broken symbolic link", "circle/latin1-\\xe9.png": "file name is not valid UTF-8",
        "line\nbreak/": "class folder name has control characters or line breaks",
        "bad-\\xff/": "class folder name is not valid UTF-8",
        "square/locked/": "folder cannot be read"}
    assert {f["label"] for f in files} == {"circle", "square", "triangle"} and len(files) == 24
    json.dumps(skipped, ensure_ascii=False).encode("utf-8")  # every path can be written out


def test_csv_short_rows_bad_labels_and_encodings_are_named(shapes_dir, caplog):
    (shapes_dir / "labels.csv").write_text(
        "image,label\n"
        "circle/000.png,round\n"
        "circle/001.png\n"                      # short row
        'square/000.png,"two\nlines"\n'         # a label with a line break
        "square/001.png, round \n")            # the same label with spaces: one class
    _, _, files, skipped = sources.open_source(str(shapes_dir / "labels.csv"), ingest_params())
    assert [(f["path"], f["label"]) for f in files] == [("circle/000.png", "round"), ("square/001.png", "round")]
    assert [(s["path"], s["reason"]) for s in skipped][:2] == [
        ("labels.csv:3", "short row in the CSV (1 of 2 columns)"),
        ("square/000.png", "label has control characters or line breaks")]
    assert skipped[1]["detail"] == "labels.csv row 4: 'two\\nlines'"
    assert "labels.csv: spaces around the label removed on row(s) 5" in caplog.text
    (shapes_dir / "labels.csv").write_bytes("image,label\ncircle/000.png,rond\ncircle/001.png,carré\n".encode("latin-1"))
    with pytest.raises(StageError, match=r"labels\.csv is not UTF-8 text \(line 3: b'\\xe9\\n'\); save it as UTF-8"):
        sources.open_source(str(shapes_dir / "labels.csv"), ingest_params())


def test_ingest_on_odd_files_prints_no_traceback(shapes_dir, tmp_path):
    (shapes_dir / "circle" / "loop.png").symlink_to(shapes_dir / "circle" / "loop.png")
    os.close(os.open(bytes(shapes_dir) + b"/square/\xff.png", os.O_CREAT | os.O_WRONLY))
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    out = subprocess.run([sys.executable, "-m", "pipeline", "ingest", "--source", str(shapes_dir), "--manifest",
                          str(tmp_path / "manifest.csv"), "--report", str(tmp_path / "ingest.json")],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    report = json.loads((tmp_path / "ingest.json").read_text())
    assert report["skipped_by_reason"] == {"file name is not valid UTF-8": 1, "symbolic link loop": 1}


def test_a_chain_of_look_alikes_is_not_grouped_and_the_warning_names_the_params(caplog):
    from types import SimpleNamespace

    rows = _rows([(f"a/{i}", "a", "", f"h{i:03d}") for i in range(30)])
    alike = np.ones((30, 8)) + np.random.default_rng(0).normal(0, 0.01, (30, 8))
    p = SimpleNamespace(audit=SimpleNamespace(neighbours=5, duplicate_similarity=0.9))
    groups, grouping = split.near_duplicate_groups(rows, alike, p)
    assert len(groups) == 30 and grouping == "refused: one group would hold 30 of 30 images"
    assert "audit.duplicate_similarity" in caplog.text and "split.group_near_duplicates" in caplog.text
    twins = np.random.default_rng(1).normal(size=(30, 64))
    twins[7] = twins[3] * 1.01
    groups, grouping = split.near_duplicate_groups(rows, twins, p)
    assert grouping == "on" and [len(g) for g in groups].count(2) == 1 and len(groups) == 29
