"""Issue 32's hostile and careless cases, run as a user runs them, for a before/after table

    python bench/hostile_cases.py [--code DIR] [--out FILE.json]

Builds the tiny project (tests/tiny_run.py, about a minute) once, then runs each case in a
fresh folder of its own with ``python -m pipeline ...`` from the checkout DIR (default: this
one; a `git worktree` of an older commit gives the "before" column), and records the exit
status, the last line of stderr and what the case checks afterwards (was a folder kept? did a
file leave the data?). Nothing outside the scratch folder is touched.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]
from bench.common import ROOT, save  # noqa: E402


def run(cmd: list[str], cwd: Path, code: Path, timeout: int = 300) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "TF_CPP_MIN_LOG_LEVEL": "3", "DVC_NO_ANALYTICS": "1"}
    start = time.monotonic()
    try:
        out = subprocess.run(["/usr/bin/time", "-f", "PEAK_KB %M", sys.executable, *cmd], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"exit": "timeout", "last": f"still running after {timeout} s", "stderr_lines": 0, "stdout_lines": 0}
    err, peak = out.stderr.rsplit("PEAK_KB", 1)
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith("Command exited")]
    last = lines[-1] if lines else (out.stdout.strip().splitlines() or [""])[-1]
    if out.returncode == 0:  # a run that went on: its warning, if any, is what it said
        last = next((line for line in reversed(lines) if " WARNING " in line), last)
    return {"exit": out.returncode, "last": last[:240], "stderr_lines": len(lines), "tail": lines[-6:],
            "stdout_lines": len(out.stdout.splitlines()), "traceback": "Traceback" in err,
            "peak_mb": round(int(peak.split()[0]) / 1024), "seconds": round(time.monotonic() - start, 1)}


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


DEEP: list[Path] = []  # every deep folder made: removed one level at a time (rmtree recurses)


def deep_folder(root: Path, levels: int = 1100) -> Path:
    folder = root
    folder.mkdir(parents=True)
    for _ in range(levels):
        folder = folder / "d"
        folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "x.png")
    DEEP.append(root)
    return root


def remove_deep(root: Path) -> None:
    bottom = root
    while (bottom / "d").is_dir():
        bottom = bottom / "d"
    while bottom != root:
        for f in bottom.iterdir():
            if not f.is_dir():
                f.unlink()
        bottom.rmdir()
        bottom = bottom.parent


def cases(tiny: Path, scratch: Path, code: Path) -> dict[str, dict]:
    """Each case: set up a folder, run the command, look at what it left. Returns {case: result}."""
    results: dict[str, dict] = {}
    model = tiny / "models/export/model.keras"
    counter = iter(range(10 ** 6))

    def folder(with_project: bool = False) -> Path:
        path = scratch / f"case{next(counter):03d}"
        path.mkdir()
        if with_project:
            for name in ("dvc.yaml",):
                shutil.copy(code / name, path / name)
            shutil.copy(tiny / "params.yaml", path / "params.yaml")
            (path / "data").mkdir()
            (path / "data/images").symlink_to(tiny / "data/images")
            for name in ("data/split", "data/embeddings", "data/augmented", "models"):
                shutil.copytree(tiny / name, path / name, symlinks=True)
            shutil.copy(tiny / "data/manifest.csv", path / "data/manifest.csv")
        else:
            shutil.copytree(model.parent, path / "export")
            Image.new("RGB", (40, 40), (200, 30, 30)).save(path / "img.png")
        return path

    def case(name: str, cmd: list[str], cwd: Path, check=None) -> None:
        result = run(cmd, cwd, code)
        if check:
            result["check"] = check()
        results[name] = {"command": " ".join(cmd), **result}
        print(f"{name}: exit {result['exit']}: {result['last'][:160]}" + (f" [{result.get('check')}]" if check else ""),
              flush=True)

    # 1. outputs that would destroy what the command did not create
    for name, command, flag, target in (("predict --csv an existing folder", "predict", "--csv", "some_folder/"),
                                         ("rank --out an existing folder", "rank", "--out", "some_folder")):
        f = folder()
        (f / "some_folder").mkdir()
        (f / "some_folder/notes.txt").write_text("mine")
        case(name, ["-m", "pipeline", command, "export/model.keras", "img.png", flag, target], f,
             lambda f=f: "folder kept" if (f / "some_folder/notes.txt").exists() else "folder REPLACED by the CSV")
    f = folder()
    size = (f / "export/model.keras").stat().st_size
    case("predict --csv the model file", ["-m", "pipeline", "predict", "export/model.keras", "img.png", "--csv",
                                          "export/model.keras"], f,
         lambda f=f: "model kept" if (f / "export/model.keras").stat().st_size == size else "model OVERWRITTEN")
    f = folder()
    case("predict --csv an input image", ["-m", "pipeline", "predict", "export/model.keras", "img.png", "--csv",
                                          "img.png"], f,
         lambda f=f: "image kept" if (f / "img.png").read_bytes()[:4] == b"\x89PNG" else "image OVERWRITTEN")
    f = folder()
    case("predict --csv .", ["-m", "pipeline", "predict", "export/model.keras", "img.png", "--csv", "."], f,
         lambda f=f: "folder kept" if (f / "export").is_dir() else "folder REPLACED")
    f = folder()
    (f / "why").mkdir()
    (f / "why/img.png.gradcam.png").write_text("my notes, not a heat map")
    case("predict --explain over a file that is no heat map", ["-m", "pipeline", "predict", "export/model.keras",
                                                              "img.png", "--explain", "why"], f,
         lambda f=f: "file kept" if (f / "why/img.png.gradcam.png").read_bytes()[:1] == b"m" else "file OVERWRITTEN")
    f = folder(with_project=True)
    before = tree(tiny / "data/images")
    case("split --out data/images (a stage run by hand)", ["-m", "pipeline", "split", "--manifest", "data/manifest.csv",
                                                           "--embeddings", "data/embeddings", "--out", "data/images",
                                                           "--report", "reports/split.json"], f,
         lambda f=f: "data kept" if (f / "data/images").is_symlink() and tree(tiny / "data/images") == before
         else "data REPLACED")

    # 2. moves that leave the data
    def audited(suggested: str, file: str = "train/cat/a.jpg", link: bool = False) -> Path:
        f = folder()
        for path in ("train/cat/a.jpg", "train/dog/c.jpg"):
            (f / "data/images" / path).parent.mkdir(parents=True, exist_ok=True)
            (f / "data/images" / path).write_bytes(path.encode())
        if link:
            (f / "elsewhere").mkdir()
            (f / "data/images/train/linked").symlink_to(f / "elsewhere")
        (f / "issues.csv").write_text(f"file,label,suggested\n{file},cat,{suggested}\n")
        return f

    def inside(f: Path) -> str:
        """Where train/cat/a.jpg went: nowhere, a class folder, elsewhere in the data, or out of it."""
        found = sorted({p.resolve() for p in f.rglob("a.jpg")})  # a link's target: where the file really is
        if (f / "data/images/train/cat/a.jpg").exists():
            return "nothing moved"
        if not found:
            return "LEFT the data: a.jpg is outside the case folder"
        where = found[0].relative_to(f.resolve()).as_posix()
        ok = where.startswith("data/images/train/") and len(where.split("/")) == 5
        return f"moved to {where}" if ok else f"LEFT its class folders: now {where}"

    for label, suggested, link in (("../../../escaped", "../../../escaped", False), ("an absolute path", None, False),
                                   (".", ".", False), ("a class folder that is a link", "linked", True),
                                   ("a label that is no class", "bird", False)):
        f = audited(suggested or str(scratch / "escaped-abs"), link=link)
        case(f"relabel --accept, suggested {label}", ["-m", "pipeline", "relabel", "issues.csv", "--images",
                                                      "data/images", "--accept", "train/cat/a.jpg"], f,
             lambda f=f: inside(f))
    f = audited("dog", file="train/cat/a\0.jpg")
    case("relabel --accept-all, a NUL byte in the file column", ["-m", "pipeline", "relabel", "issues.csv", "--images",
                                                                 "data/images", "--accept-all"], f)

    # 3. files read as input
    for label, edit in (("temperature -1", {"temperature": -1}), ("temperature 0", {"temperature": 0}),
                        ('temperature "nan"', {"temperature": "nan"}), ("unknown_threshold 7", {"unknown_threshold": 7}),
                        ('unknown_threshold "nan"', {"unknown_threshold": "nan"})):
        f = folder()
        calibration = json.loads((f / "export/calibration.json").read_text())
        (f / "export/calibration.json").write_text(json.dumps({**calibration, **edit}))
        case(f"predict, calibration.json {label}", ["-m", "pipeline", "predict", "export/model.keras", "img.png"], f)
        results[f"predict, calibration.json {label}"]["stdout"] = subprocess.run(
            [sys.executable, "-m", "pipeline", "predict", "export/model.keras", "img.png"], cwd=f, capture_output=True,
            text=True, env={**os.environ, "PYTHONPATH": str(code), "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout.strip()[:200]
    for stage in ("split", "audit"):
        f = folder(with_project=True)
        x = np.load(f / "data/embeddings/features.npy")
        x[3] = np.nan
        np.save(f / "data/embeddings/features.npy", x)
        cmd = {"split": ["--manifest", "data/manifest.csv", "--embeddings", "data/embeddings", "--out", "data/split",
                         "--report", "reports/split.json"],
               "audit": ["--source", "data/images", "--embeddings", "data/embeddings", "--split", "data/split",
                         "--metrics", "reports/audit.json", "--out", "reports/audit"]}[stage]
        case(f"{stage}, NaN rows in data/embeddings/features.npy", ["-m", "pipeline", stage, *cmd], f)
    f = folder(with_project=True)
    (f / "data/ood").mkdir()
    train = [line.split(",")[0] for line in (tiny / "data/split/train.csv").read_text().splitlines()[1:]]
    for i, path in enumerate(train):
        shutil.copy(tiny / "data/images" / path, f / f"data/ood/{i}.png")
    case("calibrate, data/ood holds copies of training images", calibrate_cmd(), f)
    f = folder(with_project=True)
    data = f / "labelled"
    (data / "circle").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(data / f"circle/{i}.png")
    params = (f / "params.yaml").read_text().replace("labels_csv: null", "labels_csv: labels.csv")
    (f / "params.yaml").write_text(params)
    for label, text in (("a NUL byte in an image path", "image,label\ncircle/0\0.png,a\ncircle/1.png,b\n"),
                        ("the header image,label,label", "image,label,label\ncircle/0.png,a,b\ncircle/1.png,b,a\n"),
                        ("Windows paths", "image,label\ncircle\\0.png,a\ncircle\\1.png,b\ncircle\\2.png,a\n")):
        (data / "labels.csv").write_text(text)
        case(f"ingest, labels CSV with {label}", ["-m", "pipeline", "ingest", "--source", "labelled", "--manifest",
                                                   "data/manifest.csv", "--report", "reports/ingest.json"], f)
    for label, damage in (("cut off", lambda b: b[: len(b) // 2]), ("random bytes inside",
                                                                     lambda b: b[:100] + bytes(range(200)) + b[300:])):
        f = folder(with_project=True)
        shard = sorted((f / "data/augmented").glob("train-*.tfrecord"))[0]
        shard.write_bytes(damage(shard.read_bytes()))
        case(f"extract_features, a shard {label}", extract_cmd(), f)
    f = folder(with_project=True)
    meta = json.loads((f / "data/augmented/meta.json").read_text())
    meta["counts"]["train"] += 3
    (f / "data/augmented/meta.json").write_text(json.dumps(meta))
    case("extract_features, meta.json counts 3 train records too many", extract_cmd(), f)

    # 4. recursion, 5. bounded work, 6. degenerate data
    f = folder(with_project=True)
    rows = "path,label,split,sha256,bytes,width,height\n" + "".join(
        f"c{c}/{i}.png,c{c},,{c:04d}{i},1,8,8\n" for c in range(500) for i in range(2))
    (f / "data/manifest.csv").write_text(rows)
    (f / "params.yaml").write_text((f / "params.yaml").read_text().replace("min_images_per_class: 10",
                                                                          "min_images_per_class: 3"))
    case("split, 500 classes of 2 images, min_images_per_class 3", ["-m", "pipeline", "split", "--manifest",
                                                                    "data/manifest.csv", "--embeddings",
                                                                    "data/embeddings", "--out", "data/split",
                                                                    "--report", "reports/split.json"], f)
    f = folder()
    deep_folder(f / "deep")
    case("predict on a folder 1,100 levels deep", ["-m", "pipeline", "predict", "export/model.keras", "deep"], f)
    f = folder(with_project=True)
    deep_folder(f / "data/ood")
    Image.new("RGB", (40, 40), (0, 0, 250)).save(f / "data/ood/blue.png")
    case("calibrate, data/ood 1,100 levels deep", calibrate_cmd(), f)
    f = folder(with_project=True)
    (f / "data/images").unlink()
    deep_folder(f / "data/images")
    (f / "data/images.dvc").write_text("outs:\n- path: images\n")
    case("check, data/images 1,100 levels deep", ["-m", "pipeline", "check", *SKIP_BUT_SOURCE], f)
    f = folder()
    case("predict -k 10000000 (no --csv)", ["-m", "pipeline", "predict", "export/model.keras", "img.png", "-k",
                                            "10000000"], f)
    f = folder()
    (f / "junk").mkdir()
    for i in range(10_000):
        (f / f"junk/{i:05d}.jpg").write_bytes(b"not an image")
    case("predict on 10,000 unreadable files", ["-m", "pipeline", "predict", "export/model.keras", "junk"], f)
    return results


SKIP_BUT_SOURCE = [w for name in ("params", "contract", "dag", "lock", "backbone", "remote") for w in ("--skip", name)]


def calibrate_cmd() -> list[str]:
    return ["-m", "pipeline", "calibrate", "--source", "data/images", "--split", "data/split", "--ood", "data/ood",
            "--model", "models/model.keras", "--out", "models/calibration.json", "--metrics",
            "reports/calibration.json", "--plots", "reports/calibrate"]


def extract_cmd() -> list[str]:
    return ["-m", "pipeline", "extract_features", "--augmented", "data/augmented", "--embeddings", "data/embeddings", "--out", "data/features",
            "--extractor", "models/extractor.keras"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose pipeline runs the cases")
    parser.add_argument("--tiny", type=Path, help="a finished tiny project to reuse (default: build one)")
    parser.add_argument("--out", default="hostile_cases", help="results file name in bench/results/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        tmp = Path(tmp)
        tiny = args.tiny
        if tiny is None:
            from shapes import make_dataset
            from tiny_run import tiny_project

            project = tiny_project(tmp / "tiny", make_dataset(tmp / "shapes", per_class=40, size=40))
            project.repro()
            tiny = project.path
        (tmp / "cases").mkdir()
        results = cases(tiny.resolve(), tmp / "cases", args.code.resolve())
        for root in DEEP:
            remove_deep(root)
    save(args.out, {"code": str(args.code), "cases": results})


if __name__ == "__main__":
    main()
