"""Image files and manifests: decoding, resizing, hashing, CSV manifests. No TensorFlow here,
so ingest and split start in a second instead of paying TensorFlow's import."""
from __future__ import annotations

import collections
import contextlib
import csv
import hashlib
import io
import multiprocessing
import os
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from pipeline.lib import artifacts
from pipeline.lib.artifacts import StageError

T = TypeVar("T")
R = TypeVar("R")

# What ingest records of each image it keeps: its path inside the source, label, the source's own
# split (or ""), content hash, size in bytes and pixels. Later stages read the source through it.
MANIFEST_FIELDS = ["path", "label", "split", "sha256", "bytes", "width", "height"]
SPLITS = ("train", "val", "test")
# Where a group of copies spanning the source's own splits goes (ingest keeps one copy, split
# places a near-duplicate group): the first of its splits in this order, so an evaluation image
# is never moved into training. "": the source had no split folders.
SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2, "": 3}
# What the split stage records of each image in train.csv, val.csv and test.csv.
SPLIT_FIELDS = ["path", "label", "sha256"]  # the hash: later stages check each image they read against it


def load_image(path: Path | io.BytesIO, size: int) -> np.ndarray:
    """Decode any Pillow-readable image to a ``(size, size, 3)`` uint8 RGB array.

    The same function prepares training, evaluation and prediction inputs, so
    they can never disagree, and ingest checks each image through ``to_rgb``, its
    second half, so an image ingest keeps is one every later stage reads. EXIF
    orientation is applied (phone photos; ignored where the EXIF block is
    unreadable), every mode (grayscale, RGBA, palette, CMYK, 16-bit) becomes RGB,
    and the aspect ratio is squashed, as ``keras.utils.image_dataset_from_directory``
    does.
    """
    with Image.open(path) as im:
        # JPEG can decode at 1/2, 1/4, 1/8 scale: far faster and smaller for big photos.
        im.draft("RGB", (size, size))
        with _decoding(im):
            return to_rgb(im, size)


