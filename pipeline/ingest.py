"""ingest: ingest.source (folder, .zip/.tar.gz archive, or http(s) URL of one) -> data/raw/ + report.

The source holds one folder per class, optionally below ``train/``,
``validation/`` (or ``val/``) and ``test/`` folders. Every file is decoded;
what is not a readable image is skipped and listed, with the reason, in the
ingest report. Kept images are copied (the source is never modified) next to
``manifest.csv``: relative path, label, predefined split, sha256, width, height.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from pipeline import artifacts, images, params
from pipeline.artifacts import StageError

PARAMS = ["ingest"]
SPLIT_DIRS = {"train": "train", "validation": "val", "val": "val", "test": "test"}
log = logging.getLogger("pipeline.ingest")


def keras_cache_dir() -> Path:
    """Keras' cache (``$KERAS_HOME``, default ``~/.keras``), so a pre-seeded cache works offline."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def download(url: str, sha256: str | None) -> Path:
    """Download ``url`` into ``$KERAS_HOME/datasets/`` once, with a progress bar and checksum."""
    target = keras_cache_dir() / "datasets" / Path(urllib.parse.urlparse(url).path).name
    if target.exists() and (sha256 is None or images.sha256_file(target) == sha256.lower()):
        log.info("using cached %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s -> %s", url, target)
    try:
        with artifacts.atomic_file(target) as tmp, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                while block := response.read(1 << 20):
                    f.write(block)
                    bar.update(len(block))
            got = images.sha256_file(tmp)
            if sha256 is not None and got != sha256.lower():
                raise StageError(f"ingest.sha256 mismatch for {url}: expected {sha256}, got {got}; "
                                 "the download was discarded")
    except OSError as err:  # URLError, timeouts and HTTP errors are OSErrors
        raise StageError(f"could not download {url} ({err}). Offline? Place the archive at {target} "
                         "or point ingest.source at a local folder or archive") from None
    return target


def extract(archive: Path, dest: Path) -> None:
    """Unpack a .zip or .tar(.gz|.bz2|.xz) archive; members escaping ``dest`` are refused."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            _refuse_unsafe(archive, zf.namelist())
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            _refuse_unsafe(archive, tf.getnames())
            try:
                tf.extractall(dest, filter="data")  # also refuses links that point outside
            except tarfile.FilterError as err:
                raise StageError(f"{archive}: refusing unsafe archive member ({err})") from None
    else:
        raise StageError(f"ingest.source {archive} is neither a folder nor a .zip/.tar archive")


def _refuse_unsafe(archive: Path, names: list[str]) -> None:
    for name in names:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise StageError(f"{archive}: refusing unsafe archive member {name!r}")


@contextlib.contextmanager
def local_source(source: str, sha256: str | None) -> Iterator[Path]:
    """Yield a folder holding the dataset, downloading and unpacking archives as needed."""
    if urllib.parse.urlparse(source).scheme in ("http", "https"):
        path = download(source, sha256)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise StageError(f"ingest.source {source!r} does not exist (resolved to {path.resolve()})")
    if path.is_dir():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
        log.info("unpacking %s", path)
        extract(path, Path(tmp))
        yield Path(tmp)


def dataset_root(folder: Path) -> Path:
    """Descend through a lone top-level folder, as archives of ``name-<commit>/`` have."""
    entries = [e for e in folder.iterdir() if not e.name.startswith((".", "__MACOSX"))]
    dirs = [e for e in entries if e.is_dir()]
    if len(dirs) == 1 and dirs[0].name not in SPLIT_DIRS and not [e for e in entries if e.is_file()]:
        return dataset_root(dirs[0])
    return folder


def scan(root: Path) -> tuple[list[dict], list[dict]]:
    """List candidate files as ``{path, label, split}``; return them and the skipped entries."""
    top = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_layout = bool(top) and all(d.name in SPLIT_DIRS for d in top)
    class_dirs = [(SPLIT_DIRS[s.name], c) for s in top for c in sorted(s.iterdir()) if c.is_dir()] \
        if split_layout else [("", d) for d in top]
    files, skipped = [], []
    for split, class_dir in class_dirs:
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames.sort()
            for name in sorted(filenames) + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
                path = Path(dirpath, name)
                rel = path.relative_to(root).as_posix()
                if name.startswith("."):
                    skipped.append({"path": rel, "reason": "hidden file"})
                elif path.is_symlink() and not path.resolve().is_relative_to(root.resolve()):
                    skipped.append({"path": rel, "reason": "symbolic link pointing outside the source"})
                elif path.is_dir():
                    skipped.append({"path": rel, "reason": "symbolic link to a folder (not followed)"})
                else:
                    files.append({"path": rel, "label": class_dir.name, "split": split})
    for folder in [root] + (top if split_layout else []):
        for entry in sorted(folder.iterdir()):
            if not entry.is_dir():
                skipped.append({"path": entry.relative_to(root).as_posix(), "reason": "not inside a class folder"})
    return files, skipped


def main() -> None:
    args = artifacts.start(__doc__, "out", "report")
    p = params.load(PARAMS)
    with local_source(p.ingest.source, p.ingest.sha256) as folder:
        root = dataset_root(folder)
        candidates, skipped = scan(root)
        log.info("%s: %d candidate files, checking each one", root, len(candidates))

        def check(entry: dict) -> dict:
            path = root / entry["path"]
            try:
                width, height = images.inspect_image(path)
            except Exception as err:  # Pillow raises many types for bad files
                return {**entry, "reason": f"not a readable image: {type(err).__name__}: {err}"}
            return {**entry, "sha256": images.sha256_file(path), "width": width, "height": height}

        kept = []
        for row in tqdm(images.parallel_map(check, candidates), total=len(candidates), desc="ingest"):
            (skipped if "reason" in row else kept).append(row)
        labels = sorted({row["label"] for row in kept})
        if len(labels) < 2:
            raise StageError(f"ingest.source {p.ingest.source!r}: found {len(labels)} class folder(s) "
                             f"with readable images under {root}; need at least 2 (one folder per class)")
        with artifacts.atomic_dir(args.out) as tmp:
            for row in tqdm(kept, desc="copy", leave=False):
                (tmp / row["path"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / row["path"], tmp / row["path"])
            images.write_csv(tmp / "manifest.csv", kept, images.MANIFEST_FIELDS)

    per_class = collections.Counter(row["label"] for row in kept)
    reasons = collections.Counter(row["reason"].split(":")[0] for row in skipped)
    artifacts.write_json(args.report, {
        "source": p.ingest.source, "kept": len(kept), "skipped": len(skipped),
        "kept_per_class": dict(sorted(per_class.items())),
        "skipped_by_reason": dict(sorted(reasons.items())), "skipped_files": skipped,
    })
    log.info("kept %d images in %d classes: %s", len(kept), len(labels),
             ", ".join(f"{k} {v}" for k, v in sorted(per_class.items())))
    for reason, count in sorted(reasons.items()):
        log.warning("skipped %d file(s): %s (see %s)", count, reason, args.report)


if __name__ == "__main__":
    artifacts.run(main)
