"""Image quality as the audit reads it: brightness, contrast, blur and entropy, measured so that
resizing an image does not change them (on the grey image at one long side)."""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


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


def measure(im: Image.Image) -> dict[str, float]:
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