def to_rgb(im: Image.Image, size: int) -> np.ndarray:
    """``load_image`` of an opened image: upright, RGB, ``size`` x ``size``. A large canvas is
    first shrunk by an integer factor (``shrunk``), so the steps below never copy it whole."""
    im = rgb(upright(shrunk(im, size)))
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def rgb(im: Image.Image) -> Image.Image:
    """``im`` in RGB as the model sees it: 16- and 32-bit grey by its top 8 bits of 16, and
    transparent pixels white, not whatever colour hides under alpha=0."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        im = Image.fromarray((np.asarray(im, dtype=np.float64) / 256).clip(0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.new("RGB", rgba.size, (255, 255, 255))
        im.paste(rgba, mask=rgba.getchannel("A"))
    return im.convert("RGB")


def shrunk(im: Image.Image, size: int) -> Image.Image:
    """A canvas over ``LARGE_DECODE_PIXELS`` reduced by the largest integer factor that keeps both
    sides at least twice ``size`` (block means, in its own mode); a smaller image as it is."""
    factor = min(im.size) // (2 * size)
    if im.size[0] * im.size[1] <= LARGE_DECODE_PIXELS or factor < 2:
        return im
    if im.mode.startswith("I;16"):  # Image.reduce refuses 16-bit modes; a box resize is the same block means
        small = im.resize((im.size[0] // factor, im.size[1] // factor), Image.Resampling.BOX)
    elif im.mode in ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK"):
        small = im.reduce(factor)
    else:  # palette and 1-bit images convert cheaply first
        small = im.convert("RGBA" if "transparency" in im.info else "RGB").reduce(factor)
    small.info = {**im.info, **small.info}  # the raw EXIF block among them, for upright
    return small


def upright(im: Image.Image) -> Image.Image:
    """``im`` turned as its EXIF orientation says; as it is where the EXIF block is damaged
    (Pillow raises struct.error, TypeError and more re-reading such a block): a readable
    photo with a broken EXIF block is still a photo."""
    with warnings.catch_warnings():  # Pillow warns of each corrupt EXIF tag it skips
        warnings.simplefilter("ignore", UserWarning)
        try:
            return ImageOps.exif_transpose(im)
        except Exception:
            return im


# Images above this many pixels (after JPEG's reduced draft decode) decode one at a time per process:
# predict decodes in threads, and a few hostile files (a 16-bit PNG decodes at 2-4 bytes a pixel)
# decoding together would otherwise multiply the peak memory.
LARGE_DECODE_PIXELS = 4_000_000
_LARGE = threading.Lock()


@contextlib.contextmanager
def _decoding(im: Image.Image) -> Iterator[None]:
    if im.size[0] * im.size[1] <= LARGE_DECODE_PIXELS:
        yield
        return
    with _LARGE:
        im.load()
        yield


def thumbnail(path: Path | io.BytesIO, size: int) -> np.ndarray:
    """The image upright and in its own aspect ratio, at most ``size`` pixels a side, its colours
    as ``load_image`` makes them: for people to look at."""
    with Image.open(path) as im:
        im.draft("RGB", (size, size))
        with _decoding(im):
            im = rgb(upright(shrunk(im, size)))
            im.thumbnail((size, size))
            return np.asarray(im, dtype=np.uint8)


# Pixels one image may decode to (at JPEG's reduced draft scale), 3 bytes each as RGB. Pillow's own
# bomb limit is far higher, and a PNG, which has no reduced decode, costs its full size in memory.
MAX_DECODE_PIXELS = 40_000_000


class ImageTooLarge(ValueError):
    """The image would decode to more than MAX_DECODE_PIXELS pixels."""


def image_files(folder: Path, deep: list[Path] | None = None) -> list[Path]:
    """The image files under ``folder`` (any extension Pillow knows), sorted; hidden files and
    folders left out, and so are folders past ``artifacts.MAX_DEPTH`` (appended to ``deep``)."""
    extensions = set(Image.registered_extensions())
    found = []
    for dirpath, dirnames, filenames in artifacts.walk(folder, deep=deep):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [dirpath / name for name in filenames if not name.startswith(".")
                  and Path(name).suffix.lower() in extensions and (dirpath / name).is_file()]
    return sorted(found)


def inspect_image(path: Path) -> tuple[int, int]:
    """Fully decode ``path`` (so truncated files fail here, not in training); return (width, height)."""
    with warnings.catch_warnings():  # Pillow warns of large images at open; the limit below decides
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as err:  # past twice Pillow's limit: refused at open
            raise ImageTooLarge(f"{err}; the limit is {MAX_DECODE_PIXELS:,} decoded pixels") from err
    with im:
        width, height = im.size
        im.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # decodes every byte, at low cost
        if im.size[0] * im.size[1] > MAX_DECODE_PIXELS:
            raise ImageTooLarge(f"{width}x{height} pixels; the limit is {MAX_DECODE_PIXELS:,} decoded pixels")
        im.load()
        png = im.format == "PNG"
        to_rgb(im, 8)  # what every later stage does to it (load_image), at low cost
    if png:  # Pillow decodes a PNG cut off in its last chunks without a word; its chunk checks object
        with Image.open(path) as im:
            im.verify()
    return width, height


def read_recorded(root: Path, row: dict) -> io.BytesIO:
    """The bytes of the image ``row`` records (``root / row["path"]``), checked against the content
    hash ingest recorded: a source changed behind the pipeline's back stops the stage, never
    trains on images the manifest does not describe."""
    path = Path(root) / row["path"]
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise StageError(f"{path}: recorded by ingest but missing. Fetch the source with `dvc pull`, "
                         "or run `dvc repro`, which reruns ingest on the source as it is") from err
    if hashlib.sha256(data).hexdigest() != row["sha256"]:
        raise StageError(f"{path} changed since ingest recorded it (its content hash differs); "
                         "run `dvc repro`, which reruns ingest first")
    return io.BytesIO(data)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_csv(path: Path, required: Iterable[str] = ()) -> list[dict[str, str]]:
    """The rows of a CSV a stage wrote, which must have the ``required`` columns: a file that is
    not such a CSV (not UTF-8, a NUL byte, a row longer than the header, a column renamed) is
    ``damaged``, named with the stage that writes it."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise artifacts.damaged(path, f"no column {', '.join(missing)}")
            rows = list(reader)
    except (csv.Error, UnicodeDecodeError) as err:
        raise artifacts.damaged(path, f"not a readable UTF-8 CSV: {err}") from err
    if required and any(None in row or None in row.values() for row in rows):
        raise artifacts.damaged(path, "a row has more or fewer fields than the header")
    return rows


