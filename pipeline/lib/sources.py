"""Where images come from: folders, archives, URLs, labels CSVs and ``keras.datasets``.

``locate`` turns any of them into a local folder without copying a folder source;
``open_source`` adds a list of candidate files ``{path, label, split}`` and a
list of entries skipped on the way ``{path, label, reason}``. Decoding is
ingest's job.
"""
from __future__ import annotations

import csv
import errno
import logging
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import unicodedata
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

from tqdm import tqdm

from pipeline.lib import artifacts, cli, images, multilabel, params
from pipeline.lib.keras_cache import keras_cache_dir
from pipeline.lib.errors import StageError

SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test", "": ""}
KERAS_CLASS_NAMES = {  # keras:<name> sources
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                      "sneaker", "bag", "ankle_boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "cifar100": """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
        butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab
        crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard
        lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom
        oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
        possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
        spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor
        train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split(),
}
MAX_DEPTH = artifacts.MAX_DEPTH  # folder levels below the source's root that are read; deeper ones are reported
MAX_ARCHIVE_MEMBERS = 2_000_000  # members an archive may hold (empty ones pass the byte caps)
log = logging.getLogger("pipeline.lib.sources")


def open_source(source: str, p: SimpleNamespace, task: str = "single_label") -> tuple[Path, Path, list[dict], list[dict]]:
    """``(folder, root, candidates, skipped)`` for ``source`` read with the ``ingest.*`` params ``p``:
    ``folder`` is ``locate(source)``, ``root`` the folder the candidates' paths are relative to
    (the dataset inside ``folder``, or a labels CSV's image folder). A candidate's label is a
    class name, or with ``task`` multi_label a label set (``multilabel.encode``)."""
    if p.csv_label_columns and task != "multi_label":
        raise StageError("ingest.csv_label_columns (one 0/1 column per label) needs task: multi_label; "
                         "set task: multi_label, or ingest.csv_label_columns: []")
    folder = locate(source, p)
    csv_path, csv_is_source = p.labels_csv, False
    if Path(source).suffix.lower() == ".csv" and not source.startswith("keras:"):  # a CSV beside its images
        csv_path, csv_is_source = Path(urllib.parse.urlparse(source).path).name, True
    if csv_path:
        base = folder if csv_is_source else dataset_root(folder)
        csv_file = base / csv_path
        if not csv_file.is_file():
            raise StageError(f"ingest.labels_csv {csv_path!r} not found in {base}")
        root = ((csv_file.parent / p.image_dir) if p.image_dir else csv_file.parent).resolve()
        if not root.is_dir():
            raise StageError(f"ingest.image_dir {p.image_dir!r}: no folder {root}")
        for key, path in (("labels_csv", csv_file.resolve()), ("image_dir", root)):
            if not path.is_relative_to(folder.resolve()):  # DVC tracks the source, nothing outside it
                raise StageError(f"ingest.{key} {getattr(p, key)!r} points outside the source {folder} "
                                 f"(to {path}): DVC would not see its files change. Move them into the source")
        return (folder, root, *from_csv(csv_file, root, p, task))
    if task == "multi_label":
        raise StageError(f"task is multi_label, but source {source!r} has no labels CSV: class folders give each "
                         "image one label. Set ingest.labels_csv to a CSV of the images' labels (docs/multilabel.md), "
                         "or task: single_label")
    root = dataset_root(folder)
    return (folder, root, *scan(root))


