"""The real `dvc repro` on a generated dataset with a tiny random backbone, then rerun granularity."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.lib import images
from project import BIN, Project
from shapes import make_dataset
from tiny_run import tiny_project

ARTIFACTS = ("data/split", "data/augmented", "data/features", "models/extractor.keras", "models/head.keras",
             "models/model.keras", "reports/metrics.json", "reports/ingest.json")

def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under the reproducible artifacts, by relative path."""
    out = {}
    for name in ARTIFACTS:
        for path in sorted([root / name] if (root / name).is_file() else (root / name).rglob("*")):
            if path.is_file():
                out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("data") / "shapes", per_class=40, size=40)
    (data / "circle" / "broken.png").write_bytes(b"\x89PNG not really")
    return data


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, dataset):
    proj = tiny_project(tmp_path_factory.mktemp("e2e") / "project", dataset)
    ran = proj.repro()
    assert ran == ["ingest", "split", "augment", "extract_features", "train_head", "finetune", "evaluate",
                   "export", "summary"]
    return proj, digests(proj.path)


@pytest.fixture
def project(first_run):
    return first_run[0]


def test_outputs_exist_with_the_right_shapes(project):
    p = project.path
    labels = json.loads((p / "data/split/labels.json").read_text())
    assert labels == ["circle", "square", "triangle"]
    meta = json.loads((p / "data/augmented/meta.json").read_text())
    assert meta["counts"]["train"] == meta["counts"]["train_aug"] > 0
    x, y = np.load(p / "data/features/train_x.npy"), np.load(p / "data/features/train_y.npy")
    assert x.shape == (meta["counts"]["train"] * 2, 1280) and y.shape == (len(x),)
    assert set(np.unique(y)) == {0, 1, 2}
    assert sorted(f.name for f in (p / "data/features").iterdir()) == ["train_x.npy", "train_y.npy",
                                                                      "val_x.npy", "val_y.npy"]
    for f in ("models/head.keras", "models/model.keras", "models/extractor.keras",
              "reports/evaluate/confusion_finetune.png", "reports/train_head/metrics.json",
              "reports/train_head/curves.png", "reports/finetune/curves.png", "reports/evaluate/mistakes.png",
              "reports/evaluate/per_class_f1.png", "models/export/saved_model/saved_model.pb",
              "models/export/model_float32.tflite", "models/export/model_float16.tflite",
              "models/export/model_int8.tflite"):
        assert (p / f).stat().st_size > 0, f
    assert (p / "models/export/labels.txt").read_text().split() == labels
    report = json.loads((p / "reports/ingest.json").read_text())
    assert report["kept"] == 120 and report["skipped_files"][0]["path"] == "circle/broken.png"
    per_class = json.loads((p / "reports/evaluate/per_class.json").read_text())
    assert set(per_class["finetune"]) == set(labels)


def test_test_accuracy_is_well_above_chance(project):
    metrics = project.metrics()
    assert metrics["test_images"] == 30
    assert metrics["head"]["accuracy"] >= 0.6, metrics  # chance is 1/3
    assert metrics["finetune"]["accuracy"] >= 0.6, metrics


def test_exported_formats_agree_with_the_keras_model(project):
    export = json.loads((project.path / "reports/export.json").read_text())
    checked = {"keras", "saved_model", "saved_model_bytes", "onnx", "tflite_float32", "tflite_float16", "tflite_int8",
               "mediapipe_float32", "mediapipe_float16"}
    # The random backbone's int8 scales are far below what XNNPACK takes; MediaPipe, which runs on XNNPACK
    # only, would abort the process, so that one row is left out with the reason.
    assert set(export) == checked | {"test_images", "not_checked"}, export
    assert list(export["not_checked"]) == ["mediapipe_int8"] and "XNNPACK" in export["not_checked"]["mediapipe_int8"]
    # float32 formats: the same network, the same answers; MediaPipe runs the same files as LiteRT
    for name in ("saved_model", "onnx", "tflite_float32", "mediapipe_float32"):
        assert export[name]["agreement"] >= 0.99, export
    assert abs(export["mediapipe_float16"]["agreement"] - export["tflite_float16"]["agreement"]) <= 0.04, export
    # the image-bytes signature decodes the files itself, within one grey level of Pillow
    assert export["saved_model_bytes"]["agreement"] >= 0.9, export
    assert export["saved_model"]["size_mb"] < 1.5 * export["keras"]["size_mb"]  # each weight stored once
    assert export["tflite_int8"]["size_mb"] < export["tflite_float32"]["size_mb"]
    assert export["tflite_float16"]["size_mb"] < export["tflite_float32"]["size_mb"]
    assert export["keras"]["accuracy"] == project.metrics()["finetune"]["accuracy"]


