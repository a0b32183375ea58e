"""The GitHub Actions workflows: valid for GitHub, and running the commands this repository has."""
from __future__ import annotations

import configparser
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from project import BIN

WORKFLOWS = ROOT / ".github" / "workflows"


def load(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads the key `on` as true
    return workflow


def steps(workflow: dict, job: str) -> list[dict]:
    return workflow["jobs"][job]["steps"]


def runs(workflow: dict, job: str) -> str:
    return "\n".join(step.get("run", "") for step in steps(workflow, job))


def uses(workflow: dict, job: str, action: str) -> dict:
    found = [s for s in steps(workflow, job) if s.get("uses", "").startswith(action + "@")]
    assert found, f"{job} does not use {action}"
    return found[0].get("with", {})


@pytest.mark.parametrize("name", ["ci.yml", "full-run.yml"])
def test_workflow_matches_githubs_schema(name):
    out = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                          str(WORKFLOWS / name)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_schema_check_catches_a_broken_workflow(tmp_path):
    broken = load("ci.yml")
    del broken["jobs"]["test"]["runs-on"]
    broken["jobs"]["test"]["steps"][0]["with"] = "not a mapping"
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken))
    out = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 1


def test_ci_runs_on_every_push_and_pull_request():
    assert set(load("ci.yml")["on"]) == {"push", "pull_request"}


@pytest.mark.parametrize("job", ["fast", "test", "pipeline"])
def test_ci_installs_the_pinned_requirements_with_pip_caching(job):
    setup = uses(load("ci.yml"), job, "actions/setup-python")
    assert setup["python-version"] == "3.11"
    assert setup["cache"] == "pip" and setup["cache-dependency-path"] == "requirements.txt"
    assert re.search(r"^make (test|test-fast|setup)$", runs(load("ci.yml"), job), re.M)  # pip install -r requirements.txt
    pins = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert pins and all("==" in line for line in pins)


def test_ci_test_job_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^make test +# the test suite", readme, re.M)  # "The two commands"
    assert "make test" in runs(load("ci.yml"), "test")
    assert "make test-fast" in runs(load("ci.yml"), "fast")  # the fast tier, its answer first
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_ci_pipeline_job_checks_runs_tiny_and_reports_diffs():
    workflow = load("ci.yml")
    assert uses(workflow, "pipeline", "actions/checkout")["fetch-depth"] == 0  # the base branch, for diffs
    commands = runs(workflow, "pipeline")
    order = [commands.index(cmd) for cmd in ("make setup", "make check", "tests/tiny_run.py", "scripts/ci-report.sh")]
    assert order == sorted(order)
    assert '"$BASE" >> "$GITHUB_STEP_SUMMARY"' in commands
    base = next(s for s in steps(workflow, "pipeline") if "ci-report" in s.get("run", ""))["env"]["BASE"]
    assert "github.base_ref" in base and "github.event.before" in base
    for path in ("tests/tiny_run.py", "scripts/ci-report.sh"):
        assert (ROOT / path).is_file()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^check: .*\n\tpython -m pipeline check \$\(ARGS\)$", makefile, re.M)


def test_full_run_pulls_runs_pushes_with_secrets_only():
    workflow = load("full-run.yml")
    assert "workflow_dispatch" in workflow["on"]
    commands = runs(workflow, "full-run")
    order = [commands.index(cmd) for cmd in ("make check", "dvc exp run --pull --allow-missing", "dvc push",
                                             "dvc exp push origin")]
    assert order == sorted(order)
    text = "\n".join((WORKFLOWS / name).read_text() for name in ("ci.yml", "full-run.yml"))
    for name, value in workflow["env"].items():
        if name.startswith("AWS_"):
            assert value == "${{ secrets.%s }}" % name
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # no AWS key id pasted in
    # Remote credentials go to .dvc/config.local (`dvc remote modify --local`), which git ignores,
    # never into the committed .dvc/config
    committed = configparser.ConfigParser()
    committed.read(ROOT / ".dvc" / "config")
    assert not [f"[{section}] {key}" for section in committed.sections() for key in committed[section] if key in SECRETS]
    assert subprocess.run(["git", "check-ignore", "-q", ".dvc/config.local"], cwd=ROOT).returncode == 0


# DVC's remote options that hold a credential (dvc.org/doc/command-reference/remote/modify)
SECRETS = {"access_key_id", "secret_access_key", "session_token", "password", "key_secret",
           "account_key", "sas_token", "client_secret", "gdrive_client_secret", "token", "connection_string"}


def git_dvc_repo(root: Path) -> None:
    (root / "dvc.yaml").write_text("stages:\n  train:\n    cmd: 'true'\n    params: [lr]\n"
                                   "    metrics: [{m.json: {cache: false}}]\n")
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                ["git", "config", "user.name", "ci"], [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)


def test_ci_report_shows_params_and_metrics_changes(tmp_path):
    git_dvc_repo(tmp_path)
    (tmp_path / "params.yaml").write_text("lr: 0.001\n")
    (tmp_path / "m.json").write_text(json.dumps({"accuracy": 0.5}))
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "base"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "params.yaml").write_text("lr: 0.01\n")
    (tmp_path / "m.json").write_text(json.dumps({"accuracy": 0.75}))
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1"}
    report = lambda base: subprocess.run(["bash", str(ROOT / "scripts" / "ci-report.sh"), base], cwd=tmp_path,
                                         env=env, capture_output=True, text=True, check=True).stdout
    out = report("HEAD")
    assert re.search(r"\| params\.yaml +\| lr +\| 0\.001 +\| 0\.01 ", out), out
    assert re.search(r"\| m\.json +\| accuracy +\| 0\.5 +\| 0\.75 +\| 0\.25 ", out), out
    assert "No `origin/main` to compare with" in report("origin/main")


def test_ci_report_lists_the_images_a_commit_changes(tmp_path):
    git_dvc_repo(tmp_path)
    images = tmp_path / "data" / "images"
    for name in ("cat/1.png", "cat/2.png", "dog/3.png"):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        (images / name).write_text(name)
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1"}
    run = lambda *cmd: subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    (tmp_path / "params.yaml").write_text("lr: 0.001\n")
    for cmd in (["dvc", "add", "-q", "data/images"], ["git", "add", "-A"], ["git", "commit", "-qm", "base"]):
        run(*cmd)
    (images / "cat" / "2.png").rename(images / "dog" / "2.png")  # relabelled
    (images / "dog" / "4.png").write_text("new")
    for cmd in (["dvc", "add", "-q", "data/images"], ["git", "commit", "-qam", "more dogs"]):
        run(*cmd)
    out = run("bash", str(ROOT / "scripts" / "ci-report.sh"), "HEAD~1").stdout
    assert "### Data and models (dvc diff)" in out
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")) for line in out.splitlines()
            if line.startswith("| ") and "data/images/" in line}
    assert rows == {("added", "data/images/dog/4.png"), ("modified", "data/images/"),
                    ("renamed", "data/images/cat/2.png -> data/images/dog/2.png")}, out
    assert "No params changed." in out and "No metrics changed." in out


def test_ci_runs_on_every_push_and_pull_request_whatever_the_files():
    """No path filters: a commit that only changes data/images.dvc is checked like any other."""
    triggers = load("ci.yml")["on"]
    assert set(triggers) == {"push", "pull_request"}
    assert all(not (settings or {}).get(key) for settings in triggers.values()
               for key in ("paths", "paths-ignore", "branches-ignore"))