def locate(source: str, p: SimpleNamespace | None = None) -> Path:
    """The local folder that holds ``source``'s files; the manifest's paths are relative to it.

    A folder is itself and a labels CSV its folder: the images are read where they are. An
    archive (or the URL of one) is unpacked once, within the ``ingest.max_unpacked_mb`` and
    ``ingest.max_expansion_ratio`` caps, into ``$KERAS_HOME/datasets/unpacked/<name>-<content
    hash>/``, and a ``keras:<name>`` dataset is written once beside it: outside the project, so
    it costs no DVC-tracked files, and found again by every later stage that reads the images.

    ``p`` holds the caps (ingest passes its params). Every later stage passes none: it reads only
    what ingest recorded, checked against its hashes, so the caps bound its work but never change
    its output, and they are read from params.yaml (``params.limits``) without being a dependency:
    changing one reruns ingest, which checks the source against them, and nothing else.
    """
    if source.startswith("keras:"):
        name = source[len("keras:"):]
        if name not in KERAS_CLASS_NAMES:
            raise StageError(f"source {source}: the keras datasets are "
                             + ", ".join(f"keras:{n}" for n in KERAS_CLASS_NAMES))
        return _once(unpacked_dir() / f"keras-{name}", lambda tmp: write_keras_dataset(name, tmp))
    path = download(source) if is_url(source) else Path(source).expanduser()
    if not path.exists():
        raise StageError(f"source {source!r} does not exist (resolved to {path.resolve()}). Fetch the "
                         f"tracked data with `dvc pull`, or put images there and `dvc add {source}`")
    if path.suffix.lower() == ".csv":
        return path.parent
    if path.is_dir():
        return path
    digest = images.sha256_file(path)[:16]  # a changed archive is unpacked anew

    def unpack(tmp: Path) -> None:
        caps = p or params.limits()
        extract(path, tmp, caps.max_unpacked_mb, caps.max_expansion_ratio)
    return _once(unpacked_dir() / f"{path.name}-{digest}", unpack)


def unpacked_dir() -> Path:
    """Where archives are unpacked and keras datasets written: ``$KERAS_HOME/datasets/unpacked``.
    Each folder is named by its source's content; delete any of them at will (remade when needed)."""
    return keras_cache_dir() / "datasets" / "unpacked"


