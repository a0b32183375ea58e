"""Sources (folders, archives, URLs) and splits, on tiny generated datasets."""
from __future__ import annotations

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
from types import SimpleNamespace

import pytest

from conftest import ROOT
from pipeline import ingest, sources, split
from pipeline.artifacts import StageError


def ingest_params(**overrides) -> SimpleNamespace:
    values = dict(labels_csv=None, image_dir=None, csv_image_column="image",
                  csv_label_column="label", csv_split_column=None)
    return SimpleNamespace(**{**values, **overrides})


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
        with sources.open_source(archive, ingest_params()) as (root, files, skipped):
            assert root.name == "shapes" and len(files) == 24 and not skipped


@pytest.mark.parametrize("member", ["../evil.png", "/abs/evil.png"])
def test_unsafe_archive_members_are_refused(tmp_path, member):
    zpath = tmp_path / "bad.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr(member, b"x")
    with pytest.raises(StageError, match="unsafe archive member"):
        sources.extract(zpath, tmp_path / "out")
    tpath = tmp_path / "bad.tar"
    with tarfile.open(tpath, "w") as tf:
        info = tarfile.TarInfo(member)
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(StageError, match="unsafe archive member"):
        sources.extract(tpath, tmp_path / "out2")
    assert not (tmp_path / "evil.png").exists()


def test_missing_source_is_named(tmp_path):
    with pytest.raises(StageError, match="does not exist"):
        with sources.open_source(str(tmp_path / "nope"), ingest_params()):
            pass


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


def test_fetch_moves_the_named_folders_of_an_archive(served, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
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


def test_stratified_split_keeps_classes_and_explains_failure():
    rows = _rows([(f"{c}/{i}", c, "", f"{c}{i}") for c in "abc" for i in range(10)])
    rest, part = split.stratified(rows, 0.3, 0, "test")
    assert len(part) == 9 and {r["label"] for r in part} == {"a", "b", "c"}
    assert not {r["path"] for r in rest} & {r["path"] for r in part}
    lonely = rows + _rows([("d/0", "d", "", "d0")])
    with pytest.raises(StageError, match=r"Classes with fewest images: d \(1\)"):
        split.stratified(lonely, 0.3, 0, "test")


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
    with sources.open_source(str(shapes_dir / "labels.csv"), p) as (root, files, skipped):
        assert root == shapes_dir
    assert [(f["path"], f["label"], f["split"]) for f in files] == [
        ("circle/000.png", "round", "train"), ("circle/001.png", "round", "val"), ("square/000.png", "boxy", "test")]
    assert [s["reason"] for s in skipped] == [
        "listed in the CSV but not found", "no label in the CSV", "unknown split 'holdout' in the CSV",
        "path outside the image folder"]


def test_csv_inside_an_archive_with_image_dir(shapes_dir, tmp_path):
    (shapes_dir / "meta").mkdir()
    (shapes_dir / "meta" / "labels.csv").write_text("image,label\ncircle/000.png,c\nsquare/000.png,s\n")
    archive = shutil.make_archive(str(tmp_path / "ds"), "zip", shapes_dir.parent, "shapes")
    p = ingest_params(labels_csv="meta/labels.csv", image_dir="..")  # inside the lone top folder
    with sources.open_source(archive, p) as (root, files, skipped):
        assert root.name == "shapes" and [f["label"] for f in files] == ["c", "s"]


def test_csv_with_a_wrong_column_names_the_param(shapes_dir):
    (shapes_dir / "labels.csv").write_text("path,label\ncircle/000.png,c\n")
    with pytest.raises(StageError, match="ingest.csv_image_column 'image' is not a column.*columns: path, label"):
        with sources.open_source(str(shapes_dir / "labels.csv"), ingest_params()):
            pass


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
        sources.extract(tpath, tmp_path / "out")


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
        "line\nbreak/": "class folder name has control characters or line breaks ('line\\nbreak')",
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
    with sources.open_source(str(shapes_dir / "labels.csv"), ingest_params()) as (_, files, skipped):
        pass
    assert [(f["path"], f["label"]) for f in files] == [("circle/000.png", "round"), ("square/001.png", "round")]
    assert [(s["path"], s["reason"]) for s in skipped] == [
        ("labels.csv:3", "short row in the CSV (1 of 2 columns)"),
        ("square/000.png", "label has control characters or line breaks ('two\\nlines')")]
    assert skipped[1]["detail"] == "labels.csv row 4"
    assert "labels.csv: spaces around the label removed on row(s) 5" in caplog.text
    (shapes_dir / "labels.csv").write_bytes("image,label\ncircle/000.png,rond\ncircle/001.png,carré\n".encode("latin-1"))
    with pytest.raises(StageError, match=r"labels\.csv is not UTF-8 text \(line 3: b'\\xe9\\n'\); save it as UTF-8"):
        with sources.open_source(str(shapes_dir / "labels.csv"), ingest_params()):
            pass


def test_ingest_on_odd_files_prints_no_traceback(shapes_dir, tmp_path):
    (shapes_dir / "circle" / "loop.png").symlink_to(shapes_dir / "circle" / "loop.png")
    os.close(os.open(bytes(shapes_dir) + b"/square/\xff.png", os.O_CREAT | os.O_WRONLY))
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    out = subprocess.run([sys.executable, "-m", "pipeline.ingest", "--source", str(shapes_dir), "--out",
                          str(tmp_path / "raw"), "--report", str(tmp_path / "ingest.json")],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    report = json.loads((tmp_path / "ingest.json").read_text())
    assert report["skipped_by_reason"] == {"file name is not valid UTF-8": 1, "symbolic link loop": 1}
