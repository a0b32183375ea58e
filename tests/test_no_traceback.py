"""Properties over bad input, with stages run as users run them (subprocesses):
every stage ends a bad run with a one-line message, never a Python traceback; and a
fuzz pass of random files that look like images never crashes ingest or lets a
broken image through."""
from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import ROOT
from pipeline.lib import images, schemas
from project import BIN
import shapes
from shapes import make_dataset
from test_ingest_split import broken_sparse_tar, zeros_zip

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
       "TF_CPP_MIN_LOG_LEVEL": "3"}


def run_stage(cwd: Path, cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(shlex.split(cmd), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def bad_params(text: str) -> str:
    """params.yaml with a non-finite rate, an image size that would exhaust memory and a negative seed."""
    for old, new in (("learning_rate: 1.0e-04", "learning_rate: .inf"), ("image_size: 160", "image_size: 100000"),
                     ("seed: 42", "seed: -1")):
        assert old in text
        text = text.replace(old, new)
    return text


CASES = {  # what the project folder holds besides dvc.yaml -> what the stages must say, and which stages
    "no inputs": (lambda params: params, "missing input", list(STAGES)),
    "bad params": (bad_params, "invalid params.yaml", list(STAGES)),  # each stage reads its own keys
    # one parse for all, before any key is read, failing as the bad params above do: two stages show it
    "invalid YAML": (lambda params: "seed: [1,\n", "params.yaml is not valid YAML", ["train_head", "summary"]),
}


@pytest.mark.parametrize("case", CASES)
def test_every_stage_ends_a_bad_run_with_one_line_not_a_traceback(tmp_path, case):
    make_params, message, stages = CASES[case]
    (tmp_path / "params.yaml").write_text(make_params((ROOT / "params.yaml").read_text()))
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    with ThreadPoolExecutor(2) as pool:  # each stage pays TensorFlow's import: two at a time
        runs = dict(zip(stages, pool.map(lambda s: run_stage(tmp_path, STAGES[s]["cmd"]), stages)))
    for stage, out in runs.items():
        log = out.stdout + out.stderr
        assert out.returncode == 1 and "Traceback" not in log, f"{stage}: {log[-2000:]}"
        if case == "no inputs" and "--source data/images" in STAGES[stage]["cmd"]:  # read through the manifest
            assert "source 'data/images' does not exist" in log, f"{stage}: {log[-2000:]}"
        else:
            assert message in log, f"{stage}: {log[-2000:]}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml", "params.yaml"]  # nothing written


def test_no_stage_imports_tensorflow_before_its_inputs_and_params_are_checked():
    """The stage modules bind the TensorFlow-importing libraries lazily (pipeline/lib/__init__.py)
    and import TensorFlow in main() after their checks, so the cases above answer in a second,
    not after TensorFlow's import."""
    code = ("import importlib, sys\n"
            f"for name in {sorted(STAGES)!r}: importlib.import_module('pipeline.stages.' + name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'ai_edge_litert')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout[-2000:] + out.stderr[-2000:]


def bad_sources(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Archives and CSV sources that must stop ingest with a message naming the file."""
    cases = {}
    bomb = zeros_zip(tmp / "bomb.zip", 30)
    cases["zip bomb"] = bomb, "over the"
    half = tmp / "half.zip"
    half.write_bytes(bomb.read_bytes()[: bomb.stat().st_size // 2])
    cases["cut-off zip"] = half, "is neither a folder, a .csv nor a readable .zip/.tar archive"
    cases["tar with a broken sparse map"] = broken_sparse_tar(tmp / "sparse.tar"), "damaged or unsupported archive"
    gz = tmp / "garbage.tar.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(2000))
    cases["garbage gzip"] = gz, "garbage.tar.gz"
    latin = tmp / "latin" / "labels.csv"
    latin.parent.mkdir()
    latin.write_bytes("image,label\ncaf\xe9.png,caf\xe9\n".encode("latin-1"))
    cases["labels CSV in Latin-1"] = latin, "is not UTF-8 text (line 2"
    return cases


def test_ingest_stops_on_bad_sources_with_a_message_and_keeps_its_outputs(tmp_path):
    good = make_dataset(tmp_path / "good", per_class=2, size=16)
    cmd = STAGES["ingest"]["cmd"]
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (project / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())  # the outputs a rerun may replace
    first = run_stage(project, cmd.replace("data/images", str(good)))
    assert first.returncode == 0, first.stderr
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    for case, (source, message) in bad_sources(tmp_path).items():
        out = run_stage(project, cmd.replace("data/images", str(source)))
        log = out.stdout + out.stderr
        assert out.returncode == 1 and "Traceback" not in log and message in log, f"{case}: {log[-2000:]}"
        assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before, case


def fuzz_files(folder: Path, count: int, seed: int) -> tuple[list[str], list[str]]:
    """``count`` files with image extensions: random bytes behind PNG / JPEG / GIF magic numbers
    (none can be an image), and real images with random bytes changed or cut off (some still are).
    Returns (names that must be skipped, names that may be kept)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, "PNG")
    png = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
    jpeg = buf.getvalue()
    exif_jpeg, exif_at = shapes.exif_jpeg(rng)
    magics = [(b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff\xe0", ".jpg"), (b"\xff\xd8\xff", ".jpeg"),
              (b"GIF89a", ".gif"), (b"BM", ".bmp"), (b"RIFF\0\0\0\0WEBPVP8 ", ".webp"), (b"", ".png")]
    junk, mutants = [], ["exif.jpg"]
    (folder / "exif.jpg").write_bytes(shapes.damaged_exif(exif_jpeg, exif_at))
    for i in range(count):
        if i % 2 == 0:
            magic, ext = magics[rng.integers(len(magics))]
            data = magic + rng.bytes(int(rng.integers(0, 3000)))
            junk.append(f"junk{i:03d}{ext}")
            (folder / junk[-1]).write_bytes(data)
        else:
            base, ext, low, high = [(png, ".png", 0, len(png)), (jpeg, ".jpg", 0, len(jpeg)),
                                    (exif_jpeg, ".jpg", exif_at, exif_at + 40)][int(rng.integers(3))]
            data = bytearray(base)
            for at in rng.integers(low, high, int(rng.integers(1, 8))):
                data[at] = int(rng.integers(256))
            if rng.random() < 0.3:
                data = data[: int(rng.integers(1, len(data)))]
            mutants.append(f"mutant{i:03d}{ext}")
            (folder / mutants[-1]).write_bytes(bytes(data))
    return junk, mutants


def test_fuzzed_image_files_are_skipped_with_a_reason_and_never_crash_ingest(tmp_path):
    source = make_dataset(tmp_path / "source", per_class=2, size=16)  # circle, square, triangle
    junk, mutants = fuzz_files(source / "circle", 300, seed=7)
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    cmd = shlex.split(STAGES["ingest"]["cmd"].replace("data/images", str(source)))
    # A fresh interpreter runs ingest and reports its peak memory (RUSAGE_CHILDREN: only that run).
    probe = ("import resource, subprocess, sys; out = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
             "sys.stdout.write(out.stdout + out.stderr);"
             "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(out.returncode)")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], cwd=project, env=ENV, capture_output=True,
                         text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0 and "Traceback" not in log, log[-3000:]
    report = json.loads((project / "reports" / "ingest.json").read_text())
    manifest = schemas.read_csv(project / "data" / "manifest.csv")
    kept = {Path(row["path"]).name for row in manifest}
    assert not set(junk) & kept
    files = [f for f in source.rglob("*") if f.is_file()]
    # each file either kept or counted with a reason, none lost; the report shows the first few of each
    assert report["kept"] == len(manifest) and report["kept"] + report["skipped"] == len(files)
    assert sum(report["skipped_by_reason"].values()) == report["skipped"] >= len(junk)
    assert all(f["reason"] for f in report["skipped_files"])
    for row in manifest:  # what ingest keeps, every later stage decodes: augment and predict, audit, galleries
        assert images.load_image(source / row["path"], 32).shape == (32, 32, 3)
        assert images.decode_and_measure(source, 32, row)[0].shape == (32, 32, 3)
        assert images.thumbnail(source / row["path"], 64).ndim == 3
    peak_mb = int(log.rsplit("PEAK_KB", 1)[1].split()[0]) / 1024
    assert peak_mb < 1024, f"ingest peaked at {peak_mb:.0f} MB on 300 small files"
