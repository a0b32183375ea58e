"""Shared fixtures. The project root is importable (``pipeline``) and tests/ holds helpers."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

# gto (which DVC's artifacts code imports) calls logging.config.dictConfig when imported, which
# closes every logging handler there is. absl's (TensorFlow's) closes its stream with it, and in a
# test module imported after TensorFlow that stream is pytest's capture file: the run then dies
# with "I/O operation on closed file". Importing gto first leaves it nothing to close.
import gto.log  # noqa: E402,F401


def shared_or_skip(*parts: str) -> Path:
    """A path under ../shared (the offline real assets), or skip the test saying what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"offline asset {path} not present (see ../shared/ASSETS.md); "
                    "this integration test needs the real weights and photos")
    return path


@pytest.fixture
def shapes_dir(tmp_path: Path) -> Path:
    from shapes import make_dataset
    return make_dataset(tmp_path / "shapes", per_class=8, size=40)
