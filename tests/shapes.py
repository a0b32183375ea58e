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
