"""A throwaway copy of the project in its own git + DVC repo, for end-to-end runs of `dvc`."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT
from shapes import make_ood

BIN = Path(sys.executable).parent  # the environment running the tests: python and dvc
# What `dvc repro` prints as it starts a stage, and when nothing is to be done. DVC's output,
# not an interface (written for DVC 3.67): `repro` below stops, saying so, if neither appears.
RUNNING_STAGE = re.compile(r"^Running stage '([^']+)':", re.MULTILINE)
UP_TO_DATE = ("is cached - skipping run", "didn't change, skipping", "Data and pipelines are up to date")


class Project:
    def __init__(self, path: Path, params: dict, env: dict | None = None, data: Path | None = None):
        """The project's code, dvc.yaml and ``params`` at ``path``, in a fresh git + DVC repo;
        ``data`` (a folder of images) is copied to data/images and tracked with `dvc add`, and
        data/ood (the calibrate stage's out-of-distribution set) is generated (shapes.make_ood)."""
        self.path = path
        shutil.copytree(ROOT / "pipeline", path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("dvc.yaml", ".gitignore", "Makefile"):
            shutil.copy(ROOT / name, path / name)
        self.write_params(params)
        self.env = self.environment(env)
        for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                    ["git", "config", "user.name", "ci"], ["dvc", "init", "-q"],
                    ["dvc", "config", "core.analytics", "false"]):
            self.run(*cmd)
        # the project's DVC config (analytics off, the offline plots page) and that page
        shutil.copy(ROOT / ".dvc" / "config", path / ".dvc" / "config")
        shutil.copytree(ROOT / ".dvc" / "plots", path / ".dvc" / "plots")
        make_ood(path / "data" / "ood")
        self.run("dvc", "add", "-q", "data/ood")
        if data is not None:
            shutil.copytree(data, path / "data" / "images", symlinks=True)
            self.run("dvc", "add", "-q", "data/images")
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", "project")

    @staticmethod
    def environment(extra: dict | None = None) -> dict:
        """The environment the project's commands run in: this test run's python and dvc first."""
        inherited = {k: v for k, v in os.environ.items() if k != "PIPELINE_DEBUG"}  # tests set it themselves
        return {**inherited, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
                "TF_CPP_MIN_LOG_LEVEL": "2", **(extra or {})}

    @classmethod
    def attach(cls, path: Path, env: dict) -> "Project":
        """A Project object for an existing checkout (a clone), without copying or initialising."""
        project = cls.__new__(cls)
        project.path, project.env = path, env
        return project

    def copy(self, path: Path) -> "Project":
        """A copy of this project at ``path`` (workspace, git and DVC cache): a test's own to change."""
        shutil.copytree(self.path, path, symlinks=True)
        return Project.attach(path, dict(self.env))

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        if cmd[0] == "dvc":
            cmd = (str(BIN / "dvc"),) + cmd[1:]
        out = subprocess.run(cmd, cwd=self.path, env=self.env, capture_output=True, text=True, timeout=900)
        if check and out.returncode:
            raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def command(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``python -m pipeline NAME ARGS`` (predict, rank: commands, not stages) run in this test's
        process, in the project's folder, its stdout and stderr captured: the same ``main`` the
        command line runs, without paying TensorFlow's import once more per call (seconds each).
        What only a separate process shows (the exit code of the interpreter, stderr's start-up
        filter) is tested with ``run``."""
        import contextlib
        import io
        import runpy

        out, err, cwd, argv = io.StringIO(), io.StringIO(), os.getcwd(), sys.argv
        code = 0
        try:
            os.chdir(self.path)
            sys.argv = [f"python -m pipeline {name}", *map(str, args)]
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                runpy.run_module(f"pipeline.{name}", run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if not isinstance(exit_.code, (int, type(None))):
                err.write(f"{exit_.code}\n")
        finally:
            os.chdir(cwd)
            sys.argv = argv
        result = subprocess.CompletedProcess(["python", "-m", "pipeline", name, *args], code, out.getvalue(),
                                             err.getvalue())
        if check and code:
            raise AssertionError(f"{name} {' '.join(map(str, args))} failed ({code}):\n{result.stdout}\n{result.stderr}")
        return result

    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def write_params(self, params: dict) -> None:
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def set_param(self, key: str, value) -> None:
        params = self.params()
        section, name = key.split(".")
        params[section][name] = value
        self.write_params(params)

    def changed_stages(self) -> set[str]:
        """Stage names `dvc status` reports as changed."""
        return set(json.loads(self.run("dvc", "status", "--json").stdout))

    def repro(self, *targets: str) -> list[str]:
        """Run `dvc repro` (of ``targets`` and what they need, or everything); return the stages it
        actually ran, in order."""
        out = self.run("dvc", "repro", *targets).stdout
        ran = RUNNING_STAGE.findall(out)
        if not ran and not any(text in out for text in UP_TO_DATE):
            raise AssertionError("`dvc repro` printed neither 'Running stage' nor an up-to-date line: has DVC's "
                                 f"output changed? (tests/project.py was written for DVC 3.67's)\n{out[-2000:]}")
        return ran

    def metrics(self) -> dict:
        return json.loads((self.path / "reports" / "metrics.json").read_text())


def default_params(**sections) -> dict:
    """params.yaml with ``sections`` merged in, e.g. ``base={"image_size": 32}``."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, values in sections.items():
        if isinstance(values, dict):
            params[name].update(values)
        else:
            params[name] = values
    return params


def pipeline_check(project: Project, *skip: str) -> subprocess.CompletedProcess:
    """``python -m pipeline check`` in ``project``, skipping the named checks; not raising on failure."""
    return project.run("python", "-m", "pipeline", "check", *(f"--skip={name}" for name in skip), check=False)
