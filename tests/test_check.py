"""pipeline.check: each check passes on the project and fails, naming the problem, when it is broken.

The lock check needs a real run: tests/test_e2e.py runs it on the e2e project.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from project import BIN
from pipeline import check



@pytest.fixture
def proj(tmp_path: Path) -> Path:
    """The project's dvc.yaml, params.yaml and code, nothing else."""
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def edit_yaml(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def failure(name: str, root: Path) -> str:
    with pytest.raises(check.Failed) as err:
        check.CHECKS[name](root)
    return str(err.value)


def dvc_repo(root: Path) -> None:
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)


def test_the_project_passes_the_static_checks():
    for name in ("params", "contract", "dag"):
        assert check.CHECKS[name](ROOT)


def test_invalid_params_fail_naming_the_key(proj):
    edit_yaml(proj / "params.yaml", lambda p: p["finetune"].update(learning_rate=-1))
    assert "finetune.learning_rate must be > 0" in failure("params", proj)


def test_a_param_read_but_not_declared_fails(proj):
    edit_yaml(proj / "dvc.yaml", lambda d: d["stages"]["finetune"]["params"].remove("finetune.patience"))
    message = failure("contract", proj)
    assert "finetune: code reads finetune.patience but dvc.yaml does not list it" in message
    assert "no stage reads finetune.patience" in message


def test_a_param_declared_but_not_read_fails(proj):
    edit_yaml(proj / "dvc.yaml", lambda d: d["stages"]["evaluate"]["params"].append("finetune.epochs"))
    assert "evaluate: dvc.yaml lists finetune.epochs under params but the code does not read it" in failure(
        "contract", proj)


def test_a_missing_code_dependency_fails(proj):
    edit_yaml(proj / "dvc.yaml", lambda d: d["stages"]["finetune"]["deps"].remove("pipeline/lib/shards.py"))
    assert "finetune: code deps in dvc.yaml differ from the imports; add pipeline/lib/shards.py" in failure(
        "contract", proj)


def test_a_path_passed_but_not_declared_fails(proj):
    edit_yaml(proj / "dvc.yaml", lambda d: d["stages"]["finetune"]["deps"].remove("models/head.keras"))
    assert "finetune: cmd passes models/head.keras, which is neither a dep nor an output" in failure("contract", proj)


def test_a_path_declared_but_not_passed_fails(proj):
    edit_yaml(proj / "dvc.yaml", lambda d: d["stages"]["split"]["outs"].append("data/extra"))
    assert "split: dvc.yaml declares data/extra, which the cmd does not pass to the stage" in failure("contract", proj)


def test_only_ingest_declares_the_source(proj):
    """Later stages read the images through the hashes ingest recorded: declaring the folder again
    would cost `dvc status` a scan of every image per stage, and another folder is not the source."""
    assert "data/images" not in yaml.safe_load((proj / "dvc.yaml").read_text())["stages"]["augment"]["deps"]
    edit_yaml(proj / "dvc.yaml", lambda d: d["stages"]["augment"]["deps"].insert(0, "data/images"))
    assert "augment: declares the source data/images as a dep; only ingest does" in failure("contract", proj)
    edit_yaml(proj / "dvc.yaml", lambda d: d["stages"]["augment"].update(
        cmd=d["stages"]["augment"]["cmd"].replace("--source data/images", "--source data/other"),
        deps=d["stages"]["augment"]["deps"][1:]))
    assert "augment: --source data/other is not ingest's source (data/images)" in failure("contract", proj)


def test_a_scratch_folder_must_be_git_ignored(proj):
    (proj / ".gitignore").write_text("/data\n")
    assert "train_head: scratch folder .backup/train_head is not git-ignored" in failure("contract", proj)


def test_a_changed_graph_fails_naming_the_stage(proj):
    edit_yaml(proj / "dvc.yaml", lambda d: d["stages"]["finetune"]["deps"].remove("models/head.keras"))
    assert ("finetune reads from augment, extract_features; expected augment, extract_features, train_head"
            in failure("dag", proj))


