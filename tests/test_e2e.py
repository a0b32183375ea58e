"""The real `dvc repro` on a generated dataset with a tiny random backbone, then rerun granularity."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import digests
from pipeline.lib import images
from pipeline.lib.exports import FORMATS
from project import BIN, RUNNING_STAGE, Project
from tiny_run import tiny_project

pytestmark = pytest.mark.e2e

# The reproducible artifacts: the same seed gives the same bytes
ARTIFACTS = ("data/manifest.csv", "data/split", "data/augmented", "data/features", "models/extractor.keras", "models/head.keras",
             "models/model.keras", "reports/metrics.json", "reports/ingest.json")


@pytest.fixture
def project(finished, tmp_path):
    """The finished tiny project's own copy, for a test that changes it."""
    return finished.copy(tmp_path / "project")


def test_the_first_run_ran_every_stage_in_order(finished):
    assert finished.ran == ["ingest", "embed", "split", "audit", "augment", "extract_features", "train_head",
                            "finetune", "evaluate", "calibrate", "export", "summary"]


def test_outputs_exist_with_the_right_shapes(finished):
    p = finished.path
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
              "models/export/model_int8.tflite", "data/embeddings/features.npy", "reports/audit/label_issues.png",
              "reports/audit/near_duplicates.csv"):
        assert (p / f).stat().st_size > 0, f
    assert (p / "models/export/labels.txt").read_text().split() == labels
    calibration = json.loads((p / "models/export/calibration.json").read_text())
    assert calibration["temperature_in_model"] and calibration == {
        **json.loads((p / "models/calibration.json").read_text()), "temperature_in_model": True}
    report = json.loads((p / "reports/ingest.json").read_text())
    assert report["kept"] == 120 and report["skipped_files"][0]["path"] == "circle/broken.png"
    per_class = json.loads((p / "reports/evaluate/per_class.json").read_text())
    assert set(per_class["finetune"]) == set(labels)


def test_test_accuracy_is_well_above_chance(finished):
    project = finished
    metrics = project.metrics()
    test_split = images.read_csv(project.path / "data/split/test.csv")
    # the hash split gives each image a 25% chance (split.test_fraction), not exactly a quarter of 120
    assert metrics["test_images"] == len(test_split) and 18 <= len(test_split) <= 42
    assert metrics["head"]["accuracy"] >= 0.6, metrics  # chance is 1/3
    assert metrics["finetune"]["accuracy"] >= 0.6, metrics


def test_exported_formats_agree_with_the_keras_model(finished):
    project = finished
    export = json.loads((project.path / "reports/export.json").read_text())
    # The random backbone's int8 scales are far below what XNNPACK takes; MediaPipe, which runs on XNNPACK
    # only, would abort the process, so that one row is left out with the reason.
    assert set(export) == set(FORMATS) - {"mediapipe_int8"} | {"test_images", "ood_images", "timing_batch_size",
                                                               "not_checked"}, export
    assert list(export["not_checked"]) == ["mediapipe_int8"] and "XNNPACK" in export["not_checked"]["mediapipe_int8"]
    # the same network: the exported .keras reloaded from its own file (against the model the stage
    # loaded), the float32 formats, and MediaPipe running the same files as LiteRT; the image-bytes
    # signature decodes the files itself, within one grey level of Pillow
    for name in ("keras", "saved_model", "onnx", "tflite_float32", "mediapipe_float32", "saved_model_bytes"):
        assert export[name]["agreement"] >= FORMATS[name].min_agreement, (name, export)
        # the same unknown rule in every runtime: each file's own known output against the threshold
        assert export[name]["unknown_agreement"] >= FORMATS[name].min_agreement, (name, export)
    assert abs(export["mediapipe_float16"]["agreement"] - export["tflite_float16"]["agreement"]) <= 0.04, export
    assert export["saved_model"]["size_mb"] < 1.5 * export["keras"]["size_mb"]  # each weight stored once
    assert export["tflite_int8"]["size_mb"] < export["tflite_float32"]["size_mb"]
    assert export["tflite_float16"]["size_mb"] < export["tflite_float32"]["size_mb"]
    assert export["keras"]["accuracy"] == project.metrics()["finetune"]["accuracy"]  # calibration keeps the order
    for name in set(FORMATS) - {"mediapipe_int8"}:  # every file timed through its runtime
        m = export[name]
        assert 0 < m["latency_ms_median"] <= m["latency_ms_p95"] and m["images_per_s"] > 0, (name, m)


