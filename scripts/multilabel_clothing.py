"""Make a task: multi_label dataset from the clothing photos: composites of one to four garments.

    python scripts/multilabel_clothing.py SOURCE OUT_DIR [--seed 0] [--tile 160]

SOURCE is a folder of class folders (optionally below train/, validation/, test/), such as
data/images or ../shared/datasets/clothing-dataset-small. Each photo is used at most once:
they are shuffled (seeded), then dealt out to composites of 1 to 4 photos, each photo
resized to a TILE x TILE quadrant of a 2 x 2 canvas (empty quadrants grey). OUT_DIR gets
images/NNNNN.jpg and labels.csv (``image,label``, the classes of a composite's garments
joined by ``|``), the format `ingest.labels_csv` reads with `task: multi_label`
(docs/multilabel.md). The same SOURCE and seed give the same files on every machine.
OUT_DIR must not exist: nothing is written over.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def photos(source: Path) -> list[tuple[Path, str]]:
    """(photo, class) for every image file in a class folder of ``source``, in a fixed order."""
    found = []
    for path in sorted(source.rglob("*")):
        if path.suffix.lower() in SUFFIXES and path.is_file() and not any(p.startswith(".") for p in path.parts):
            found.append((path, path.parent.name))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile", type=int, default=160, help="pixels a side of each quadrant")
    args = parser.parse_args()
    if args.out.exists():
        sys.exit(f"multilabel_clothing: {args.out} exists; give a new folder (nothing is written over)")
    found = photos(args.source)
    if not found:
        sys.exit(f"multilabel_clothing: no images in class folders below {args.source}")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(found))
    tmp = args.out.with_name(args.out.name + ".tmp")
    (tmp / "images").mkdir(parents=True, exist_ok=False)
    lines, start, n = ["image,label"], 0, 0
    while start < len(order):
        k = int(rng.integers(1, 5))
        chosen = [found[i] for i in order[start:start + k]]
        start += k
        canvas = Image.new("RGB", (2 * args.tile, 2 * args.tile), (128, 128, 128))
        for (path, _), quadrant in zip(chosen, rng.permutation(4)):
            with Image.open(path) as im:
                tile = ImageOps.pad(ImageOps.exif_transpose(im).convert("RGB"), (args.tile, args.tile),
                                    color=(128, 128, 128))
            canvas.paste(tile, (args.tile * int(quadrant % 2), args.tile * int(quadrant // 2)))
        name = f"images/{n:05d}.jpg"
        canvas.save(tmp / name, quality=90)
        lines.append(f"{name},{'|'.join(sorted({label for _, label in chosen}))}")
        n += 1
    (tmp / "labels.csv").write_text("\n".join(lines) + "\n")
    tmp.rename(args.out)
    print(f"wrote {n} composites of {len(found)} photos to {args.out}")


if __name__ == "__main__":
    main()
