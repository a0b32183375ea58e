"""A small, learnable image dataset made on the spot: one coloured shape per class."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = {"circle": (220, 40, 40), "square": (40, 180, 40), "triangle": (40, 60, 220)}


def draw(kind: str, colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(150, 256, 3))
    im = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(im)
    r = rng.integers(size // 5, size // 3)
    cx, cy = rng.integers(r, size - r, 2)
    jitter = tuple(int(np.clip(c + rng.integers(-30, 31), 0, 255)) for c in colour)
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "circle":
        d.ellipse(box, fill=jitter)
    elif kind == "square":
        d.rectangle(box, fill=jitter)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=jitter)
    noise = rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(im) + noise, 0, 255).astype(np.uint8))


def make_dataset(root: Path, per_class: int = 30, size: int = 48, seed: int = 0) -> Path:
    """Write ``root/<class>/<i>.png`` images (one folder per class) and return ``root``."""
    rng = np.random.default_rng(seed)
    for kind, colour in CLASSES.items():
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(kind, colour, size, rng).save(root / kind / f"{i:03d}.png")
    return root


def make_ood(root: Path, count: int = 12, size: int = 40, seed: int = 1) -> Path:
    """Images of another kind, for the out-of-distribution set: colour noise and soft grey
    stripes or checkerboards of random frequency and phase, none of the shape classes.
    Writes ``root/<i>.png``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(count):
        if i % 2:
            pixels = rng.integers(0, 256, (size, size, 3))
        else:
            f, phase = rng.uniform(0.15, 0.6), rng.uniform(0, np.pi)
            wave = np.sin(f * xx + phase) * (np.sin(f * yy + phase) if i % 4 else 1)
            pixels = np.stack([127 + 60 * wave] * 3, axis=-1)
        Image.fromarray(np.uint8(pixels)).save(root / f"{i:03d}.png")
    return root


def exif_jpeg(rng: np.random.Generator) -> tuple[bytes, int]:
    """A JPEG carrying EXIF (orientation 6 and a text tag), and where its EXIF block starts."""
    import io

    buf, exif = io.BytesIO(), Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "camera"  # orientation and a text tag: EXIF damage to re-read
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue(), buf.getvalue().find(b"Exif\0\0") + 6


def damaged_exif(data: bytes, at: int) -> bytes:
    """``exif_jpeg``'s file with an EXIF block Pillow reads but cannot write back (``struct.error``
    in ``exif_transpose``): its text tag's type made ColorMap's."""
    damaged = bytearray(data)
    damaged[at + 11] = 64
    return bytes(damaged)


def make_multilabel(root: Path, count: int = 120, size: int = 48, seed: int = 0) -> Path:
    """Write ``root/images/<i>.png``, each holding none to all of the CLASSES' shapes (one a
    quadrant, drawn as ``draw`` draws one), and ``root/labels.csv`` (``image,label``, the label
    set joined by ``|``, empty for none): a learnable task: multi_label dataset."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    half = size // 2
    lines = ["image,label"]
    for i in range(count):
        present = sorted(kind for kind in CLASSES if rng.random() < 0.45)
        canvas = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(150, 256, 3)))
        corners = rng.permutation(4)
        for kind, corner in zip(present, corners):
            tile = draw(kind, CLASSES[kind], half, rng)
            canvas.paste(tile, (half * (corner % 2), half * (corner // 2)))
        canvas.save(root / "images" / f"{i:03d}.png")
        lines.append(f"images/{i:03d}.png,{'|'.join(present)}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root