def test_predict_agrees_with_evaluate_on_the_test_images(finished, tmp_path):
    project = finished
    rows = list(csv.DictReader(open(project.path / "reports/evaluate/predictions.csv")))
    # evaluate scores the model as trained: a copy away from models/calibration.json is not calibrated
    shutil.copy(project.path / "models/model.keras", tmp_path / "model.keras")
    out = project.run("python", "-m", "pipeline", "predict", str(tmp_path / "model.keras"),
                      *(f"data/images/{r['path']}" for r in rows), "--labels", "data/split/labels.json", "--json")
    predicted = json.loads(out.stdout)
    assert len(predicted) == len(rows) == project.metrics()["test_images"]
    for row, result in zip(rows, predicted):
        assert result["path"] == f"data/images/{row['path']}"
        assert result["predictions"][0]["label"] == row["predicted"]
        assert result["predictions"][0]["probability"] == pytest.approx(float(row["confidence"]), abs=1e-5)
    # the exported TFLite file, with the labels.txt beside it, gives the same answers
    out = project.run("python", "-m", "pipeline", "predict", "models/export/model_float32.tflite",
                      *(f"data/images/{r['path']}" for r in rows), "--json", "-k", "1")
    assert [r["predictions"][0]["label"] for r in json.loads(out.stdout)] == [r["predicted"] for r in rows]


def test_predict_tta_and_explain(finished, tmp_path):
    project = finished
    paths = sorted((project.path / "data/images").rglob("*.png"))[:3]
    out = project.run("python", "-m", "pipeline", "predict", "models/model.keras", *map(str, paths), "--labels",
                      "data/split/labels.json", "--json", "--tta", "--explain", str(tmp_path / "why"))
    results = json.loads(out.stdout)
    assert len(results) == 3
    for path, result in zip(paths, results):
        assert f"{path}: heat map for {result['predictions'][0]['label']} in" in out.stderr
        overlaid = np.asarray(Image.open(tmp_path / "why" / f"{path.name}.gradcam.png"))
        plain = images.thumbnail(path, 400)
        assert overlaid.shape == plain.shape and not np.array_equal(overlaid, plain)  # the map is drawn on it
    refused = project.run("python", "-m", "pipeline", "predict", "models/export/model_float32.tflite",
                          str(paths[0]), "--explain", str(tmp_path / "no"), check=False)
    assert refused.returncode == 2 and "--explain needs the .keras model" in refused.stderr


def test_predict_says_unknown_below_the_threshold_and_its_csv_matches_the_table(finished, tmp_path):
    """The exported model (temperature built in, calibration.json beside it) on a training image
    and 16 images of another kind (noise, soft stripes; never seen by calibrate). A randomly
    initialised backbone is no judge of what is out of distribution, so how many of them are
    caught is not the point here (the default run's metrics measure that): each verdict must
    follow the threshold, the best label beside it, and some must be unknown. --csv writes the
    same rows as the JSON and the table show."""
    from shapes import make_ood

    project, export = finished, "models/export/model.keras"
    other = make_ood(tmp_path / "other", count=16, seed=7)
    inside = project.path / "data/images" / images.read_csv(project.path / "data/split/train.csv")[0]["path"]
    files = [str(inside), *map(str, sorted(other.iterdir()))]
    table = project.run("python", "-m", "pipeline", "predict", export, *files, "-k", "2").stdout.splitlines()
    results = json.loads(project.run("python", "-m", "pipeline", "predict", export, *files, "-k", "2", "--json").stdout)
    threshold = json.loads((project.path / "models/export/calibration.json").read_text())["unknown_threshold"]
    assert [r["unknown"] for r in results] == [r["known"] < threshold for r in results]
    assert not results[0]["unknown"] and sum(r["unknown"] for r in results) >= 2, (threshold, results)
    assert [line.split()[1] == "unknown" for line in table] == [r["unknown"] for r in results], table
    for line, r in zip(table, results):  # the best label and its probability beside the verdict
        assert f"{r['predictions'][0]['label']}" in line and f"{r['predictions'][0]['probability']:.2%}" in line
    out = project.run("python", "-m", "pipeline", "predict", export, *files, "-k", "2", "--csv", str(tmp_path / "p.csv"))
    unknown = sum(r["unknown"] for r in results)
    assert out.stdout == "" and f"17 images classified ({unknown} unknown, 0 unreadable)" in out.stderr
    rows = images.read_csv(tmp_path / "p.csv")
    assert [(r["file"], r["label_1"], float(r["probability_1"]), r["label_2"], r["unknown"]) for r in rows] == [
        (r["path"], r["predictions"][0]["label"], r["predictions"][0]["probability"], r["predictions"][1]["label"],
         str(r["unknown"]).lower()) for r in results]
    # models/model.keras has models/calibration.json beside it: predict calibrates it the same way
    plain = json.loads(project.run("python", "-m", "pipeline", "predict", "models/model.keras", *files, "-k", "2",
                                   "--labels", "data/split/labels.json", "--json").stdout)
    assert [r["unknown"] for r in plain] == [r["unknown"] for r in results]
    for a, b in zip(plain, results):
        assert a["predictions"][0]["probability"] == pytest.approx(b["predictions"][0]["probability"], abs=1e-4)
        assert a["known"] == pytest.approx(b["known"], abs=1e-4)


