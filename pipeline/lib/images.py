"""Image files: finding them in a folder, decoding and resizing them as training does (and
predict, and every exported format's check), hashing them, reading what ingest recorded (checked
against its hash), thumbnails and PNGs. No TensorFlow here, so ingest never pays its import."""
from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

from pipeline.lib import artifacts, quality
from pipeline.lib.errors import StageError



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


def decode_and_measure(root: Path, size: int, row: dict) -> tuple[np.ndarray, dict[str, float]]:
    """``decode_recorded`` and the image's ``quality.measure``, from one read of the file."""
    data = read_recorded(root, row)
    pixels = load_image(data, size)
    data.seek(0)
    with Image.open(data) as im:
        im.draft("RGB", (quality.QUALITY_SIDE, quality.QUALITY_SIDE))
        with _decoding(im):
            return pixels, quality.measure(upright(im))


def save_png(pixels: np.ndarray, path: Path) -> None:
    """Write a uint8 array (H, W) or (H, W, 3) as a lossless PNG."""
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path, format="PNG")
