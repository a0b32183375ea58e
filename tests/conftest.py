"""Shared fixtures. The project root is importable (``pipeline``) and tests/ holds helpers."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

# gto (which DVC's artifacts code imports) calls logging.config.dictConfig when imported, which
# closes every logging handler there is. absl's (TensorFlow's) closes its stream with it, and in a
# test module imported after TensorFlow that stream is pytest's capture file: the run then dies
# with "I/O operation on closed file". Importing gto first leaves it nothing to close.
import gto.log  # noqa: E402,F401


def shared_or_skip(*parts: str) -> Path:
    """A path under ../shared (the offline real assets), or skip the test saying what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"offline asset {path} not present (see ../shared/ASSETS.md); "
                    "this integration test needs the real weights and photos")
    return path


@pytest.fixture
def shapes_dir(tmp_path: Path) -> Path:
    from shapes import make_dataset
    return make_dataset(tmp_path / "shapes", per_class=8, size=40)


# --- the tiny finished project, built once per test session --------------------------------

def _watched() -> tuple[str, ...]:
    """What a test of the finished project may not change: params, lock and source, every stage's
    output in dvc.yaml, and anything else under models/ and reports/."""
    from pipeline.lib import dvcyaml

    outs = {o for stage in dvcyaml.stages(ROOT).values() for o in dvcyaml.outputs(stage)}
    return ("params.yaml", "dvc.lock", "data/images", "models", "reports",
            *sorted(o for o in outs if not o.startswith(("models/", "reports/"))))


WATCHED = _watched()


def digests(root: Path, names=WATCHED) -> dict[str, str]:
    """sha256 of every file under ``names`` (files or folders) of ``root``, by relative path."""
    import hashlib

    out = {}
    for name in names:
        for path in sorted([root / name] if (root / name).is_file() else (root / name).rglob("*")):
            if path.is_file():
                out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _build_finished(folder: Path):
    """The tiny project after one full `dvc repro`, committed: see the `finished` fixture."""
    from shapes import make_dataset
    from tiny_run import tiny_project

    data = make_dataset(folder / "shapes", per_class=40, size=40)
    (data / "circle" / "broken.png").write_bytes(b"\x89PNG not really")  # ingest skips it, with the reason
    project = tiny_project(folder / "project", data)
    ran = project.repro()
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "first run")
    return project, ran


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """The tiny project (tests/tiny_run.py) after one full `dvc repro`, committed: built once per
    session and shared by the pytest-xdist workers through a lock. Read it, never change it:
    a test that changes a project takes a copy (``finished.copy(tmp_path / "p")``, seconds).
    Its artifacts are compared at the end of the session, so a test that changed them fails."""
    import fcntl
    import json

    from project import Project

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by all workers of this session
    folder, state = root / "finished", root / "finished.json"
    with open(root / "finished.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not state.exists():
            try:
                project, ran = _build_finished(folder)
                state.write_text(json.dumps({"ran": ran, "digests": digests(project.path)}))
            except BaseException as err:
                state.write_text(json.dumps({"error": f"{type(err).__name__}: {err}"}))
                raise
    built = json.loads(state.read_text())
    if "error" in built:
        pytest.fail(f"building the finished tiny project failed (in another worker): {built['error']}")
    project = Project.attach(folder / "project", Project.environment())
    project.ran = built["ran"]
    yield project
    changed = sorted(k for k, v in digests(project.path).items() if built["digests"].get(k) != v)
    assert not changed, f"a test changed the shared finished project (take a copy instead): {changed[:10]}"


# --- order and fault injection, to show that no test depends on another -------------------

def pytest_addoption(parser):
    parser.addoption("--shuffle", metavar="SEED", type=int, default=None,
                     help="run the tests in a random order, seeded (every xdist worker draws the same)")
    parser.addoption("--inject-failure", metavar="TEXT[,TEXT...]", default=None,
                     help="fail every test whose id contains one of the TEXTs: at its first "
                          "Project.set_param (after the change is written), else after its body")


# The longest modules first, so that the two xdist workers finish together (pytest.ini turns
# off xdist's own order, most tests first, which left the pipelines for the end). test_e2e
# builds the finished project that test_e2e_changes, test_team and test_scaling copy: they come
# after test_integration and test_multilabel (its own multi-label project), which need none, so
# that no worker waits for the build. xdist hands a worker its next module when two tests of its
# current one are left, so the worker running test_integration (one test) takes test_multilabel at
# once, and the modules that copy the finished project come after.
FIRST = ("test_e2e", "test_integration", "test_multilabel", "test_e2e_changes", "test_team", "test_scaling", "test_sources",
         "test_models", "test_audit", "test_readme", "test_bad_input", "test_no_traceback", "test_distribution",
         "test_damaged", "test_logs", "test_training", "test_explain", "test_inference")


def pytest_collection_modifyitems(config, items):
    seed = config.getoption("--shuffle")
    if seed is not None:
        import random

        random.Random(seed).shuffle(items)
        return
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(FIRST)))  # stable: the rest keep their order


def _injected(item) -> bool:
    texts = (item.config.getoption("--inject-failure") or "").split(",")
    return any(text and text in item.nodeid for text in texts)


@pytest.fixture(autouse=True)
def _fail_at_the_first_change(request, monkeypatch):
    """--inject-failure: the test fails right after its first Project.set_param has written the change."""
    if _injected(request.node):
        from project import Project

        original = Project.set_param

        def set_then_fail(self, key, value):
            original(self, key, value)
            request.node.failure_injected = True
            raise AssertionError(f"injected failure, after setting {key} (--inject-failure)")

        monkeypatch.setattr(Project, "set_param", set_then_fail)
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """--inject-failure, for a test that sets no param: it fails after its body."""
    result = yield
    if _injected(item) and not getattr(item, "failure_injected", False):
        raise AssertionError("injected failure, after the test's body (--inject-failure)")
    return result
