"""check: verify the project without training. ``python -m pipeline check [--skip NAME ...]``

One line per check, ``ok``, ``FAIL`` (with what to do) or ``skip``; exit 1 if any failed.

  params     params.yaml validates (types, allowed values)
  contract   each stage's params in dvc.yaml are exactly the keys its code reads, every
             key is read by some stage, each stage's code deps are the modules it imports,
             and the paths its cmd passes are exactly its declared deps and outputs (the
             source is ingest's dep alone: later stages read it through the recorded hashes)
  dag        dvc.yaml's stages form the expected graph (EXPECTED_DAG below)
  lock       dvc.lock agrees with dvc.yaml, params.yaml and the code; outputs that are
             merely missing (not pulled) are allowed, as `dvc repro --allow-missing` would
  backbone   base.backbone is a keras.applications model; base.weights is usable
  source     the ingest stage's source folder (data/images) is tracked by DVC
  remote     a default DVC remote is configured, and DVC can talk to its kind of storage

Everything is read from the current directory (the project root), the same files
`dvc repro` reads. Only `backbone` imports TensorFlow (a few seconds).
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Callable

import yaml

from pipeline.lib import artifacts, dvcyaml, errors, params

# Stage -> the stages whose outputs it reads. A new stage, or a changed dependency,
# must be added here on purpose: that is the point of the check.
EXPECTED_DAG: dict[str, set[str]] = {
    "ingest": set(),
    "embed": {"ingest"},
    "split": {"ingest", "embed"},
    "audit": {"embed", "split"},
    "augment": {"split"},  # and the source (data/images), through split's record of it
    "extract_features": {"augment", "embed"},  # embed's original views
    "train_head": {"extract_features", "split"},
    "finetune": {"augment", "extract_features", "train_head"},
    "evaluate": {"split", "extract_features", "train_head", "finetune"},
    "calibrate": {"split", "finetune"},  # and data/ood, tracked like the source
    "export": {"split", "augment", "finetune", "calibrate"},
    "summary": {"ingest", "split", "audit", "train_head", "finetune", "evaluate", "calibrate", "export"},
}
# DVC's optional packages for each kind of remote storage (dvc itself speaks local paths).
REMOTE_PLUGINS = {"s3": "dvc_s3", "gs": "dvc_gs", "gcs": "dvc_gs", "azure": "dvc_azure", "ssh": "dvc_ssh",
                  "hdfs": "dvc_hdfs", "webhdfs": "dvc_webhdfs", "http": "dvc_http", "https": "dvc_http",
                  "webdav": "dvc_webdav", "webdavs": "dvc_webdav", "oss": "dvc_oss", "gdrive": "dvc_gdrive"}
MISSING = {"deleted", "not in cache"}  # a `dvc status` state that only means "not pulled"


class Failed(Exception):
    """The check failed; the message says what is wrong and what to do."""


class Skipped(Exception):
    """The check does not apply here."""


# --- dvc.yaml and the stage modules, read as text (no TensorFlow) ---------------------------

def module_of(stage: dict) -> str:
    """The module a stage's cmd runs, as ``stages.<name>`` (``python -m pipeline <name>``)."""
    match = re.match(r"python -m pipeline (\w+)\b", stage["cmd"])
    if not match:
        raise Failed(f"unexpected cmd {stage['cmd']!r} (stages run `python -m pipeline <stage>`)")
    return f"stages.{match.group(1)}"


def source_file(module: str) -> str:
    """``stages.ingest`` -> ``pipeline/stages/ingest.py``, as dvc.yaml lists code deps."""
    return f"pipeline/{module.replace('.', '/')}.py"