def test_the_mediapipe_example_says_unknown_as_predict_does(finished, tmp_path):
    """docs/examples/mediapipe_unknown.py, as a MediaPipe user runs it, on the exported float32 file
    (the tiny project's int8 file is one XNNPACK refuses), against predict on the same file: the
    same verdicts. The images are at the model's size, so MediaPipe's own resize changes nothing."""
    from shapes import make_ood

    project, model = finished, "models/export/model_float32.tflite"
    size = project.params()["base"]["image_size"]
    inside = project.path / "data/images" / images.read_csv(project.path / "data/split/train.csv")[0]["path"]
    files = []
    for path in [*sorted(make_ood(tmp_path / "other", count=8, seed=3).iterdir()), inside]:
        files.append(tmp_path / f"{path.stem}.png")
        images.save_png(images.load_image(path, size), files[-1])
    results = json.loads(project.run("python", "-m", "pipeline", "predict", model, *map(str, files), "--json").stdout)
    lines = project.run("python", str(Path(__file__).parents[1] / "docs/examples/mediapipe_unknown.py"), model,
                        *map(str, files)).stdout.splitlines()
    assert len(lines) == len(files)
    for line, r in zip(lines, results):
        path, verdict, _, known = line.split("\t")
        assert path == r["path"] and float(known.split()[1]) == pytest.approx(r["known"], abs=2e-3), (line, r)
        assert verdict == ("unknown" if r["unknown"] else r["predictions"][0]["label"]), (line, r)
    assert any(r["unknown"] for r in results) and not all(r["unknown"] for r in results), results


def test_rank_lists_the_least_sure_first_without_duplicates(finished, tmp_path):
    project = finished
    pool = tmp_path / "pool"
    pool.mkdir()
    sources = [project.path / "data/images" / r["path"] for r in images.read_csv(project.path / "data/split/test.csv")[:6]]
    for path in sources:
        shutil.copy(path, pool / path.name)
    shutil.copy(sources[0], pool / "copy.png")  # an exact duplicate: only one of the two is listed
    # a random backbone puts distinct shapes at cosine 0.90-0.97: only a copy reaches 0.99
    out = project.run("python", "-m", "pipeline", "rank", "models/export/model.keras", str(pool),
                      "--out", str(tmp_path / "next.csv"), "--similarity", "0.99")
    rows = images.read_csv(tmp_path / "next.csv")
    assert len(rows) == 6 and "1 near duplicate of images ranked above left out" in out.stderr
    assert sum(Path(r["file"]).name in ("copy.png", sources[0].name) for r in rows) == 1
    uncertainty = [float(r["uncertainty"]) for r in rows]
    assert uncertainty == sorted(uncertainty, reverse=True) and [r["rank"] for r in rows] == list("123456")