def write_csv(path: Path, rows: Iterable[dict], fields: list[str]) -> None:
    """Write rows to ``path`` (call inside an atomic context: this writes in place)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def examine(path: Path) -> dict:
    """What ingest records of one file: ``{sha256, bytes, width, height}`` of a readable image, or
    ``{reason, detail}`` of one it skips."""
    try:
        width, height = inspect_image(path)
    except ImageTooLarge as err:
        return {"reason": "image too large to decode", "detail": str(err)}
    except Exception as err:  # Pillow raises many types for bad files
        return {"reason": "not a readable image", "detail": f"{type(err).__name__}: {err}"}
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, "width": width, "height": height}


def decode_recorded(root: Path, size: int, row: dict) -> np.ndarray:
    """``load_image`` of the image ``row`` records, checked against its hash (``read_recorded``)."""
    return load_image(read_recorded(root, row), size)


# Image quality is measured on the grey image resized, up or down, to this long side: the same
# figures for an image and any resized copy of it, so a small original does not look blurred.
QUALITY_SIDE = 128
QUALITY_FIELDS = ["brightness", "contrast", "blur", "entropy"]
BLUR_BOX = 11  # the re-blur's box width in the blur measure, as Crete-Roffet et al. define it


def blur(g: np.ndarray) -> float:
    """How blurred a grey image (0-1) is, from 0 (sharp) to 1: the share of its neighbouring-pixel
    variation that survives blurring it again with a BLUR_BOX box, along the worse of its two axes
    (Crete-Roffet, Dolmiere, Ladret and Nicolas 2007, "The blur effect"). A sharp image loses much
    of its variation to the box; a blurred one has little left to lose. A ratio, so the contrast
    and the brightness do not enter."""
    worst = 0.0
    for axis in (0, 1):
        if g.shape[axis] < 2:
            return 1.0  # a single row or column: no variation to measure
        varied = np.abs(np.diff(g, axis=axis))
        reblurred = np.abs(np.diff(ndimage.uniform_filter1d(g, BLUR_BOX, axis=axis), axis=axis))
        total = varied.sum()
        kept = total - np.maximum(varied - reblurred, 0).sum()
        worst = max(worst, float(kept / total) if total > 1e-9 else 1.0)
    return worst


def quality(im: Image.Image) -> dict[str, float]:
    """What the audit's image-quality checks read: mean brightness and its standard deviation
    (0-1 grey levels), the ``blur`` measure and the grey-level histogram's entropy in bits (0 for
    a constant image, 8 at most), on the image resized to QUALITY_SIDE on its long side."""
    grey = im.convert("L")
    scale = QUALITY_SIDE / max(grey.size)
    if scale != 1:
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))),
                           Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR)
    g = np.asarray(grey, dtype=np.float32) / 255
    hist = np.bincount(np.asarray(grey).ravel(), minlength=256) / g.size
    hist = hist[hist > 0]
    return {"brightness": float(g.mean()), "contrast": float(g.std()), "blur": blur(g),
            "entropy": float(-(hist * np.log2(hist)).sum())}


def decode_and_measure(root: Path, size: int, row: dict) -> tuple[np.ndarray, dict[str, float]]:
    """``decode_recorded`` and the image's ``quality``, from one read of the file."""
    data = read_recorded(root, row)
    pixels = load_image(data, size)
    data.seek(0)
    with Image.open(data) as im:
        im.draft("RGB", (QUALITY_SIDE, QUALITY_SIDE))
        with _decoding(im):
            return pixels, quality(upright(im))


def cores() -> int:
    """The cores this process may run on (``taskset`` and cgroup cpusets count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def process_batches(fn: Callable[[T], R], items: list[T], size: int, ahead: int = 2) -> Iterator[list[R]]:
    """``fn`` over ``items`` in worker processes, one per core, yielded ``size`` results at a time,
    in order (so the output never depends on the core count), with ``ahead`` batches in flight:
    the workers decode the next batches while the caller works on this one, and memory holds a
    few batches, never all results.

    Processes, not threads: Pillow releases the GIL only inside the decode itself, and for a
    small image most of the work is Python-side (Pillow's wrappers, NumPy conversion, the
    per-image calls) and holds it, so threads would mostly take turns on one core.
    ``fn`` must be picklable: a module-level function, or a ``functools.partial`` of one. The
    workers are spawned, never forked, since the caller may have TensorFlow's threads running.
    One core: everything runs here, with no workers."""
    starts = range(0, len(items), size)
    if cores() == 1:
        yield from ([fn(item) for item in items[start:start + size]] for start in starts)
        return
    workers = cores()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: collections.deque = collections.deque()
        for start in starts:
            part = items[start:start + size]
            pending.append(pool.map(fn, part, chunksize=max(1, len(part) // (4 * workers))))
            if len(pending) > ahead:
                yield _results(pending.popleft())
        while pending:
            yield _results(pending.popleft())


def _results(batch: Iterator[R]) -> list[R]:
    """A worker's results; its exception as the worker raised it. concurrent.futures chains the
    worker's traceback text to it as a cause; that text becomes a note instead (shown with the
    whole traceback under PIPELINE_DEBUG=1), so the user's one line stays the error's own."""
    try:
        return list(batch)
    except Exception as err:
        if err.__cause__ is not None:
            err.add_note(f"in a worker process:{err.__cause__}")
            err.__cause__ = None
        raise


def process_map(fn: Callable[[T], R], items: list[T], size: int = 256) -> Iterator[R]:
    """``process_batches`` one result at a time."""
    for batch in process_batches(fn, items, size):
        yield from batch


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """``map`` over threads, in order, so the result never depends on the thread count. For the
    commands (predict, rank): no worker processes to spawn and no ``fn`` to pickle, in a process
    that already holds a model. Threads overlap waiting on disk and the parts of decoding that
    release the GIL (Pillow's decode itself); the Python-side work takes turns (``process_batches``
    says why the stages use processes). The default (``ThreadPoolExecutor``'s: cores + 4, at most
    32) keeps the threads busy."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, items)


def save_png(pixels: np.ndarray, path: Path) -> None:
    """Write a uint8 array (H, W) or (H, W, 3) as a lossless PNG."""
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path, format="PNG")
