"""Changes on copies of the finished tiny project (tests/test_e2e.py): what a change reruns, what a
failed, interrupted or distributed run leaves, sharing through a remote, experiments. A module of
its own so that pytest-xdist runs it beside test_e2e.py's checks of the finished run."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import pytest
import yaml
from PIL import Image

from conftest import digests
from pipeline.lib import schemas
from project import BIN, RUNNING_STAGE, Project, pipeline_check
from tiny_run import tiny_project

pytestmark = pytest.mark.e2e

# The reproducible artifacts: the same seed gives the same bytes
ARTIFACTS = ("data/manifest.csv", "data/split", "data/augmented", "data/features", "models/extractor.keras", "models/head.keras",
             "models/model.keras", "reports/metrics.json", "reports/ingest.json")


@pytest.fixture
def project(finished, tmp_path):
    """The finished tiny project's own copy, for a test that changes it."""
    return finished.copy(tmp_path / "project")


def test_a_changed_source_image_reruns_from_ingest_and_is_never_read_stale(project):
    # Only ingest declares the source and the archive caps (bookkeeping that stays flat with the
    # images): a cap bounds work, never changes an output, so changing one reruns ingest alone.
    project.set_param("ingest.max_unpacked_mb", 40000)
    assert project.changed_stages() == {"ingest"}
    project.set_param("ingest.max_unpacked_mb", 50000)
    row = schemas.read_csv(project.path / "data/split/train.csv")[0]
    image = project.path / "data/images" / row["path"]
    Image.open(image).transpose(Image.Transpose.ROTATE_90).save(image)  # same path, other content
    assert project.changed_stages() == {"ingest", "data/images.dvc"}  # the rest hear of it through the manifest
    dry = RUNNING_STAGE.findall(project.run("dvc", "repro", "--dry").stdout)
    assert dry[0] == "ingest"
    # A stage run by hand, before ingest has recorded the change, refuses the image it reads (into a
    # new folder: over its own output it would copy the recorded content's views, never reading it)
    before = digests(project.path, ["data/augmented"])
    out = project.run("python", "-m", "pipeline", "augment", "--source", "data/images", "--split", "data/split",
                      "--out", "augmented-by-hand", check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"data/images/{row['path']} changed since ingest recorded it" in out.stderr
    assert digests(project.path, ["data/augmented"]) == before  # nothing lost
    assert project.repro("ingest") == ["ingest"]
    recorded = {r["path"]: r["sha256"] for r in schemas.read_csv(project.path / "data/manifest.csv")}
    assert recorded[row["path"]] == hashlib.sha256(image.read_bytes()).hexdigest() != row["sha256"]
    # the new hash in the manifest (and ingest's report): the chain goes on from them
    assert project.changed_stages() == {"embed", "split", "summary"}


def test_export_refuses_a_test_image_changed_behind_its_back(project):
    """Export reads the test images for its own checks (the SavedModel decodes their bytes): each
    read is checked against the hash ingest recorded, as every other stage's."""
    row = schemas.read_csv(project.path / "data/split/test.csv")[0]
    image = project.path / "data/images" / row["path"]
    Image.open(image).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(image)
    before = digests(project.path, ["models/export", "reports/export.json"])
    cmd = yaml.safe_load((project.path / "dvc.yaml").read_text())["stages"]["export"]["cmd"]
    out = project.run("bash", "-c", cmd, check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"data/images/{row['path']} changed since ingest recorded it" in out.stderr
    assert digests(project.path, ["models/export", "reports/export.json"]) == before  # nothing lost


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
    """Up to the head: fine-tuning the same head is deterministic too (the interrupted run below ends
    exactly as the uninterrupted one), and a saved model's bytes do not depend on where it was saved
    (tests/test_models.py), so the suite does not pay for a second fine-tuning here."""
    again = tiny_project(tmp_path / "again", finished.path.parent / "shapes")
    assert again.repro("train_head")[-1] == "train_head"
    trained = [name for name in ARTIFACTS if name not in ("reports/metrics.json", "models/model.keras")]
    got = digests(again.path, trained)
    assert len(got) > 10 and got == digests(finished.path, trained)


def test_an_interrupted_finetune_leaves_nothing_half_written_and_a_killed_one_resumes(project, tmp_path):
    """A finetune.* change reruns finetune (`dvc repro finetune`: what follows it is the queued
    experiment's to show). Then the same run twice more: stopped by SIGTERM (Ctrl-C, a CI timeout)
    it leaves nothing half-written; killed by SIGKILL (a lost machine: nothing runs after it) it
    resumes from its backup on the next `dvc repro finetune` and ends exactly as the uninterrupted run."""
    before = model_digest(project)
    project.set_param("finetune.epochs", 4)
    project.set_param("finetune.patience", 4)
    assert project.repro("finetune") == ["finetune"]
    after = after_finetune(project, before)[1:]  # the stages left to run: summary, and what reads the model
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
    proc = start(project, "dvc", "repro", "finetune")
    wait_for(proc, lambda: backup.is_file() and json.loads(backup.read_text())["epoch"] >= 2,
             "finetune never finished epoch 2")
    stop(proc, signal.SIGKILL)
    saved = json.loads(backup.read_text())["epoch"]
    assert saved in (2, 3) and not (project.path / "models" / "model.keras").exists()
    out = project.run("dvc", "repro", "finetune")
    (tmp_path / "resumed.log").write_text(out.stdout + out.stderr)  # kept by pytest for a look
    assert f"resuming after epoch {saved} of 4 from the backup in .backup/finetune" in out.stdout + out.stderr
    assert RUNNING_STAGE.findall(out.stdout) == ["finetune"]  # its outputs came out the same bytes
    assert {name: (project.path / name).read_bytes() for name in expected} == expected
    assert not backup.parent.exists()  # removed once the stage's outputs are written
    assert project.changed_stages() == set(after)  # what reads the new model, and the model card


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
