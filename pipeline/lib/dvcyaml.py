"""dvc.yaml, read in one place: its stages, the paths each one's command passes, reads and writes,
which stage writes a path, and the ingest stage's source. Paths live in dvc.yaml only; the stages
get theirs as ``--flag PATH`` arguments, and everything else that needs one asks here.

Read as YAML text (no DVC import): ``stages`` is DVC's own key, and an entry of ``deps``,
``outs``, ``metrics`` or ``plots`` is a path or a one-key mapping of a path to its options.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import yaml

DVC_YAML = "dvc.yaml"
WRITES = ("outs", "metrics", "plots")


def stages(root: Path | str = ".", strict: bool = True) -> dict[str, dict]:
    """The ``stages`` of ``root``'s dvc.yaml. ``strict=False``: {} where there is none or it cannot be
    read (a command run outside a project), instead of the error."""
    try:
        found = yaml.safe_load((Path(root) / DVC_YAML).read_text(encoding="utf-8"))["stages"]
        if not isinstance(found, dict):
            raise TypeError(f"{DVC_YAML}: stages is not a mapping")
        return found
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError):
        if strict:
            raise
        return {}


def entries(stage: Any, *kinds: str) -> list[str]:
    """The paths a stage lists under ``kinds`` (deps, outs, metrics, plots), with or without options."""
    found = []
    for kind in kinds:
        for entry in (stage.get(kind) or [] if isinstance(stage, dict) else []):
            name = next(iter(entry), None) if isinstance(entry, dict) else entry
            if isinstance(name, str):
                found.append(name)
    return found


def outputs(stage: Any) -> list[str]:
    """Everything a stage writes: ``outs``, ``metrics`` and ``plots``."""
    return entries(stage, *WRITES)


def writers(all_stages: dict) -> dict[str, str]:
    """{every output the stages declare: the stage that writes it}."""
    return {out: name for name, stage in all_stages.items() for out in outputs(stage)}


def producer(path: Any, all_stages: dict) -> tuple[str | None, str | None]:
    """(the stage whose output holds ``path``, that output), or (None, None) when no stage writes it
    (a file given to ``predict``). ``path`` is taken relative to the current folder, the project's."""
    target = relative(path)
    for out, stage in writers(all_stages).items():
        if target == Path(out) or Path(out) in target.parents:
            return stage, out
    return None, None


def not_created(all_stages: dict) -> list[str]:
    """What the stages read and none writes: the team's data (data/images, data/ood), the code.
    Nothing the pipeline writes may be, hold or lie inside one of them."""
    outs = [Path(o) for o in writers(all_stages)]
    deps = {Path(d) for stage in all_stages.values() for d in entries(stage, "deps")}
    return sorted(d.as_posix() for d in deps if not any(d == o or o in d.parents for o in outs))


def arguments(stage: dict) -> dict[str, str]:
    """The ``--flag VALUE`` pairs of a stage's command, e.g. ingest's ``--source`` and its images folder."""
    cmd = shlex.split(stage["cmd"])
    return {a: cmd[i + 1] for i, a in enumerate(cmd) if a.startswith("--") and i + 1 < len(cmd)}


def paths(stage: dict) -> dict[str, Path]:
    """The stage's path arguments by the names the stage gives them (``--out-dir`` -> ``out_dir``)."""
    return {flag[2:].replace("-", "_"): Path(value) for flag, value in arguments(stage).items()}


def argument(stage: str, flag: str, root: Path | str = ".") -> str:
    """A stage's ``--flag`` path, e.g. the audit's ``--out`` (the folder of its reports)."""
    return arguments(stages(root)[stage])[flag]


def source(root: Path | str = ".") -> str:
    """The ingest stage's ``--source``: the images folder (or archive), e.g. ``data/images``."""
    return arguments(stages(root)["ingest"])["--source"]


def relative(path: Any) -> Path:
    """``path`` relative to the current folder, as dvc.yaml names paths."""
    return Path(os.path.relpath(Path(path).absolute(), Path.cwd()))