def declared_params(root: Path, module: str) -> list[str]:
    """The module's ``PARAMS`` list: the params keys (or sections) it loads."""
    tree = ast.parse((root / source_file(module)).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "PARAMS":
            return ast.literal_eval(node.value)
    raise Failed(f"{source_file(module)} has no PARAMS list")


def pipeline_imports(root: Path, module: str, seen: set[str] | None = None) -> set[str]:
    """pipeline modules (``lib.params``, ``stages.finetune``, ...) that ``module`` imports, directly
    or through other pipeline modules."""
    seen = set() if seen is None else seen
    seen.add(module)
    for node in ast.walk(ast.parse((root / source_file(module)).read_text())):
        if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("pipeline"):
            continue
        package = node.module.removeprefix("pipeline").lstrip(".")  # "", "lib", "lib.params"
        if package.count(".") == 1:  # from pipeline.lib.artifacts import StageError
            names = [package]
        else:  # from pipeline.lib import params, shards
            names = [f"{package}.{a.name}".lstrip(".") for a in node.names]
        for name in names:
            if name not in seen and (root / source_file(name)).is_file():
                pipeline_imports(root, name, seen)
    return seen


def graph(dvc_stages: dict[str, dict]) -> dict[str, set[str]]:
    """Stage -> stages producing something it depends on (a path, or a folder around or inside one)."""
    produced = {name: dvcyaml.outputs(s) for name, s in dvc_stages.items()}
    edges = {}
    for name, stage in dvc_stages.items():
        edges[name] = {other for dep in dvcyaml.entries(stage, "deps") for other, outs in produced.items()
                       if other != name and any(_within(dep, out) or _within(out, dep) for out in outs)}
    return edges


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


# --- the checks: each returns a one-line summary or raises Failed / Skipped -----------------

def check_params(root: Path) -> str:
    try:
        params.load(params.SECTIONS, root / params.PARAMS_FILE)
    except params.ParamsError as err:
        raise Failed(str(err)) from err
    return f"{params.PARAMS_FILE} is valid ({len(params.all_keys())} keys)"


# Paths a stage may be given that are neither deps nor outputs: scratch (training's per-epoch
# backups, for resuming; git-ignored, never DVC-tracked)
SCRATCH = ".backup/"
RECORDED = "--source"  # the images: a dep of ingest only, which records each one's hash


def cmd_path_problems(root: Path, name: str, stage: dict) -> list[str]:
    """Each ``--flag PATH`` of the stage's cmd is a declared dep or output (or a folder of them),
    and each declared one is passed: a path the stage reads but DVC does not track would not
    rerun it; one DVC tracks but the stage is not given is stale."""
    arguments = dvcyaml.arguments(stage)
    declared = [d for d in dvcyaml.entries(stage, "deps") if not d.startswith("pipeline/")] + dvcyaml.outputs(stage)
    problems = []
    if name != "ingest" and RECORDED in arguments:
        # Read only through the rows ingest recorded, each checked against its hash
        # (images.read_recorded): the manifest stands for the source, and a stage that declared it
        # as well would cost `dvc status` a scan of every image.
        source = dvcyaml.arguments(dvcyaml.stages(root)["ingest"]).get(RECORDED)
        path = arguments.pop(RECORDED)
        if path != source:
            problems.append(f"{name}: {RECORDED} {path} is not ingest's source ({source})")
        if any(_within(d, path) for d in declared):
            problems.append(f"{name}: declares the source {path} as a dep; only ingest does (the manifest's "
                            "hashes stand for it downstream, and each declaration costs `dvc status` a scan)")
    given = set(arguments.values())
    for path in sorted(given):
        if path.startswith(SCRATCH):
            ignore = root / ".gitignore"
            if f"/{SCRATCH}" not in (ignore.read_text().splitlines() if ignore.is_file() else []):
                problems.append(f"{name}: scratch folder {path} is not git-ignored (/{SCRATCH} in .gitignore)")
        elif not any(_within(d, path) for d in declared):
            problems.append(f"{name}: cmd passes {path}, which is neither a dep nor an output in dvc.yaml")
    problems += [f"{name}: dvc.yaml declares {d}, which the cmd does not pass to the stage"
                 for d in declared if not any(_within(d, p) for p in given)]
    return problems


def check_contract(root: Path) -> str:
    problems, used = [], set()
    for name, stage in dvcyaml.stages(root).items():
        problems += cmd_path_problems(root, name, stage)
        module = module_of(stage)
        reads = set(params.expand(declared_params(root, module)))
        listed = set(stage.get("params", []))
        used |= listed
        if reads - listed:
            problems.append(f"{name}: code reads {', '.join(sorted(reads - listed))} but dvc.yaml does not "
                            "list it under params (a change would not rerun the stage)")
        if listed - reads:
            problems.append(f"{name}: dvc.yaml lists {', '.join(sorted(listed - reads))} under params "
                            "but the code does not read it (a change would rerun the stage for nothing)")
        code = {source_file(m) for m in pipeline_imports(root, module)}
        deps = {d for d in dvcyaml.entries(stage, "deps") if d.startswith("pipeline/")}
        if code != deps:
            missing, extra = sorted(code - deps), sorted(deps - code)
            problems.append(f"{name}: code deps in dvc.yaml differ from the imports"
                            + (f"; add {', '.join(missing)}" if missing else "")
                            + (f"; remove {', '.join(extra)}" if extra else ""))
    unused = sorted(set(params.all_keys()) - used)
    if unused:
        problems.append(f"no stage reads {', '.join(unused)}")
    if problems:
        raise Failed("\n".join(problems))
    return "every stage lists exactly the params, code and paths it uses; every param is read"


def check_dag(root: Path) -> str:
    actual = graph(dvcyaml.stages(root))
    if actual != EXPECTED_DAG:
        lines = []
        for name in [*EXPECTED_DAG, *(n for n in actual if n not in EXPECTED_DAG)]:
            if name not in actual:
                lines.append(f"{name}: missing from dvc.yaml")
            elif name not in EXPECTED_DAG:
                lines.append(f"{name}: a stage the graph does not expect")
            elif actual[name] != EXPECTED_DAG[name]:
                lines.append(f"{name} reads from {', '.join(sorted(actual[name])) or 'no stage'}; expected "
                             f"{', '.join(sorted(EXPECTED_DAG[name])) or 'no stage'}")
        raise Failed("dvc.yaml's stage graph is not the expected one (pipeline/check.py EXPECTED_DAG):\n"
                     + "\n".join(lines))
    return f"{len(actual)} stages, dependencies as expected: {' -> '.join(actual)}"


def check_lock(root: Path) -> str:
    if not (root / "dvc.lock").exists():
        raise Failed("no dvc.lock: run `dvc repro` and commit dvc.lock")
    status = status_json(_dvc(root, "status", "--json"))
    written = [path for stage in dvcyaml.stages(root).values() for path in dvcyaml.outputs(stage)] + tracked_data(root)
    problems, missing = [], 0
    for stage, changes in status.items():
        for change in changes:
            if isinstance(change, str):  # "changed command", "always changed"
                problems.append(f"{stage}: {change}")
                continue
            for kind, files in change.items():
                for path, state in files.items():
                    if isinstance(state, dict):  # params.yaml: {key: modified|new|deleted}
                        problems += [f"{stage}: {path} {key} {how}" for key, how in state.items()]
                    elif state in MISSING and any(_within(path, o) or _within(o, path) for o in written):
                        missing += 1
                    else:
                        problems.append(f"{stage}: {kind.removeprefix('changed ')[:-1]} {path} {state}")
    if problems:
        raise Failed("dvc.lock does not match dvc.yaml, params.yaml and the code; run `dvc repro` and commit "
                     "dvc.lock:\n" + "\n".join(problems))
    return "dvc.lock matches dvc.yaml, params.yaml and the code" + (
        f" ({missing} outputs not in this workspace: `dvc pull` fetches them)" if missing else "")


def status_json(out: str) -> dict:
    """``dvc status --json``'s answer, checked for the layout check_lock reads: {stage: [a text
    like "changed command", or {"changed deps"|"changed outs": {path: state, or for params.yaml
    {key: state}}}]}. That layout is DVC's output, not a documented interface (written for DVC
    3.67): anything else stops the check with what to look at, instead of a wrong verdict."""
    status = json.loads(out or "{}")

    def state(v) -> bool:
        return isinstance(v, str) or (isinstance(v, dict) and all(isinstance(s, str) for s in v.values()))

    def change(c) -> bool:
        return isinstance(c, str) or (isinstance(c, dict) and all(
            isinstance(files, dict) and all(state(v) for v in files.values()) for files in c.values()))

    if not (isinstance(status, dict) and all(isinstance(cs, list) and all(map(change, cs)) for cs in status.values())):
        raise Failed(f"`dvc status --json` printed a layout pipeline/check.py (status_json) was not written for "
                     f"(DVC 3.67's {{stage: [changes]}}): {out.strip()[:300]}; check check_lock against this DVC")
    return status


def tracked_data(root: Path) -> list[str]:
    """The paths the committed ``.dvc`` files track (``dvc add`` / ``dvc import``), e.g. data/images."""
    listed = subprocess.run(["git", "ls-files", "*.dvc"], cwd=root, capture_output=True, text=True,
                            timeout=60).stdout
    paths = []
    for name in listed.split():
        folder = Path(name).parent
        for out in (yaml.safe_load((root / name).read_text()) or {}).get("outs", []):
            paths.append((folder / out["path"]).as_posix())
    return paths


def check_backbone(root: Path) -> str:
    try:
        p = params.load(["base"], root / params.PARAMS_FILE).base
    except params.ParamsError as err:  # reported once, by the params check
        raise Skipped(f"not run: {params.PARAMS_FILE} is invalid (see the params check)") from err
    from pipeline.lib import models  # imports TensorFlow: only this check pays for it

    names = models.backbones()
    if p.backbone not in names:
        close = [n for n in names if n.lower().startswith(p.backbone.lower()[:6])] or sorted(names)
        raise Failed(f"base.backbone {p.backbone!r} is not a keras.applications model; try "
                     + ", ".join(close))
    if p.weights not in ("imagenet", "none") and not (root / p.weights).is_file():
        raise Failed(f"base.weights {p.weights!r}: no such file (use imagenet, none or a weights file path)")
    return f"keras.applications.{p.backbone}, weights {p.weights}"


def check_source(root: Path) -> str:
    """The ingest stage's source (its --source in dvc.yaml) is tracked by DVC: a ``.dvc`` file
    beside it (``dvc add``, ``dvc import``, ``dvc import-url``) or inside it (several imports)."""
    source = dvcyaml.source(root)
    path = root / source
    inside = ([d / f for d, _, files in artifacts.walk(path) for f in files if f.endswith(".dvc")]
              if path.is_dir() else [])
    trackers = [path.with_name(path.name + ".dvc")] + sorted(inside)
    tracked = [f.relative_to(root).as_posix() for f in trackers if f.is_file()]
    if not tracked:
        raise Failed(f"{source} is not tracked by DVC, so dvc status would miss changes to it: "
                     f"`dvc add {source}` (or dvc import / dvc import-url into it)")
    if not path.exists():
        return f"{source} is tracked by {', '.join(tracked)}, not in the workspace (`make data` or `dvc pull`)"
    return f"{source} is tracked by {', '.join(tracked)}"


def check_remote(root: Path) -> str:
    default = _dvc(root, "remote", "default", check=False).strip()
    if not default or "No default remote" in default:
        raise Failed("no default DVC remote: `dvc remote add -d NAME URL` (credentials with "
                     "`dvc remote modify --local`, never committed); --skip remote where none is needed")
    url = _dvc(root, "config", f"remote.{default}.url").strip()
    scheme = urllib.parse.urlparse(url).scheme
    if scheme in REMOTE_PLUGINS:
        plugin = REMOTE_PLUGINS[scheme]
        if importlib.util.find_spec(plugin) is None:
            raise Failed(f"remote {default!r} ({url}) needs `pip install {plugin.replace('_', '-')}`")
        return f"remote {default!r}: {url} ({plugin} installed)"
    if scheme or not url:
        raise Failed(f"remote {default!r} has an unsupported URL {url!r}")
    path = Path(url) if Path(url).is_absolute() else root / ".dvc" / url  # relative to .dvc/config
    if not path.is_dir():
        raise Failed(f"remote {default!r} is the folder {path.resolve()}, which does not exist")
    return f"remote {default!r}: folder {path.resolve()}"


CHECKS: dict[str, Callable[[Path], str]] = {
    "params": check_params, "contract": check_contract, "dag": check_dag, "lock": check_lock,
    "backbone": check_backbone, "source": check_source, "remote": check_remote,
}


DVC_TIMEOUT = 600  # seconds one dvc command of a check may take


def _dvc(root: Path, *args: str, check: bool = True) -> str:
    dvc = Path(sys.executable).with_name("dvc")  # the dvc of this environment, else the PATH's
    try:  # `dvc status -c` waits on the remote: a stalled one must not hang CI
        out = subprocess.run([str(dvc) if dvc.exists() else "dvc", *args], cwd=root, capture_output=True,
                             text=True, timeout=DVC_TIMEOUT)
    except subprocess.TimeoutExpired as err:
        raise Failed(f"`dvc {' '.join(args)}` gave no answer in {DVC_TIMEOUT} s") from err
    if check and out.returncode:
        raise Failed(f"`dvc {' '.join(args)}` failed: {(out.stderr or out.stdout).strip()}")
    return out.stdout + (out.stderr if not check else "")


def run_checks(root: Path, skip: set[str] = frozenset()) -> dict[str, tuple[str, str]]:
    """Run every check not in ``skip``, in order: ``{name: (ok|FAIL|skip, message)}``."""
    results = {}
    for name, check in CHECKS.items():
        if name in skip:
            results[name] = ("skip", "--skip " + name)
            continue
        try:
            results[name] = ("ok", check(root))
        except Skipped as err:
            results[name] = ("skip", str(err))
        except Failed as err:
            results[name] = ("FAIL", errors.describe(err))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip", action="append", default=[], choices=list(CHECKS), metavar="NAME",
                        help=f"leave out a check (repeatable): {', '.join(CHECKS)}")
    args = parser.parse_args()
    results = run_checks(Path.cwd(), set(args.skip))
    for name, (status, message) in results.items():
        first, *rest = message.splitlines() or [""]
        print(f"{status:<4}  {name:<9} {first}", *(f"{'':16}{line}" for line in rest), sep="\n", flush=True)
    failed = [name for name, (status, _) in results.items() if status == "FAIL"]
    ran = sum(status != "skip" for status, _ in results.values())
    print(f"{len(failed)} of {ran} checks failed: {', '.join(failed)}" if failed else f"all {ran} checks passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