def _once(target: Path, make) -> Path:
    """``target``, made by ``make(folder)`` the first time. The folder is renamed into place only
    when complete, and two processes making it at once both end with one complete copy."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        log.info("unpacking into %s (once)", target)
        make(tmp)
        os.rename(tmp, target)
    except OSError as err:
        if not target.is_dir():  # not another process's copy landing first: a real failure
            raise StageError(f"could not write {target} ({err.strerror or err}); free space there "
                             "or set KERAS_HOME to a folder on a larger disk") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def cache_path(url: str) -> Path:
    """Where ``download`` keeps ``url``: ``$KERAS_HOME/datasets/<file name>``."""
    return keras_cache_dir() / "datasets" / Path(urllib.parse.urlparse(url).path).name


def download(url: str) -> Path:
    """Download ``url`` into ``$KERAS_HOME/datasets/`` once, with a progress bar. (For data that
    DVC should track and pin, ``dvc import-url`` the URL instead.)"""
    target = cache_path(url)
    if target.exists():
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
    except OSError as err:  # URLError, timeouts and HTTP errors are OSErrors
        raise StageError(f"could not download {url} ({err}). Offline? Place the archive at {target} "
                         "or `dvc import-url` it on a machine that is online") from err
    return target


def extract(archive: Path, dest: Path, max_mb: float, max_ratio: float) -> None:
    """Unpack a .zip or .tar(.gz|.bz2|.xz) archive; members escaping ``dest`` are refused.

    An archive bomb is stopped by two caps (``ingest.max_unpacked_mb`` and
    ``ingest.max_expansion_ratio``): checked on the sizes the headers declare before anything is
    written, and on the bytes actually written while unpacking, since headers can lie. The free
    space of ``dest``'s disk is checked first too.
    """
    limit = Limit(archive, max_mb, max_ratio)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            _unzip(archive, dest, limit)
        elif tarfile.is_tarfile(archive):
            _untar(archive, dest, limit)
        else:
            raise StageError(f"source {archive} is neither a folder, a .csv nor a readable .zip/.tar archive")
    except StageError:
        raise
    # Damaged archives raise any of these, even from is_tarfile (a bad sparse map: ValueError)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, NotImplementedError, RuntimeError,
            ValueError, OSError, zlib.error, lzma.LZMAError) as err:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise StageError(f"{archive}: the disk filled up while unpacking into {dest} "
                             "(set TMPDIR to a folder on a larger disk)") from err
        raise StageError(f"{archive}: damaged or unsupported archive ({type(err).__name__}: {err})") from err


def _unzip(archive: Path, dest: Path, limit: Limit) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        _refuse_unsafe(archive, [i.filename for i in infos])
        limit.check_declared(sum(i.file_size for i in infos), dest)
        for info in infos:
            target = dest / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                while block := src.read(1 << 20):
                    limit.add(len(block))
                    out.write(block)


def _untar(archive: Path, dest: Path, limit: Limit) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        _refuse_unsafe(archive, [m.name for m in members] + [m.linkname for m in members if m.linkname])
        regular = [m for m in members if m.isfile() or m.isdir() or m.issym() or m.islnk()]
        limit.check_declared(sum(m.size for m in regular if m.isfile()), dest)

        def counted(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
            # tarfile writes exactly member.size bytes (the real size for sparse files)
            member = tarfile.data_filter(member, path)  # also strips odd permissions
            if member is not None and member.isfile():
                limit.add(member.size)
            return member

        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, members=regular, filter=counted)
        else:  # Python < 3.11.4 has no extraction filters: names and link targets were checked above,
            tf.extractall(dest, members=regular)  # and the bytes written are the declared sizes, checked too


class Limit:
    """Byte budget for unpacking one archive (see ``extract``)."""

    def __init__(self, archive: Path, max_mb: float, max_ratio: float):
        self.archive, self.written = archive, 0
        size = archive.stat().st_size
        by_size, by_ratio = max_mb * 1e6, max_ratio * max(size, 1)
        self.cap = min(by_size, by_ratio)
        self.why = (f"ingest.max_unpacked_mb={max_mb:g}" if by_size <= by_ratio
                    else f"ingest.max_expansion_ratio={max_ratio:g} x {size:,} bytes")

    def check_declared(self, total: int, dest: Path) -> None:
        if total > self.cap:
            raise StageError(f"{self.archive}: its members declare {total:,} bytes unpacked, over the "
                             f"{self.cap:,.0f}-byte cap ({self.why}); raise it if the archive is trusted")
        free = shutil.disk_usage(dest).free
        if total > free:
            raise StageError(f"{self.archive}: unpacking needs {total:,} bytes but {dest}'s disk has "
                             f"{free:,} free (set TMPDIR to a folder on a larger disk)")

    def add(self, count: int) -> None:
        self.written += count
        if self.written > self.cap:
            raise StageError(f"{self.archive}: unpacking stopped after {self.written:,} bytes, over the "
                             f"{self.cap:,.0f}-byte cap ({self.why}); its headers understate the sizes, "
                             "so the archive is damaged or hostile")


def dataset_root(folder: Path) -> Path:
    """Descend through a lone top-level folder, as archives of ``name-<commit>/`` have."""
    for _ in range(MAX_DEPTH):
        entries = [e for e in folder.iterdir() if not e.name.startswith((".", "__MACOSX"))]
        dirs = [e for e in entries if e.is_dir()]
        if not (len(dirs) == 1 and dirs[0].name not in SPLIT_NAMES and not [e for e in entries if e.is_file()]):
            return folder
        folder = dirs[0]
    raise StageError(f"{folder}: more than {MAX_DEPTH} nested single folders and no images; "
                     "point the source at the folder that holds the class folders")


def class_folders(root: Path) -> list[tuple[str, Path]]:
    """(split, folder) of each class folder of a source: the folders of ``root``, or of its
    train/validation/test folders where those are all it has (split ""); hidden ones left out."""
    top = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if top and all(d.name in SPLIT_NAMES for d in top):
        return [(SPLIT_NAMES[s.name], c) for s in top for c in sorted(s.iterdir())
                if c.is_dir() and not c.name.startswith(".")]
    return [("", d) for d in top]


def scan(root: Path) -> tuple[list[dict], list[dict]]:
    """Class folders (optionally below train/validation/test folders) -> candidates, skipped."""
    top = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_layout = bool(top) and all(d.name in SPLIT_NAMES for d in top)
    class_dirs = class_folders(root)
    files, skipped = [], []
    for folder in [root] + (top if split_layout else []):  # hidden folders where classes are named
        skipped += [{"path": shown(d, root) + "/", "label": "", "reason": "hidden folder (not read)"}
                    for d in sorted(folder.iterdir()) if d.is_dir() and d.name.startswith(".")]
    for split, class_dir in class_dirs:
        label, found = class_dir.name, 0
        if problem := params.label_problem(label):  # a folder name that would break labels.txt
            skipped.append({"path": shown(class_dir, root) + "/", "label": escaped(label),
                            "reason": f"class folder name {problem}", "detail": repr(label)})
            continue
        unreadable: list[OSError] = []  # os.walk would otherwise skip such folders without a word
        deep: list[Path] = []
        levels = MAX_DEPTH - len(class_dir.relative_to(root).parts)
        for dirpath, dirnames, filenames in artifacts.walk(class_dir, levels, deep, onerror=unreadable.append):
            for hidden in [d for d in dirnames if d.startswith(".")]:  # .thumbnails: predict skips them too
                dirnames.remove(hidden)
                skipped.append({"path": shown(dirpath / hidden, root) + "/", "label": label,
                                "reason": "hidden folder (not read)"})
            for name in filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
                path = Path(dirpath, name)
                entry = {"path": shown(path, root), "label": label}
                if reason := file_problem(path, root):
                    skipped.append({**entry, "reason": reason})
                else:
                    files.append({**entry, "split": split})
                    found += 1
        skipped += [{"path": shown(d, root) + "/", "label": label,
                     "reason": f"folder nested deeper than {MAX_DEPTH} levels (not read)"} for d in deep]
        skipped += [{"path": shown(Path(err.filename), root) + "/", "label": label,
                     "reason": "folder cannot be read", "detail": err.strerror} for err in unreadable]
        if not found:
            skipped.append({"path": class_dir.relative_to(root).as_posix() + "/", "label": label,
                            "reason": "empty class folder"})
    for folder in [root] + (top if split_layout else []):
        for entry in sorted(folder.iterdir()):
            if not entry.is_dir():
                skipped.append({"path": shown(entry, root), "label": "", "reason": "hidden file"
                                if entry.name.startswith(".") else "not inside a class folder"})
    return files, skipped


def escaped(text: str) -> str:
    """``text`` as JSON, CSV and logs can hold it: the bytes of a file name that is not UTF-8
    (which Python keeps as surrogates) appear as \\x escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def shown(path: Path, root: Path) -> str:
    return escaped(path.relative_to(root).as_posix())


