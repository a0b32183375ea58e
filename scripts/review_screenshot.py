"""A screenshot of the review page (python -m pipeline review), to look at by eye.

    python scripts/review_screenshot.py OUT.png [--audit reports/audit] [--images data/images]
    python scripts/review_screenshot.py OUT.png --synthetic 30   # 30 classes of generated images

Serves the page as `review` does (on 127.0.0.1, decisions to a scratch file) and takes headless
Chromium's screenshot of it. ``--synthetic N`` makes a scratch folder of N class folders and an
audit report of label issues naming them: the page at many classes, without a pipeline run.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline import review  # noqa: E402

FIELDS = "file,split,label,suggested,probability,issue,severity,value,twin,twin_split\n"


def synthetic(folder: Path, classes: int) -> tuple[Path, Path]:
    """N class folders of four 300 px images each, and a label-issues report over them."""
    rng = np.random.default_rng(0)
    rows = []
    for c in range(classes):
        name = f"class_{c:02d}"
        (folder / "images/train" / name).mkdir(parents=True)
        for i in range(4):
            pixels = np.clip(rng.normal(60 + 6 * c, 40, (300, 300, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"images/train/{name}/{i}.jpg")
        rows.append(f"train/{name}/0.jpg,train,{name},class_{(c + 7) % classes:02d},{0.99 - c / (2 * classes):.2f},,,,,\n")
    (folder / "audit").mkdir()
    (folder / "audit/label_issues.csv").write_text(FIELDS + "".join(rows))
    return folder / "audit", folder / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--audit", type=Path, default=Path("reports/audit"))
    parser.add_argument("--images", type=Path, default=Path("data/images"))
    parser.add_argument("--synthetic", type=int, help="this many generated classes instead")
    parser.add_argument("--size", default="1280,1400", help="window width,height")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        audit, images = synthetic(Path(tmp), args.synthetic) if args.synthetic else (args.audit, args.images)
        server, url = review.serve(review.Review(audit, images, Path(tmp) / "decisions.csv"))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        chromium = shutil.which("chromium") or shutil.which("chromium-browser") or sys.exit("no chromium on PATH")
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={tmp}/profile", f"--window-size={args.size}", "--virtual-time-budget=5000",
                        f"--screenshot={args.out.resolve()}", url], check=True, capture_output=True, timeout=120)
        server.shutdown()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
