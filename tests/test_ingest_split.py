"""Sources (folders, archives, URLs) and splits, on tiny generated datasets."""
from __future__ import annotations

import functools
import http.server
import io
import shutil
import tarfile
import threading
import zipfile

import pytest

from pipeline import ingest, split
from pipeline.artifacts import StageError


def test_scan_flat_layout_skips_non_images_and_outside_links(shapes_dir, tmp_path):
    (shapes_dir / "README.md").write_text("about")
    (shapes_dir / "circle" / ".DS_Store").write_bytes(b"\0")
    outside = tmp_path / "outside.png"
    shutil.copy(shapes_dir / "circle" / "000.png", outside)
    (shapes_dir / "square" / "link.png").symlink_to(outside)
    files, skipped = ingest.scan(shapes_dir)
    assert {f["label"] for f in files} == {"circle", "square", "triangle"}
    assert all(f["split"] == "" for f in files)
    reasons = {s["path"]: s["reason"] for s in skipped}
    assert reasons == {"circle/.DS_Store": "hidden file", "README.md": "not inside a class folder",
                       "square/link.png": "symbolic link pointing outside the source"}


def test_scan_split_layout_normalises_validation(shapes_dir, tmp_path):
    root = tmp_path / "ds"
    for src, dst in (("train", "train"), ("validation", "validation"), ("test", "test")):
        shutil.copytree(shapes_dir, root / dst)
    files, _ = ingest.scan(root)
    assert {f["split"] for f in files} == {"train", "val", "test"}
    assert files[0]["path"].startswith("test/circle/")


def test_dataset_root_descends_a_lone_folder(tmp_path):
    (tmp_path / "name-abc123" / "train" / "a").mkdir(parents=True)
    assert ingest.dataset_root(tmp_path) == tmp_path / "name-abc123"


def test_zip_and_tar_sources_unpack(shapes_dir, tmp_path):
    archive = shutil.make_archive(str(tmp_path / "data"), "zip", shapes_dir.parent, "shapes")
    with ingest.local_source(archive, None) as folder:
        assert ingest.dataset_root(folder).name == "shapes"
        assert len(ingest.scan(ingest.dataset_root(folder))[0]) == 24
    tgz = shutil.make_archive(str(tmp_path / "data"), "gztar", shapes_dir.parent, "shapes")
    with ingest.local_source(tgz, None) as folder:
        assert len(ingest.scan(ingest.dataset_root(folder))[0]) == 24


@pytest.mark.parametrize("member", ["../evil.png", "/abs/evil.png"])
def test_unsafe_archive_members_are_refused(tmp_path, member):
    zpath = tmp_path / "bad.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr(member, b"x")
    with pytest.raises(StageError, match="unsafe archive member"):
        ingest.extract(zpath, tmp_path / "out")
    tpath = tmp_path / "bad.tar"
    with tarfile.open(tpath, "w") as tf:
        info = tarfile.TarInfo(member)
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(StageError, match="unsafe archive member"):
        ingest.extract(tpath, tmp_path / "out2")
    assert not (tmp_path / "evil.png").exists()


def test_missing_source_is_named(tmp_path):
    with pytest.raises(StageError, match="does not exist"):
        with ingest.local_source(str(tmp_path / "nope"), None):
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


def test_download_into_keras_cache_with_checksum(served, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    with pytest.raises(StageError, match="sha256 mismatch"):
        ingest.download(served, "0" * 64)
    assert not list((tmp_path / "kh" / "datasets").iterdir())  # nothing kept
    path = ingest.download(served, None)
    assert path == tmp_path / "kh" / "datasets" / "shapes.zip"
    digest = ingest.images.sha256_file(path)
    assert ingest.download(served, digest) == path  # cached copy verified, not fetched again


def test_unreachable_url_says_where_to_put_the_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(StageError, match=r"could not download .*Place the archive at .*datasets/d\.zip"):
        ingest.download("http://127.0.0.1:9/d.zip", None)


def _rows(spec):
    return [{"path": p, "label": l, "split": s, "sha256": h} for p, l, s, h in spec]


def test_deduplicate_keeps_one_copy_and_drops_conflicts():
    rows = _rows([("train/a/1", "a", "train", "h1"), ("test/a/1", "a", "test", "h1"),
                  ("a/2", "a", "", "h2"), ("b/2", "b", "", "h2"), ("b/3", "b", "", "h3")])
    kept, dropped = split.deduplicate(rows)
    assert [r["path"] for r in kept] == ["b/3", "test/a/1"]  # the test copy wins over train
    assert {r["path"]: r["reason"].split(" ")[0] for r in dropped} == \
        {"train/a/1": "duplicate", "a/2": "same", "b/2": "same"}


def test_stratified_split_keeps_classes_and_explains_failure():
    rows = _rows([(f"{c}/{i}", c, "", f"{c}{i}") for c in "abc" for i in range(10)])
    rest, part = split.stratified(rows, 0.3, 0, "test")
    assert len(part) == 9 and {r["label"] for r in part} == {"a", "b", "c"}
    assert not {r["path"] for r in rest} & {r["path"] for r in part}
    lonely = rows + _rows([("d/0", "d", "", "d0")])
    with pytest.raises(StageError, match=r"Classes with fewest images: d \(1\)"):
        split.stratified(lonely, 0.3, 0, "test")