def file_problem(path: Path, root: Path) -> str | None:
    """Why a file below a class folder cannot be an image candidate, or None."""
    if path.name.startswith("."):
        return "hidden file"
    relative = path.relative_to(root).as_posix()
    if escaped(relative) != relative:
        return "file name is not valid UTF-8"
    if not path.is_symlink() and not stat.S_ISREG(path.lstat().st_mode):  # a read would wait or never end
        return "not a regular file (a FIFO, device or socket)"
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except FileNotFoundError:
            return "broken symbolic link"
        except RuntimeError:  # a loop, up to Python 3.12
            return "symbolic link loop"
        except OSError as err:  # ELOOP from Python 3.13 on; anything else is named as it is
            if err.errno == errno.ELOOP:
                return "symbolic link loop"
            return f"symbolic link cannot be followed ({err.strerror})"
        if not target.is_relative_to(root.resolve()):
            return "symbolic link pointing outside the source"
        if target.is_dir():
            return "symbolic link to a folder (not followed)"
        if not target.is_file():
            return "not a regular file (a FIFO, device or socket)"
    return None


def from_csv(csv_file: Path, root: Path, p: SimpleNamespace,
             task: str = "single_label") -> tuple[list[dict], list[dict]]:
    """Rows of a labels CSV -> candidates (paths relative to ``root``), skipped rows."""
    multi = task == "multi_label"
    try:
        with open(csv_file, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            named = [("csv_image_column", p.csv_image_column), ("csv_split_column", p.csv_split_column)]
            named += [("csv_label_columns", c) for c in p.csv_label_columns] or [("csv_label_column",
                                                                                  p.csv_label_column)]
            for key, column in named:
                if column is not None and column not in columns:
                    raise StageError(f"ingest.{key} {column!r} is not a column of {csv_file} "
                                     f"(columns: {', '.join(c if c.isprintable() else repr(c) for c in columns)})")
                if column is not None and columns.count(column) > 1:  # csv would keep the last one silently
                    raise StageError(f"{csv_file}: its header names the column {column!r} "
                                     f"{columns.count(column)} times (ingest.{key}); rename all but one")
            if multi and (bad := [c for c in p.csv_label_columns if multilabel.SEP in c]):
                raise StageError(f"ingest.csv_label_columns: label {bad[0]!r} holds {multilabel.SEP!r}, which "
                                 "separates labels in the pipeline's CSVs; rename the column")
            rows = list(reader)
    except UnicodeDecodeError:  # its offsets are within a buffered chunk: find the byte in the file
        data = csv_file.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[:err.start].count(b"\n") + 1
            raise StageError(f"{csv_file} is not UTF-8 text (line {line}: {data[err.start:err.start + 4]!r}); "
                             "save it as UTF-8") from err
    except csv.Error as err:
        raise StageError(f"{csv_file} is not a readable CSV: {err}") from err
    by_stem: dict[str, list[Path]] = {}
    files, skipped, spaced = [], [], []
    for number, row in enumerate(rows, start=2):  # row 1 is the header (a row may span lines)
        if None in row.values():  # csv leaves the missing fields of a short row as None
            skipped.append({"path": f"{csv_file.name}:{number}", "label": "",
                            "reason": f"short row in the CSV ({sum(v is not None for v in row.values())} "
                                      f"of {len(columns)} columns)"})
            continue
        value = row[p.csv_image_column].strip()
        label, problem = "", None
        if p.csv_label_columns:  # multi_label, one 0/1 column per label
            cells = {c: row[c].strip() for c in p.csv_label_columns}
            if bad := [c for c, v in cells.items() if v not in ("0", "1")]:
                problem = f"label column {bad[0]!r} holds {cells[bad[0]][:20]!r}, not 0 or 1"
            label = multilabel.encode(c for c, v in cells.items() if v == "1")
        else:
            raw_label = row[p.csv_label_column]
            label = raw_label.strip()
            if label != raw_label:
                spaced.append(number)
            if multi:  # a label set: "dress|floral", "" for none
                parts = [part.strip() for part in label.split(p.label_separator)]
                parts = [part for part in parts if part]
                problem = next((f"label {bad}" for part in parts if (bad := params.label_problem(part))), None)
                if not problem and (bad := [part for part in parts if multilabel.SEP in part]):
                    problem = (f"label {bad[0]!r} holds {multilabel.SEP!r}, which separates labels in the "
                               "pipeline's CSVs")
                label = multilabel.encode(parts)
        split = (row[p.csv_split_column].strip().lower() if p.csv_split_column else "")
        entry = {"path": value or f"{csv_file.name}:{number}", "label": label}
        if any(unicodedata.category(c) == "Cc" for c in value):  # a NUL byte cannot even name a file
            skipped.append({**entry, "path": f"{csv_file.name}:{number}", "reason": "path has control characters",
                            "detail": repr(value)[:200]})
            continue
        path = (root / value).resolve()
        if value and not path.is_file() and not Path(value).suffix:  # a bare file name: find stem.*
            if not by_stem:
                for f in walk_files(root):
                    by_stem.setdefault(f.stem, []).append(f)
            path = by_stem.get(value, [path])[0].resolve()
        if multi and problem:
            skipped.append({**entry, "label": "", "reason": "bad label in the CSV",
                            "detail": f"{csv_file.name} row {number}: {problem}"[:300]})
        elif not label and not multi:  # multi_label: no label is an answer ("none of these")
            skipped.append({**entry, "reason": "no label in the CSV"})
        elif not multi and (problem := params.label_problem(label)):
            skipped.append({**entry, "label": "", "reason": f"label {problem}",
                            "detail": f"{csv_file.name} row {number}: {label!r}"})
        elif split not in SPLIT_NAMES:
            skipped.append({**entry, "reason": "unknown split in the CSV", "detail": repr(split)})
        elif not path.is_relative_to(root.resolve()):
            skipped.append({**entry, "reason": "path outside the image folder"})
        elif not value or not path.is_file():
            skipped.append({**entry, "reason": "listed in the CSV but not found, and its path has \\ in it: write "
                            "/ between folders" if "\\" in value else "listed in the CSV but not found"})
        else:
            files.append({**entry, "path": path.relative_to(root.resolve()).as_posix(),
                          "split": SPLIT_NAMES[split]})
    listed = {root.resolve() / f["path"] for f in files} | {csv_file.resolve()}
    listed |= {(root / r["path"]).resolve() for r in skipped if "path outside" not in r["reason"]}
    for f in walk_files(root):  # every file of the image folder is used or reported
        if f.resolve() not in listed:
            skipped.append({"path": shown(f, root), "label": "", "reason": "hidden file"
                            if any(part.startswith(".") for part in f.relative_to(root).parts)
                            else "no row in the labels CSV"})
    if spaced:  # " cat" and "cat" are one class
        log.warning("%s: spaces around the label removed on row(s) %s", csv_file.name,
                    ", ".join(map(str, spaced[:20])) + (" ..." if len(spaced) > 20 else ""))
    return files, skipped


def walk_files(root: Path) -> list[Path]:
    """Every file below ``root``, sorted, at most MAX_DEPTH folders down (``artifacts.walk``)."""
    return sorted(dirpath / name for dirpath, _, filenames in artifacts.walk(root) for name in filenames)


def write_keras_dataset(name: str, dest: Path) -> None:
    """Write a ``keras.datasets`` set as ``train|test/<class>/<n>.png`` under ``dest``."""
    import keras  # only this source needs TensorFlow; the others start in a second

    log.info("loading keras.datasets.%s (cache: %s)", name, keras_cache_dir() / "datasets")
    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as err:  # Keras raises a bare Exception when the download fails
        raise StageError(f"could not load keras.datasets.{name} ({err}). Offline? Seed "
                         f"{keras_cache_dir() / 'datasets'} with its files") from err
    names = KERAS_CLASS_NAMES[name]
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        for i, (pixels, label) in enumerate(tqdm(zip(x, y.reshape(-1)), total=len(x), desc=f"{name} {split}")):
            folder = dest / split / names[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            images.save_png(pixels, folder / f"{i:05d}.png")


def is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ("http", "https")


def _refuse_unsafe(archive: Path, names: list[str]) -> None:
    if len(names) > MAX_ARCHIVE_MEMBERS:
        raise StageError(f"{archive}: {len(names):,} members, over the cap of {MAX_ARCHIVE_MEMBERS:,}; "
                         "refusing to unpack it")
    for name in names:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise StageError(f"{archive}: refusing unsafe archive member {name!r}")
        if len(Path(name).parts) > MAX_DEPTH + 4:
            raise StageError(f"{archive}: member {name[:80]!r}... is nested {len(Path(name).parts)} folders "
                             f"deep (more than {MAX_DEPTH + 4}); refusing to unpack it")


def fetch(url: str, dest: Path, folders: list[str]) -> None:
    """Download the archive at ``url`` and move ``folders`` of its dataset root into ``dest``
    (unpacked within the ``ingest`` caps of params.yaml)."""
    p = params.limits()
    with tempfile.TemporaryDirectory(prefix="fetch-") as tmp:
        extract(download(url), Path(tmp), p.max_unpacked_mb, p.max_expansion_ratio)
        root = dataset_root(Path(tmp))
        dest.mkdir(parents=True)
        for name in folders:
            if not (root / name).is_dir():
                raise StageError(f"{url} has no folder {name}/ (found: {sorted(p.name for p in root.iterdir())})")
            shutil.move(root / name, dest / name)  # not rename: the temporary folder may be on another disk


if __name__ == "__main__":  # scripts/get-data.sh: python -m pipeline.lib.sources URL DEST FOLDER...
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cli.run(lambda: fetch(sys.argv[1], Path(sys.argv[2]), sys.argv[3:]))