def test_a_new_stage_fails_the_graph_check(proj):
    edit_yaml(proj / "dvc.yaml", lambda d: d["stages"].update(
        report={"cmd": "python -m pipeline summary", "deps": ["reports/summary.md"]}))
    assert "report: a stage the graph does not expect" in failure("dag", proj)


def test_graph_edges_come_from_paths_inside_output_folders():
    stages = {"a": {"outs": ["data/x"]}, "b": {"deps": ["data/x/labels.json"], "outs": [{"m.json": {}}]},
              "c": {"deps": ["data", "m.json"]}}
    assert check.graph(stages) == {"a": set(), "b": {"a"}, "c": {"a", "b"}}


def test_unknown_backbone_fails_with_close_names(proj):
    edit_yaml(proj / "params.yaml", lambda p: p["base"].update(backbone="MobileNetV9"))
    message = failure("backbone", proj)
    assert "'MobileNetV9' is not a keras.applications model" in message and "MobileNetV2" in message


def test_source_must_be_tracked_by_dvc(proj):
    assert "data/images is not tracked by DVC" in failure("source", proj)
    (proj / "data" / "images").mkdir(parents=True)
    assert "`dvc add data/images`" in failure("source", proj)  # present but untracked: still a failure
    (proj / "data" / "images.dvc").write_text("outs:\n- path: images\n")
    assert check.check_source(proj) == "data/images is tracked by data/images.dvc"
    (proj / "data" / "images").rmdir()
    assert "not in the workspace (`make data` or `dvc pull`)" in check.check_source(proj)


def test_source_may_be_several_imports_inside_the_folder(proj):
    (proj / "data" / "images").mkdir(parents=True)
    for name in ("train.dvc", "test.dvc"):
        (proj / "data" / "images" / name).write_text("outs: []\n")
    assert check.check_source(proj) == "data/images is tracked by data/images/test.dvc, data/images/train.dvc"


def test_remote_must_be_configured_usable_and_supported(proj, tmp_path):
    dvc_repo(proj)
    assert "no default DVC remote" in failure("remote", proj)
    dvc = lambda *args: subprocess.run([str(BIN / "dvc"), *args], cwd=proj, check=True, capture_output=True)
    dvc("remote", "add", "-d", "team", str(tmp_path / "store"))
    assert "does not exist" in failure("remote", proj)
    (tmp_path / "store").mkdir()
    assert check.check_remote(proj) == f"remote 'team': folder {tmp_path / 'store'}"
    dvc("remote", "add", "-d", "-f", "team", "s3://bucket/project")
    assert "needs `pip install dvc-s3`" in failure("remote", proj)


def test_command_prints_one_line_per_check_and_fails(proj):
    edit_yaml(proj / "params.yaml", lambda p: p["split"].update(val_fraction=2))
    out = subprocess.run([sys.executable, "-m", "pipeline", "check", "--skip", "lock", "--skip", "backbone",
                          "--skip", "source", "--skip", "remote"], cwd=proj, capture_output=True, text=True)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("FAIL  params") and "split.val_fraction must be in (0, 1)" in out.stdout
    assert lines[-1] == "1 of 3 checks failed: params"
    assert "skip  remote    --skip remote" in lines


def test_invalid_params_yaml_fails_its_check_and_skips_the_backbone_without_a_traceback(proj):
    (proj / "params.yaml").write_text("seed: [\n")
    out = subprocess.run([sys.executable, "-m", "pipeline", "check", "--skip", "lock", "--skip", "source",
                          "--skip", "remote"], cwd=proj, capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("FAIL  params") and "is not valid YAML" in lines[0]
    assert "skip  backbone  not run: params.yaml is invalid (see the params check)" in lines
    assert lines[-1] == "1 of 3 checks failed: params"
