"""The whole pipeline in about a minute: `dvc repro` on a generated dataset, no downloads.

    python tests/tiny_run.py DIR

makes DIR/shapes (three classes of coloured shapes) and DIR/project (a fresh git +
DVC copy of this project's code, dvc.yaml and params.yaml with the TINY overrides
below: 32 px images, a randomly initialised MobileNetV2, one fine-tuning epoch), runs
`dvc repro` there and prints the metrics. The CI workflow runs it on every push; the
checkout itself is never touched. The end-to-end tests run the same configuration.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]  # tests/ helpers, also when run as a script
import conftest  # noqa: E402,F401  (puts the project root on sys.path, quiets TensorFlow)
from project import Project, default_params  # noqa: E402
from shapes import make_dataset  # noqa: E402

TINY = dict(
    split={"strategy": "auto", "val_fraction": 0.2, "test_fraction": 0.25},
    base={"backbone": "MobileNetV2", "weights": "none", "image_size": 32, "pooling": "avg"},
    augment={"copies": 1},
    train_head={"epochs": 40, "patience": 10, "learning_rate": 0.003, "batch_size": 32},
    finetune={"unfreeze_layers": 5, "epochs": 1, "learning_rate": 1e-4, "batch_size": 16, "patience": 1},
    export={"representative_images": 16, "timing_runs": 8},
)


def tiny_project(path: Path, dataset: Path) -> Project:
    """A fresh project at ``path`` with ``dataset`` as its data/images and the TINY settings."""
    return Project(path, default_params(**TINY), data=dataset)


def main(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty; give a new folder")
    start = time.monotonic()
    project = tiny_project(out / "project", make_dataset(out / "shapes", per_class=40, size=40))
    ran = project.repro()
    print(f"dvc repro ran {', '.join(ran)} in {time.monotonic() - start:.0f} s")
    print(json.dumps(project.metrics(), indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]).resolve())