def test_predict_agrees_with_evaluate_on_the_test_images(project):
    rows = list(csv.DictReader(open(project.path / "reports/evaluate/predictions.csv")))
    out = project.run("python", "-m", "pipeline.predict", "models/model.keras",
                      *(f"data/raw/{r['path']}" for r in rows), "--labels", "data/split/labels.json", "--json")
    predicted = json.loads(out.stdout)
    assert len(predicted) == len(rows) == 30
    for row, result in zip(rows, predicted):
        assert result["path"] == f"data/raw/{row['path']}"
        assert result["predictions"][0]["label"] == row["predicted"]
        assert result["predictions"][0]["probability"] == pytest.approx(float(row["confidence"]), abs=1e-5)
    # the exported TFLite file, with the labels.txt beside it, gives the same answers
    out = project.run("python", "-m", "pipeline.predict", "models/export/model_float32.tflite",
                      *(f"data/raw/{r['path']}" for r in rows), "--json", "-k", "1")
    assert [r["predictions"][0]["label"] for r in json.loads(out.stdout)] == [r["predicted"] for r in rows]


def test_predict_tta_and_explain(project, tmp_path):
    paths = sorted((project.path / "data/raw").rglob("*.png"))[:3]
    out = project.run("python", "-m", "pipeline.predict", "models/model.keras", *map(str, paths), "--labels",
                      "data/split/labels.json", "--json", "--tta", "--explain", str(tmp_path / "why"))
    results = json.loads(out.stdout)
    assert len(results) == 3
    for path, result in zip(paths, results):
        assert f"{path}: heat map for {result['predictions'][0]['label']} in" in out.stderr
        overlaid = np.asarray(Image.open(tmp_path / "why" / f"{path.name}.gradcam.png"))
        plain = images.thumbnail(path, 400)
        assert overlaid.shape == plain.shape and not np.array_equal(overlaid, plain)  # the map is drawn on it
    refused = project.run("python", "-m", "pipeline.predict", "models/export/model_float32.tflite",
                          str(paths[0]), "--explain", str(tmp_path / "no"), check=False)
    assert refused.returncode == 2 and "--explain needs the .keras model" in refused.stderr


def test_summary_is_a_model_card_of_this_run(project):
    card = (project.path / "reports/summary.md").read_text()
    metrics = project.metrics()
    assert f"**Test accuracy {metrics['finetune']['accuracy']:.3f} fine-tuned" in card
    for text in ("| circle | ", "not a readable image", "MobileNetV2, none weights, 32 px", "`model_int8.tflite`",
                 "MediaPipe ImageClassifier", "`model.onnx`", "test-time augmentation",
                 "`evaluate/mistakes.png`", "`finetune/curves.png`", "class weights"):
        assert text in card, text
    export = json.loads((project.path / "reports/export.json").read_text())
    assert f"| {export['tflite_int8']['size_mb']:.2f} |" in card


def test_lr_find_writes_a_plot_and_a_suggestion(project, tmp_path):
    for phase, steps in (("head", 40), ("finetune", 8)):
        out = project.run("python", "-m", "pipeline.lr_find", phase, "--steps", str(steps), "--out", str(tmp_path))
        result = json.loads((tmp_path / f"lr_find_{phase}.json").read_text())
        assert 1e-8 <= result["suggested_learning_rate"] <= 0.1, result  # a tenth of a rate tried (1e-7 up)
        assert 2 <= len(result["losses"]) <= steps
        assert (tmp_path / f"lr_find_{phase}.png").stat().st_size > 0
        assert "dvc exp run -S" in out.stdout


def pipeline_check(project: Project, *skip: str) -> subprocess.CompletedProcess:
    return project.run("python", "-m", "pipeline.check", *(f"--skip={name}" for name in skip), check=False)


def test_nothing_to_do_after_a_full_run(project):
    assert project.changed_stages() == set()
    out = pipeline_check(project, "remote")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok    lock      dvc.lock matches dvc.yaml, params.yaml and the code\n" in out.stdout