def test_summary_is_a_model_card_of_this_run(finished):
    project = finished
    card = (project.path / "reports/summary.md").read_text()
    metrics = project.metrics()
    assert f"**Test accuracy {metrics['finetune']['accuracy']:.3f} fine-tuned" in card
    for text in ("| circle | ", "not a readable image", "## Calibration and unknown", "FPR at 95% TPR",
                 "Times are from the machine that ran the export stage", "MobileNetV2, none weights, 32 px", "`model_int8.tflite`",
                 "MediaPipe ImageClassifier", "`model.onnx`", "test-time augmentation",
                 "`evaluate/mistakes.png`", "`finetune/curves.png`", "class weights"):
        assert text in card, text
    export = json.loads((project.path / "reports/export.json").read_text())
    assert f"| {export['tflite_int8']['size_mb']:.2f} |" in card


def test_lr_find_writes_a_plot_and_a_suggestion(finished, tmp_path):
    project = finished
    for phase, steps in (("head", 40), ("finetune", 8)):
        out = project.run("python", "-m", "pipeline", "lr_find", phase, "--steps", str(steps), "--out", str(tmp_path))
        result = json.loads((tmp_path / f"lr_find_{phase}.json").read_text())
        assert 1e-8 <= result["suggested_learning_rate"] <= 0.1, result  # a tenth of a rate tried (1e-7 up)
        assert 2 <= len(result["losses"]) <= steps
        assert (tmp_path / f"lr_find_{phase}.png").stat().st_size > 0
        assert "dvc exp run -S" in out.stdout


def pipeline_check(project: Project, *skip: str) -> subprocess.CompletedProcess:
    return project.run("python", "-m", "pipeline", "check", *(f"--skip={name}" for name in skip), check=False)


def test_nothing_to_do_after_a_full_run(finished):
    project = finished
    assert project.changed_stages() == set()
    out = pipeline_check(project, "remote")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok    lock      dvc.lock matches dvc.yaml, params.yaml and the code\n" in out.stdout


def test_no_output_holds_a_copy_of_a_source_image(finished):
    """Ingest records the images; nothing the pipeline writes is one of them, byte for byte."""
    p = finished.path
    source = {hashlib.sha256(f.read_bytes()).hexdigest(): f for f in (p / "data/images").rglob("*") if f.is_file()}
    outputs = [f for name in ("data", "models", "reports") for f in (p / name).rglob("*")
               if f.is_file() and not f.is_relative_to(p / "data/images") and f.name != "images.dvc"]
    assert len(outputs) > 30 and len(source) == 121
    copies = [f"{f.relative_to(p)} = {source[h].relative_to(p)}" for f in outputs
              if (h := hashlib.sha256(f.read_bytes()).hexdigest()) in source]
    assert not copies
    manifest = images.read_csv(p / "data/manifest.csv")
    assert len(manifest) == 120 and {r["sha256"] for r in manifest} <= set(source)
    assert all(int(r["bytes"]) == (p / "data/images" / r["path"]).stat().st_size for r in manifest)


