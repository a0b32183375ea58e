"""dvc.yaml against the code: each stage declares exactly the params, code and paths it uses.

The contract itself is pipeline/check.py's (`make check` runs it); this runs it on the project,
and tests/test_check.py shows that it fails, naming the problem, on each kind of break.
"""
from __future__ import annotations

import yaml

from conftest import ROOT
from pipeline import check
from pipeline.lib import dvcyaml, params

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_the_project_keeps_its_contract():
    assert check.check_contract(ROOT) == "every stage lists exactly the params, code and paths it uses; " \
                                         "every param is read"
    assert check.check_dag(ROOT)


def test_params_yaml_has_every_key_and_nothing_else():
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert {f"{s}.{k}" if isinstance(v, dict) else s for s, v in defaults.items()
            for k in (v if isinstance(v, dict) else [None])} == set(params.all_keys())


def test_no_stage_code_hardcodes_project_paths():
    for path in (ROOT / "pipeline").rglob("*.py"):
        text = path.read_text()
        for folder in ("data/", "models/", "reports/"):
            assert f'"{folder}' not in text and f"'{folder}" not in text, f"{path.name} hardcodes {folder}"


def test_registry_artifacts_are_stage_outputs_with_valid_names():
    from pipeline.lib import compat

    compat.require("dvc", "3", "this test's use of dvc.repo.artifacts.name_is_compatible (internal)",
                   "check that DVC still validates artifact names with it")
    from dvc.repo.artifacts import name_is_compatible

    artifacts = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]
    outs = [out for stage in DVC.values() for out in dvcyaml.outputs(stage)]
    assert "image-classifier" in artifacts and artifacts["image-classifier"]["path"] == "models/model.keras"
    for name, artifact in artifacts.items():
        assert name_is_compatible(name), name
        assert any(artifact["path"] == o or artifact["path"].startswith(o + "/") for o in outs), name
        assert artifact["type"] and artifact["desc"], name


def test_a_figure_change_reruns_only_the_stages_that_draw_it():
    """Each figure lives in a module of the stages that draw it (pipeline/lib/plots_*.py): a gallery
    caption must not rerun training."""
    figures = {stage: {d for d in dvcyaml.entries(DVC[stage], "deps") if d.startswith("pipeline/lib/plots")}
               for stage in DVC}
    assert figures["train_head"] == figures["finetune"] == {"pipeline/lib/plots.py", "pipeline/lib/plots_training.py"}
    drawers = {stage for stage, deps in figures.items() if "pipeline/lib/plots_gallery.py" in deps}
    assert drawers == {"audit", "evaluate"}


def test_commands_and_the_library_never_import_a_command_or_a_stage():
    """A command (pipeline/*.py) or a library module depends on pipeline/lib only: what two of them
    share lives there, so no command's internals are another's interface."""
    import ast

    wrong = []
    for path in [*(ROOT / "pipeline").glob("*.py"), *(ROOT / "pipeline" / "lib").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            wrong += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith("pipeline")
                      and n not in ("pipeline", "pipeline.lib") and not n.startswith("pipeline.lib")]
    assert wrong == []