def test_finetune_param_reruns_only_finetune_and_evaluate(project):
    project.set_param("finetune.learning_rate", 2e-4)
    # `dvc status` names the stage whose own deps changed; repro follows on downstream.
    assert project.changed_stages() == {"finetune", "summary"}  # summary shows the fine-tuning rate
    out = pipeline_check(project, "remote", "backbone", "source")
    assert out.returncode == 1 and "finetune: params.yaml finetune.learning_rate modified" in out.stdout
    before = model_digest(project)
    assert project.repro() == after_finetune(project, before)


def model_digest(project) -> str:
    return hashlib.sha256((project.path / "models" / "model.keras").read_bytes()).hexdigest()


def after_finetune(project, before: str) -> list[str]:
    """The stages a finetune rerun should take: evaluate and export follow only when the model's
    bytes changed (.keras files are reproducible, and the tiny run's fine-tuning may keep the
    starting weights when no epoch improves on them)."""
    changed = model_digest(project) != before
    return ["finetune", "evaluate", "export", "summary"] if changed else ["finetune", "summary"]


def test_train_head_param_reruns_head_finetune_evaluate(project):
    project.set_param("train_head.dropout", 0.3)
    assert project.changed_stages() == {"train_head"}
    assert project.repro() == ["train_head", "finetune", "evaluate", "export", "summary"]
    assert project.changed_stages() == set()


def test_mirrored_strategy_on_two_logical_cpus_through_dvc(project):
    """The multi-GPU code path of both training stages, on this CPU split in two."""
    project.set_param("distribution.strategy", "mirrored")
    # extraction reads the key too (split across machines under multi_worker); its files come out the same
    assert project.changed_stages() == {"extract_features", "train_head", "finetune"}
    project.env["PIPELINE_CPU_DEVICES"] = "2"
    try:
        out = project.run("dvc", "repro")
    finally:
        del project.env["PIPELINE_CPU_DEVICES"]
    log = out.stdout + out.stderr
    assert log.count("distribution: MirroredStrategy, 2 replica(s) in sync") == 2, log[-3000:]
    assert 0 <= project.metrics()["finetune"]["accuracy"] <= 1
    project.set_param("distribution.strategy", "single")
    project.repro()  # trains again on one device: no run cache for stages with `cache: false` outputs
    assert project.changed_stages() == set()


def test_invalid_param_stops_the_stage_naming_the_key(project):
    project.set_param("finetune.epochs", 0)
    out = project.run("dvc", "repro", check=False)
    assert out.returncode != 0
    assert "finetune.epochs must be >= 1" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    project.set_param("finetune.epochs", 1)


def test_diverging_training_stops_the_stage_and_writes_nothing(project):
    rate = project.params()["train_head"]["learning_rate"]
    project.set_param("train_head.learning_rate", 1e38)  # finite, but Adam's first steps overflow
    out = project.run("dvc", "repro", "train_head", check=False)
    project.set_param("train_head.learning_rate", rate)
    log = out.stdout + out.stderr
    assert out.returncode != 0 and "Traceback" not in log
    assert "training diverged: the loss became nan in epoch 1 (loss). Lower train_head.learning_rate " \
           "(now 1e+38); nothing was written" in log
    assert not (project.path / "models" / "head.keras").exists()  # DVC removed it before the run
    assert [p.name for d in ("reports", "models") for p in (project.path / d).glob(".*tmp-*")] == []
    # DVC's run cache cannot restore a stage with `cache: false` outputs (its DVCLive log): it reruns
    assert project.repro()[0] == "train_head"
    assert project.changed_stages() == set()


def test_same_seed_same_bytes_in_another_directory(first_run, dataset, tmp_path):
    _, expected = first_run
    again = tiny_project(tmp_path / "again", dataset)
    assert again.repro("evaluate")[-1] == "evaluate"  # every artifact compared; export and summary not needed
    got = digests(again.path)
    assert len(got) > 10 and got == expected