def test_a_changed_source_image_reruns_from_ingest_and_is_never_read_stale(project):
    row = images.read_csv(project.path / "data/split/train.csv")[0]
    image = project.path / "data/images" / row["path"]
    Image.open(image).transpose(Image.Transpose.ROTATE_90).save(image)  # same path, other content
    assert project.changed_stages() == {"ingest", "embed", "audit", "augment", "evaluate", "calibrate", "export",
                                        "data/images.dvc"}
    dry = RUNNING_STAGE.findall(project.run("dvc", "repro", "--dry").stdout)
    assert dry[0] == "ingest"
    # A stage run by hand, before ingest has recorded the change, refuses the image
    before = digests(project.path, ["data/augmented"])
    out = project.run("python", "-m", "pipeline", "augment", "--source", "data/images", "--split", "data/split",
                      "--out", "data/augmented", check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"data/images/{row['path']} changed since ingest recorded it" in out.stderr
    assert digests(project.path, ["data/augmented"]) == before  # nothing lost
    assert project.repro("ingest") == ["ingest"]
    recorded = {r["path"]: r["sha256"] for r in images.read_csv(project.path / "data/manifest.csv")}
    assert recorded[row["path"]] == hashlib.sha256(image.read_bytes()).hexdigest() != row["sha256"]


def test_a_finetune_param_marks_only_finetune_and_summary(project):
    """`dvc status` names the stages whose own deps changed (repro follows downstream, as the
    interrupted-run test below shows: finetune, then evaluate and export when the model changed)."""
    project.set_param("finetune.learning_rate", 2e-4)
    assert project.changed_stages() == {"finetune", "summary"}  # summary shows the fine-tuning rate
    out = pipeline_check(project, "remote", "backbone", "source")
    assert out.returncode == 1 and "finetune: params.yaml finetune.learning_rate modified" in out.stdout


def model_digest(project) -> str:
    return hashlib.sha256((project.path / "models" / "model.keras").read_bytes()).hexdigest()


def after_finetune(project, before: str) -> list[str]:
    """The stages a finetune rerun should take: evaluate and export follow only when the model's
    bytes changed (.keras files are reproducible, and the tiny run's fine-tuning may keep the
    starting weights when no epoch improves on them)."""
    changed = model_digest(project) != before
    return ["finetune", "evaluate", "calibrate", "export", "summary"] if changed else ["finetune", "summary"]


def test_a_train_head_param_marks_only_train_head(project):
    """The stages after it rerun once its output changes, as DVC's rule has it: shown from finetune on
    by the interrupted-run test below, and through every stage by test_team (new images)."""
    project.set_param("train_head.dropout", 0.3)
    assert project.changed_stages() == {"train_head"}


def test_a_diverging_run_stops_naming_the_rate_and_writes_nothing(project):
    rate = project.params()["train_head"]["learning_rate"]
    project.set_param("train_head.learning_rate", 1e38)  # finite, but Adam's first steps overflow
    out = project.run("dvc", "repro", "train_head", check=False)
    log = out.stdout + out.stderr
    assert out.returncode != 0 and "Traceback" not in log
    assert "training diverged: the loss became nan in epoch 1 (loss). Lower train_head.learning_rate " \
           "(now 1e+38); nothing was written" in log
    assert not (project.path / "models" / "head.keras").exists()  # DVC removed it before the run
    assert [p.name for d in ("reports", "models") for p in (project.path / d).glob(".*tmp-*")] == []
    project.set_param("train_head.learning_rate", rate)
    # DVC's run cache cannot restore a stage with `cache: false` outputs (its DVCLive log), so the
    # failed stage reruns; seeded, it writes the same head, and nothing after it has to rerun
    assert project.repro() == ["train_head"]
    assert project.changed_stages() == set()


def test_mirrored_strategy_on_two_logical_cpus_through_dvc(finished, project):
    """The multi-GPU code path of both training stages, on this CPU split in two."""
    project.set_param("distribution.strategy", "mirrored")
    # extraction reads the key too (split across machines under multi_worker); its files come out the same
    assert project.changed_stages() == {"extract_features", "train_head", "finetune"}
    project.env["PIPELINE_CPU_DEVICES"] = "2"
    out = project.run("dvc", "repro", "finetune")  # evaluate and export do not distribute
    log = out.stdout + out.stderr
    assert RUNNING_STAGE.findall(out.stdout) == ["extract_features", "train_head", "finetune"], log[-3000:]
    assert log.count("distribution: MirroredStrategy, 2 replica(s) in sync") == 2, log[-3000:]
    assert digests(project.path, ["data/features"]) == digests(finished.path, ["data/features"])
    head = json.loads((project.path / "reports/train_head/metrics.json").read_text())
    assert head["best_val_accuracy"] >= 0.6, head  # three classes: chance is 1/3


def test_invalid_param_stops_the_stage_naming_the_key(project):
    project.set_param("finetune.epochs", 0)
    out = project.run("dvc", "repro", check=False)
    assert out.returncode != 0
    assert "finetune.epochs must be >= 1" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_same_seed_same_bytes_in_another_directory(finished, tmp_path):
    again = tiny_project(tmp_path / "again", finished.path.parent / "shapes")
    assert again.repro("evaluate")[-1] == "evaluate"  # every artifact compared; export and summary not needed
    got = digests(again.path, ARTIFACTS)
    assert len(got) > 10 and got == digests(finished.path, ARTIFACTS)


def test_an_interrupted_finetune_leaves_nothing_half_written_and_a_killed_one_resumes(project, tmp_path):
    """A finetune.* change reruns finetune and what follows. Then the same run twice more: stopped by
    SIGTERM (Ctrl-C, a CI timeout) it leaves nothing half-written; killed by SIGKILL (a lost machine:
    nothing runs after it) it resumes from its backup on the next `dvc repro` and ends exactly as
    the uninterrupted run."""
    before = model_digest(project)
    project.set_param("finetune.epochs", 4)
    project.set_param("finetune.patience", 4)
    assert project.repro() == after_finetune(project, before)
    expected = {name: (project.path / name).read_bytes()
                for name in ("reports/finetune/metrics.json", "models/model.keras")}

    proc = start(project, "dvc", "repro", "-f", "-s", "finetune")
    wait_for(proc, lambda: list((project.path / "reports").glob(".finetune.tmp-*")), "finetune never started")
    stop(proc, signal.SIGTERM)  # what Ctrl-C in a terminal, or a CI timeout, does to the group
    leftovers = [p.name for d in ("reports", "models") for p in (project.path / d).glob(".*tmp-*")]
    assert leftovers == []
    assert not (project.path / "models" / "model.keras").exists()  # DVC removed it before the run
    assert "finetune" in project.changed_stages()

    backup = project.path / ".backup" / "finetune" / "counters.json"
    proc = start(project, "dvc", "repro")
    wait_for(proc, lambda: backup.is_file() and json.loads(backup.read_text())["epoch"] >= 2,
             "finetune never finished epoch 2")
    stop(proc, signal.SIGKILL)
    saved = json.loads(backup.read_text())["epoch"]
    assert saved in (2, 3) and not (project.path / "models" / "model.keras").exists()
    out = project.run("dvc", "repro")
    (tmp_path / "resumed.log").write_text(out.stdout + out.stderr)  # kept by pytest for a look
    assert f"resuming after epoch {saved} of 4 from the backup in .backup/finetune" in out.stdout + out.stderr
    assert RUNNING_STAGE.findall(out.stdout) == ["finetune"]  # its outputs came out the same bytes
    assert {name: (project.path / name).read_bytes() for name in expected} == expected
    assert not backup.parent.exists()  # removed once the stage's outputs are written
    assert project.changed_stages() == set()


def start(project: Project, *cmd: str) -> subprocess.Popen:
    cmd = (str(BIN / "dvc"), *cmd[1:]) if cmd[0] == "dvc" else cmd
    return subprocess.Popen(cmd, cwd=project.path, env=project.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, what
        time.sleep(0.05)


def stop(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the process group; wait for all of it (DVC may exit before its stage does)."""
    os.killpg(proc.pid, sig)
    proc.wait(timeout=60)
    stop_by = time.monotonic() + 60
    while group_alive(proc.pid):
        assert time.monotonic() < stop_by, f"the stage did not exit within 60 s of signal {sig}"
        time.sleep(0.1)


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
    files = ["models/model.keras", "models/head.keras", "models/extractor.keras", "data/manifest.csv"]
    assert digests(clone, ARTIFACTS) == digests(project.path, ARTIFACTS)
    for name in files:
        assert (clone / name).read_bytes() == (project.path / name).read_bytes()


def test_a_queued_experiment_runs_and_shows_in_exp_show(project):
    """The README's `dvc exp run --queue` then `--run-all`, with one experiment (a grid is the same
    thing several times), read back through `dvc exp show` and `make exps`."""
    # 3e-5 is written back as `3e-05`, which YAML 1.1 readers take for a string (params._Loader)
    project.run("dvc", "exp", "run", "--queue", "-S", "finetune.learning_rate=3e-5", "evaluate")
    project.run("dvc", "exp", "run", "--run-all")
    shown = json.loads(project.run("dvc", "exp", "show", "--json").stdout)
    runs = [exp for commit in shown for exp in commit.get("experiments") or []]
    assert len(runs) == 1, shown
    data = runs[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["finetune"]["learning_rate"] == 3e-5
    metrics = data["metrics"]["reports/metrics.json"]["data"]
    assert metrics["finetune"]["accuracy"] >= 0.6, metrics  # three classes: chance is 1/3
    assert project.params()["finetune"]["learning_rate"] != 3e-5  # queued runs leave the workspace alone
    table = project.run("make", "-s", "exps").stdout  # the README's command for the key columns
    for column in ("finetune.learning_rate", "finetune.accuracy", "tflite_int8.size_mb"):
        assert column in table, table
