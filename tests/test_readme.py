"""The README's command blocks run as written, on the finished tiny project: the block is read
from README.md at test time, so an edit that breaks a command fails here. The files a block
names as examples (photo.jpg, more/photos/, ...) are made from the project's own images first."""
from __future__ import annotations

import csv
import re
import shutil
import subprocess

import pytest

from conftest import ROOT

pytestmark = pytest.mark.e2e


def blocks(heading: str) -> list[str]:
    """The ```bash blocks under README's ``## heading`` (up to the next ``## ``)."""
    text = (ROOT / "README.md").read_text()
    section = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, f"README has no '## {heading}' section"
    found = re.findall(r"^```bash\n(.*?)^```", section.group(1), re.M | re.S)
    assert found, f"README's '## {heading}' has no bash block"
    return found


def run(project, script: str) -> subprocess.CompletedProcess:
    """``script`` in bash, stopping at the first command that fails (as a reader would)."""
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=project.path, env=project.env,
                          capture_output=True, text=True, timeout=900)


def test_the_use_the_model_block_runs_as_written(finished, tmp_path):
    project = finished.copy(tmp_path / "p")
    root = project.path
    rows = list(csv.DictReader(open(root / "data/split/test.csv")))
    pictures = [root / "data/images" / r["path"] for r in rows[:4]]
    # the inputs the block names, from the test split (PNGs in the tiny project; the suffix
    # does not decide how predict reads a file)
    shutil.copy(pictures[0], root / "photo.jpg")
    for folder, picked in (("more/photos", pictures[:2]), ("shop", pictures[2:]), ("big/folder", pictures),
                           ("unlabelled", pictures)):
        (root / folder).mkdir(parents=True)
        for picture in picked:
            shutil.copy(picture, root / folder / picture.name)

    commands = "".join(blocks("Use the model"))
    out = run(project, commands)
    assert out.returncode == 0, f"{commands}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    assert len(list((root / "why").glob("*.gradcam.png"))) == 1
    assert len((root / "predictions.csv").read_text().splitlines()) == 1 + len(pictures)
    assert len((root / "label-next.csv").read_text().splitlines()) >= 2