def test_interrupted_stage_leaves_nothing_half_written(project):
    before = model_digest(project)
    project.set_param("finetune.epochs", 3)
    proc = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=project.path, env=project.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list((project.path / "reports").glob(".finetune.tmp-*")):  # training has begun
        assert proc.poll() is None and time.monotonic() < deadline, "finetune never started"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)  # what Ctrl-C in a terminal, or a CI timeout, does to the group
    proc.wait(timeout=60)
    # DVC may exit before the stage it started has finished cleaning up: wait for the whole group.
    stop_by = time.monotonic() + 60
    while group_alive(proc.pid):
        assert time.monotonic() < stop_by, "the stage did not exit within 60 s of SIGTERM"
        time.sleep(0.1)
    leftovers = [p.name for d in ("reports", "models") for p in (project.path / d).glob(".*tmp-*")]
    assert leftovers == []
    assert not (project.path / "models" / "model.keras").exists()  # DVC removed it before the run
    assert "finetune" in project.changed_stages()
    assert project.repro() == after_finetune(project, before)
    assert project.changed_stages() == set()


def test_a_killed_finetune_resumes_from_its_last_epoch_and_ends_the_same(project, tmp_path):
    """SIGKILL (a lost machine: nothing runs after it) mid fine-tuning, then `dvc repro` again:
    the stage resumes from its backup and ends exactly as an uninterrupted run."""
    project.set_param("finetune.epochs", 4)
    project.set_param("finetune.patience", 4)
    project.repro()
    expected = {name: (project.path / name).read_bytes()
                for name in ("reports/finetune/metrics.json", "models/model.keras")}
    backup = project.path / ".backup" / "finetune" / "counters.json"
    proc = subprocess.Popen([str(BIN / "dvc"), "repro", "-f", "-s", "finetune"], cwd=project.path, env=project.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (backup.is_file() and json.loads(backup.read_text())["epoch"] >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "finetune never finished epoch 2"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    saved = json.loads(backup.read_text())["epoch"]
    assert saved in (2, 3) and not (project.path / "models" / "model.keras").exists()
    out = project.run("dvc", "repro")  # only finetune reruns: its outputs come out the same bytes
    (tmp_path / "resumed.log").write_text(out.stdout + out.stderr)  # kept by pytest for a look
    assert f"resuming after epoch {saved} of 4 from the backup in .backup/finetune" in out.stdout + out.stderr
    assert {name: (project.path / name).read_bytes() for name in expected} == expected
    assert not backup.parent.exists()  # removed once the stage's outputs are written
    assert project.changed_stages() == set()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_push_clone_pull_gives_identical_files(project, tmp_path):
    project.run("dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "results")
    project.run("dvc", "push")
    clone = tmp_path / "clone"
    project.run("git", "clone", "-q", str(project.path), str(clone))
    cloned = Project.attach(clone, project.env)
    out = pipeline_check(cloned, "backbone", "source")  # CI's view: no data pulled, the lock still agrees
    assert out.returncode == 0, out.stdout + out.stderr
    assert "outputs not in this workspace: `dvc pull` fetches them" in out.stdout
    assert f"ok    remote    remote 'shared': folder {tmp_path / 'remote'}" in out.stdout
    cloned.run("dvc", "pull")
    assert cloned.changed_stages() == set()
    files = ["models/model.keras", "models/head.keras", "models/extractor.keras", "data/raw/manifest.csv"]
    assert digests(clone) == digests(project.path)
    for name in files:
        assert (clone / name).read_bytes() == (project.path / name).read_bytes()


def test_queued_grid_of_learning_rates_runs_and_shows_in_exp_show(project):
    """The README's `dvc exp run --queue` grid, on the committed project (after the push test)."""
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "before the grid", check=False)  # nothing to commit is fine
    # 3e-5 is written back as `3e-05`, which YAML 1.1 readers take for a string (params._Loader)
    project.run("dvc", "exp", "run", "--queue", "-S", "finetune.learning_rate=3e-5,3e-4")
    project.run("dvc", "exp", "run", "--run-all")
    shown = json.loads(project.run("dvc", "exp", "show", "--json").stdout)
    runs = [exp for commit in shown for exp in commit.get("experiments") or []]
    rates, accuracies = set(), []
    for run in runs:
        data = run["revs"][0]["data"]
        rates.add(data["params"]["params.yaml"]["data"]["finetune"]["learning_rate"])
        accuracies.append(data["metrics"]["reports/metrics.json"]["data"]["finetune"]["accuracy"])
    assert rates == {3e-5, 3e-4}, shown
    assert all(0 <= a <= 1 for a in accuracies) and len(accuracies) == 2
    table = project.run("make", "-s", "exps").stdout  # the README's command for the key columns
    for column in ("finetune.learning_rate", "finetune.accuracy", "tflite_int8.size_mb"):
        assert column in table, table
