"""dvc.yaml against the code: each stage declares exactly the params, code and paths it uses."""
from __future__ import annotations

import shlex

import pytest
import yaml

from conftest import ROOT
from pipeline.lib import params
from pipeline import check

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
EXPECTED_STAGES = ["ingest", "split", "augment", "extract_features", "train_head", "finetune", "evaluate",
                   "export", "summary"]


def test_stages_form_the_expected_pipeline():
    assert list(DVC) == EXPECTED_STAGES


@pytest.mark.parametrize("name", EXPECTED_STAGES)
def test_stage_params_match_what_the_code_reads(name):
    stage = DVC[name]
    assert sorted(params.expand(check.declared_params(ROOT, check.module_of(stage)))) == sorted(stage.get("params", []))


def test_every_param_is_used_by_some_stage():
    used = {key for stage in DVC.values() for key in stage.get("params", [])}
    assert used == set(params.all_keys())
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert {f"{s}.{k}" if isinstance(v, dict) else s for s, v in defaults.items()
            for k in (v if isinstance(v, dict) else [None])} == set(params.all_keys())


@pytest.mark.parametrize("name", EXPECTED_STAGES)
def test_stage_code_deps_match_imports(name):
    stage = DVC[name]
    code = {check.source_file(m) for m in check.pipeline_imports(ROOT, check.module_of(stage))}
    assert code == {d for d in stage["deps"] if d.startswith("pipeline/")}


SCRATCH = ".backup/"  # training's per-epoch backups, for resuming (training.Backup)


@pytest.mark.parametrize("name", EXPECTED_STAGES)
def test_cmd_paths_are_the_declared_deps_and_outs(name):
    stage = DVC[name]
    args = shlex.split(stage["cmd"])
    paths = {args[i + 1] for i, a in enumerate(args) if a.startswith("--")}
    declared = [d for d in stage["deps"] if not d.startswith("pipeline/")]
    declared += check.outputs(stage)
    for path in paths:  # each argument is declared, or is the folder holding declared files
        if path.startswith(SCRATCH):  # or a scratch folder, neither input nor output (and not in git)
            assert f"/{SCRATCH}" in (ROOT / ".gitignore").read_text().splitlines()
            continue
        assert any(d == path or d.startswith(path + "/") for d in declared), f"{name}: {path} undeclared"
    for d in declared:  # and everything declared is handed to the stage
        assert any(d == p or d.startswith(p + "/") for p in paths), f"{name}: {d} not passed to the stage"


def test_no_stage_code_hardcodes_project_paths():
    for path in (ROOT / "pipeline").rglob("*.py"):
        text = path.read_text()
        for folder in ("data/", "models/", "reports/"):
            assert f'"{folder}' not in text and f"'{folder}" not in text, f"{path.name} hardcodes {folder}"


def test_registry_artifacts_are_stage_outputs_with_valid_names():
    from dvc.repo.artifacts import name_is_compatible

    artifacts = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]
    outs = [out for stage in DVC.values() for out in check.outputs(stage)]
    assert "image-classifier" in artifacts and artifacts["image-classifier"]["path"] == "models/model.keras"
    for name, artifact in artifacts.items():
        assert name_is_compatible(name), name
        assert any(artifact["path"] == o or artifact["path"].startswith(o + "/") for o in outs), name
        assert artifact["type"] and artifact["desc"], name
