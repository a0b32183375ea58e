"""The team's loop on real git + DVC: a bare repository as origin, a folder as the DVC remote.

A runs the pipeline and pushes; B clones, pulls, adds images and relabels one, reruns and
pushes; A pulls B's work bit for bit. A data registry feeds a project through `dvc import` /
`dvc update`, and `dvc artifacts get` fetches a registered model version.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.lib import schemas
from project import RUNNING_STAGE, Project, default_params
from shapes import make_dataset
from tiny_run import TINY

MOVED = ("data/images/square/005.png", "data/images/triangle/from-square-005.png")  # a relabelled image
ADDED = [f"data/images/circle/new-{i}.png" for i in range(3)]


def files(root: Path, *names: str) -> dict[str, bytes]:
    """Every file under the named folders or files of ``root``, by relative path."""
    out = {}
    for name in names:
        paths = [root / name] if (root / name).is_file() else sorted((root / name).rglob("*"))
        out.update({p.relative_to(root).as_posix(): p.read_bytes() for p in paths if p.is_file()})
    return out


def status(project: Project, *targets: str) -> dict:
    return json.loads(project.run("dvc", "status", "--json", *targets).stdout)


pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def team(tmp_path_factory, finished):
    """A: a copy of the finished tiny project (its first run done and committed), pushed to a bare
    origin and a folder remote. These tests share it, in order, as a team shares a repository."""
    tmp = tmp_path_factory.mktemp("team")
    origin = tmp / "origin.git"
    a = finished.copy(tmp / "a")
    assert status(a) == {}
    branch = a.run("git", "branch", "--show-current").stdout.strip()
    a.run("git", "init", "-q", "--bare", f"--initial-branch={branch}", str(origin))
    a.run("dvc", "remote", "add", "-d", "team", str(tmp / "remote"))
    a.run("git", "remote", "add", "origin", str(origin))
    a.run("git", "add", "-A")
    a.run("git", "commit", "-qm", "the team's remote")
    a.run("git", "push", "-q", "origin", "HEAD")
    a.run("dvc", "push")
    return tmp, a, origin


@pytest.fixture(scope="module")
def b_changed(team):
    """B clones and pulls, adds three circles and moves a square into triangle/, then reruns."""
    tmp, a, origin = team
    a.run("git", "clone", "-q", str(origin), str(tmp / "b"))
    b = Project.attach(tmp / "b", a.env)
    b.run("dvc", "pull")
    clean = status(b)
    new = make_dataset(tmp / "new", per_class=3, size=40, seed=7) / "circle"
    for path, image in zip(ADDED, sorted(new.iterdir())):
        shutil.copy(image, b.path / path)
    (b.path / MOVED[0]).rename(b.path / MOVED[1])
    changed = status(b)
    b.run("dvc", "add", "data/images")
    out = b.run("dvc", "repro")
    ran = RUNNING_STAGE.findall(out.stdout)
    b.logged = out.stdout + out.stderr
    b.run("git", "add", "-A")
    b.run("git", "commit", "-qm", "three more circles; a square that was a triangle")
    b.run("git", "push", "-q", "origin", "HEAD")
    b.run("dvc", "push")
    return b, clean, changed, ran


def test_b_sees_the_data_change_before_rerunning(b_changed):
    _, clean, changed, ran = b_changed
    assert clean == {}
    assert changed["ingest"] == [{"changed deps": {"data/images": "modified"}}]
    assert changed["data/images.dvc"] == [{"changed outs": {"data/images": "modified"}}]
    assert ran == ["ingest", "embed", "split", "audit", "augment", "extract_features", "train_head", "finetune",
                   "evaluate", "calibrate", "export", "summary"]  # the new images go through the whole pipeline


def test_b_computes_only_the_new_images_from_the_outputs_b_pulled(b_changed):
    """The team's loop: the per-image stages start from the outputs `dvc pull` fetched (persist: true)
    and compute the three new circles alone; the moved square keeps its content, so its work is reused."""
    b = b_changed[0]
    manifest = schemas.read_csv(b.path / "data/manifest.csv")
    assert f"{len(manifest) - 3} of {len(manifest)} images embedded by the previous run; embedding 3" in b.logged
    packed = {r["path"] for name in ("train", "val") for r in schemas.read_csv(b.path / f"data/split/{name}.csv")}
    new = packed & {path.removeprefix("data/images/") for path in ADDED}  # test images are not packed
    assert f"{len(new)} of {len(packed)} images decoded and augmented" in b.logged


def test_no_image_changed_split_when_b_added_and_moved_images(b_changed, finished):
    """The split is a seeded hash of each image's content: new images, and a relabelled one (same
    content, another folder), leave every earlier image where it was."""
    def where(project):
        return {r["sha256"]: name for name in ("train", "val", "test")
                for r in schemas.read_csv(project.path / "data" / "split" / f"{name}.csv")}
    before, after = where(finished), where(b_changed[0])
    assert len(after) == len(before) + len(ADDED)
    assert {h: after[h] for h in before} == before


def test_dvc_diff_names_exactly_the_added_and_moved_images(b_changed):
    b = b_changed[0]
    diff = json.loads(b.run("dvc", "diff", "--json", "HEAD~1", "HEAD").stdout)
    assert sorted(d["path"] for d in diff["added"] if d["path"].startswith("data/images/")) == ADDED
    assert [d for d in diff["renamed"] if d["path"]["old"].startswith("data/images/")] == [
        {"path": {"old": MOVED[0], "new": MOVED[1]}}]  # the only copy: ingest copies nothing
    assert not [d for d in diff["deleted"] if d["path"].startswith("data/images/")]


def test_dvc_metrics_diff_shows_the_count_changes(b_changed):
    b = b_changed[0]
    diff = json.loads(b.run("dvc", "metrics", "diff", "--json", "HEAD~1", "HEAD").stdout)
    ingest = {k: v["diff"] for k, v in diff["reports/ingest.json"].items() if isinstance(v.get("diff"), int)}
    assert ingest == {"kept": 3, "per_class.circle.kept": 3, "per_class.square.kept": -1,
                      "per_class.triangle.kept": 1}
    split = diff["reports/split.json"]
    assert sum(split[f"images.{s}"]["diff"] for s in ("train", "val", "test") if f"images.{s}" in split) == 3
    assert "data_version" in diff["reports/ingest.json"]  # the data version changed too


def test_a_pulls_b_s_data_model_and_metrics_bit_for_bit(team, b_changed):
    _, a, _ = team
    b = b_changed[0]
    a.run("git", "pull", "-q", "origin", "HEAD")
    a.run("dvc", "pull")
    assert status(a) == {}
    shared = ("data/images", "data/manifest.csv", "models", "reports/metrics.json", "reports/ingest.json", "dvc.lock")
    got, expected = files(a.path, *shared), files(b.path, *shared)
    assert set(got) == set(expected) and got == expected
    assert "data/images/circle/new-0.png" in got and "models/model.keras" in got


def test_registered_model_version_comes_back_with_dvc_artifacts_get(team, b_changed, tmp_path):
    _, a, origin = team
    c = Project.attach(tmp_path / "c", a.env)  # a third member, on the team's latest commit
    a.run("git", "clone", "-q", str(origin), str(c.path))
    c.run("dvc", "pull")
    for name, path in (("image-classifier", "models/model.keras"),
                       ("image-classifier-tflite-int8", "models/export/model_int8.tflite")):
        c.run("gto", "register", name, "--push")  # the git tag <name>@v0.0.1, pushed to origin
        out = tmp_path / "got" / Path(path).name
        c.run("dvc", "artifacts", "get", str(origin), name, "--rev", "v0.0.1", "-o", str(out))
        assert out.read_bytes() == (c.path / path).read_bytes(), name


def test_data_registry_import_then_update_reruns_from_ingest(tmp_path):
    registry = Project(tmp_path / "registry", default_params())  # any git + DVC repo will do
    registry.run("dvc", "remote", "add", "-d", "store", str(tmp_path / "registry-remote"))
    make_dataset(registry.path / "datasets" / "shapes", per_class=12, size=40)
    registry.run("dvc", "add", "datasets/shapes")
    registry.run("git", "add", "-A")
    registry.run("git", "commit", "-qm", "shapes v1")
    registry.run("dvc", "push")

    project = Project(tmp_path / "project", default_params(**TINY))  # data/ holds its data/ood already
    project.run("dvc", "import", str(registry.path), "datasets/shapes", "-o", "data/images")
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "data from the registry")
    assert project.repro("split") == ["ingest", "embed", "split"]
    pinned = project.run("git", "show", "HEAD:data/images.dvc").stdout
    assert "rev_lock: " in pinned and str(registry.path) in pinned

    more = make_dataset(tmp_path / "more", per_class=2, size=40, seed=9)
    for image in sorted((more / "square").iterdir()):
        shutil.copy(image, registry.path / "datasets" / "shapes" / "square" / f"v2-{image.name}")
    registry.run("dvc", "add", "datasets/shapes")
    registry.run("git", "commit", "-qam", "shapes v2: two more squares")
    registry.run("dvc", "push")

    ran = ("data/images.dvc", "ingest", "embed", "split")  # the stages run so far
    # Pinned: the registry's new commit is announced, and nothing reruns until `dvc update`.
    assert status(project, *ran) == {"data/images.dvc": [{"changed deps": {
        f"datasets/shapes ({registry.path})": "update available"}}]}
    project.run("dvc", "update", "data/images.dvc")
    head = registry.run("git", "rev-parse", "HEAD").stdout.strip()
    assert f"+    rev_lock: {head}" in project.run("git", "diff", "data/images.dvc").stdout  # the new pin
    # only ingest declares the images; embed hears of them through the manifest
    assert status(project, *ran) == {"ingest": [{"changed deps": {"data/images": "modified"}}]}
    assert project.repro("split") == ["ingest", "embed", "split"]
    report = json.loads((project.path / "reports" / "ingest.json").read_text())
    assert report["per_class"]["square"]["kept"] == 14
