"""The data audit against known truth: its methods on made-up embeddings and images, the stages on
a shape dataset with planted problems, and the relabel command that applies reviewed fixes."""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image, ImageFilter, ImageOps
from sklearn.datasets import load_sample_images

from conftest import ROOT, shared_or_skip
from pipeline import relabel
from pipeline.lib import audit, confidence, params, quality, schemas
from pipeline.lib.errors import StageError
from pipeline.stages import audit as audit_stage
from project import default_params
from shapes import CLASSES, draw
from test_no_traceback import ENV

DEFAULTS = SimpleNamespace(**{k: params.parse(yaml.safe_load((ROOT / "params.yaml").read_text()))[k]
                              for k in ("audit", "base")})


def clusters(per_class=50, classes=3, dim=16, seed=0):
    """Well-separated Gaussian classes: embeddings whose true labels are known."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dim)) * 4
    y = np.repeat(np.arange(classes), per_class)
    return centres[y] + rng.normal(0, 1, (len(y), dim)), y


@pytest.mark.parametrize("block_bytes", [64, 1 << 30])  # a few rows at a time, and all at once
def test_nearest_is_exact_whatever_the_block(monkeypatch, block_bytes):
    monkeypatch.setattr(audit, "BLOCK_BYTES", block_bytes)
    x = audit.normalized(np.random.default_rng(1).normal(size=(37, 8)))
    idx, sim = audit.nearest(x, x, 5, same=True)
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    assert (idx == np.argsort(-full, axis=1, kind="stable")[:, :5]).all()
    assert np.allclose(sim, np.sort(full, axis=1)[:, ::-1][:, :5])
    assert not (idx == np.arange(37)[:, None]).any()


def test_near_duplicate_groups_join_transitively_and_nothing_else():
    idx = np.array([[1], [2], [1], [0]])
    sim = np.array([[0.99], [0.95], [0.95], [0.5]])
    assert list(audit.groups(idx, sim, 0.9)) == [0, 0, 0, 3]


def wrong_labels(x, y, classes=3):
    x = audit.normalized(x)
    idx, sim = audit.nearest(x, x, 10, same=True)
    probs = audit.label_probabilities(x, y, idx, sim, classes, folds=5, seed=0)
    return audit.wrong_label_probability(confidence.recalibrated(probs, y), y)


def test_swapped_labels_are_flagged_with_their_probability_and_clean_ones_are_not():
    x, truth = clusters()
    y = truth.copy()
    swapped = [3, 60, 120, 130]
    y[swapped] = (y[swapped] + 1) % 3
    wrong, posterior, noise = wrong_labels(x, y)
    assert sorted(np.flatnonzero(wrong >= 0.5)) == swapped
    assert (posterior[swapped].argmax(axis=1) == truth[swapped]).all()  # what relabel would suggest
    assert 0.5 * len(swapped) <= wrong.sum() <= 2 * len(swapped)  # the estimated count of wrong labels
    assert np.allclose(noise.sum(axis=1), 1) and (np.diag(noise) > 0.9).all()
    clean_wrong, _, _ = wrong_labels(x, truth)
    assert clean_wrong.max() < 0.5 and clean_wrong.sum() < 1


def test_a_swap_into_a_look_alike_class_is_less_surely_wrong_than_one_into_a_distinct_class():
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 1, (3, 16)) * 4
    centres[1] = centres[0] + rng.normal(0, 1, 16) * 0.8  # class 1 looks like class 0
    truth = np.repeat(np.arange(3), 60)
    x = centres[truth] + rng.normal(0, 1, (len(truth), 16))
    y = truth.copy()
    y[[5, 6]] = [1, 2]  # two images of class 0: one labelled as its look-alike, one as the distinct class
    wrong, _, _ = wrong_labels(x, y)
    assert wrong[6] >= 0.5 and wrong[6] > wrong[5]


def test_an_image_far_from_every_other_is_an_outlier():
    x, _ = clusters()
    x = audit.normalized(np.vstack([x, -x.mean(axis=0, keepdims=True)]))  # opposite to every cluster
    idx, sim = audit.nearest(x, x, 10, same=True)
    found = [f["i"] for f in audit_stage.outliers(idx, sim, DEFAULTS)]
    assert found[0] == len(x) - 1 and len(found) <= 3  # the far one first; a Gaussian's tail may follow


def measured(made: dict) -> list[dict]:
    return [{"path": name, "width": im.width, "height": im.height, **quality.measure(im)} for name, im in made.items()]


def test_each_bad_frame_is_flagged_for_its_issue_worst_first_and_good_ones_are_not():
    """Among 20 good images, of sizes 200-400 px: one of each problem, a half-size copy of a good
    one (not low resolution: 150 px is above half the median) and two blurs of different strength."""
    rng = np.random.default_rng(0)
    good = {f"good{i}": draw(list(CLASSES)[i % 3], CLASSES[list(CLASSES)[i % 3]], 200 + 10 * i, rng)
            for i in range(20)}
    base = good["good10"]
    made = {**good, "half": base.resize((base.width // 2, base.height // 2)),
            "too dark": Image.fromarray((np.asarray(base) * 0.1).astype(np.uint8)),
            "overexposed": Image.fromarray((np.asarray(base) * 0.1 + 230).astype(np.uint8)),
            "blurred": base.filter(ImageFilter.GaussianBlur(10)),
            "blurred a little": base.filter(ImageFilter.GaussianBlur(4)),
            "low information": Image.new("RGB", (300, 300), "grey"),
            "extreme aspect ratio": base.crop((0, 0, 300, 70)), "low resolution": base.resize((40, 40))}
    rows = measured(made)
    found = audit_stage.quality(rows, DEFAULTS)
    flagged = {(rows[f["i"]]["path"], f["issue"]) for f in found}
    expected = {(name, name) for name in made if not name.startswith(("good", "half", "blurred a"))}
    assert expected <= flagged
    assert {name for name, _ in flagged} <= {name for name, _ in expected} | {"blurred a little"}
    assert ("low resolution", "blurred") not in flagged  # an upscaled small original is not called blurred
    assert [f["severity"] for f in found] == sorted((f["severity"] for f in found), reverse=True)
    blurs = {rows[f["i"]]["path"]: f["severity"] for f in found if f["issue"] == "blurred"}
    assert blurs["blurred"] > blurs.get("blurred a little", 0)
    assert all(0 < f["severity"] <= 1 for f in found)


@pytest.mark.parametrize("factor", [0.25, 0.5, 2.0])  # down to 150 px: above quality.QUALITY_SIDE
def test_quality_does_not_change_when_an_image_is_resized(factor):
    rng = np.random.default_rng(1)
    for im in (draw("circle", CLASSES["circle"], 600, rng), Image.fromarray(load_sample_images().images[1])):
        resized = im.resize((round(im.width * factor), round(im.height * factor)), Image.Resampling.LANCZOS)
        before, after = quality.measure(im), quality.measure(resized)
        assert abs(before["blur"] - after["blur"]) < 0.05
        assert abs(before["brightness"] - after["brightness"]) < 0.02


# --- the stages on real photos with planted problems ----------------------------------------

CLASSES_SEEN = {"hat": (40, 8), "pants": (40, 8), "shoes": (40, 8)}  # classes unlike each other: train, test


def planted_photos(root: Path, clothing: Path) -> dict:
    """A few clothing photos (the source's own split) with three swapped labels, a resized copy of
    a training photo in test, a black image, a blurred one and one from another domain."""
    for label, counts in CLASSES_SEEN.items():
        photos = sorted((clothing / "train" / label).iterdir())
        for split, (start, n) in zip(("train", "test"), ((0, counts[0]), (counts[0], counts[1]))):
            (root / split / label).mkdir(parents=True)
            for photo in photos[start:start + n]:
                shutil.copyfile(photo, root / split / label / photo.name)
    swapped = []
    for kind, into in [("hat", "pants"), ("pants", "shoes"), ("shoes", "hat")]:
        swapped.append((sorted((root / "train" / kind).iterdir())[0], into))  # all chosen before any moves
    for photo, into in swapped:
        photo.rename(root / "train" / into / photo.name)
    swapped = [f"train/{into}/{photo.name}" for photo, into in swapped]
    original = sorted((root / "train" / "hat").iterdir())[1]
    with Image.open(original) as im:
        im.resize((im.width // 2, im.height // 2)).save(root / "test" / "hat" / "twin.jpg", quality=80)
        blurred = im.filter(ImageFilter.GaussianBlur(8))
    odd = {"train/pants/black.jpg": Image.new("RGB", (300, 400), "black"), "train/shoes/blurred.jpg": blurred,
           "train/hat/foreign.jpg": Image.fromarray(load_sample_images().images[0])}  # a temple, not clothing
    for path, im in odd.items():
        im.save(root / path)
    return {"swapped": swapped, "twin": ("test/hat/twin.jpg", f"train/hat/{original.name}"), "odd": set(odd)}


def run(cwd: Path, stage: str, env: dict) -> None:
    cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["cmd"]
    out = subprocess.run(shlex.split(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{stage}: {out.stderr[-2000:]}"


def report(cwd: Path, kind: str) -> list[dict]:
    return schemas.read_csv(cwd / "reports" / "audit" / f"{kind}.csv")


@pytest.mark.integration
def test_the_audit_finds_what_was_planted_and_the_split_keeps_twins_together(tmp_path):
    """Real photos and ImageNet weights (from ../shared), for which the default thresholds are set."""
    keras_home = tmp_path / "keras-home" / "models"
    keras_home.mkdir(parents=True)
    for f in shared_or_skip("keras-cache", "models").iterdir():
        (keras_home / f.name).symlink_to(f)
    env = {**ENV, "KERAS_HOME": str(keras_home.parent)}
    planted = planted_photos(tmp_path / "data" / "images", shared_or_skip("datasets", "clothing-dataset-small"))
    # outlier_z low enough to list the top of the ranking: on 160 images a robust z-score is noisy
    p = default_params(split={"group_near_duplicates": False}, audit={"outlier_z": 2.0})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")  # the outputs a rerun of a stage may replace
    for stage in ("ingest", "embed", "split", "audit"):
        run(tmp_path, stage, env)
    flagged = [r["file"] for r in report(tmp_path, "label_issues")]
    assert sorted(flagged) == sorted(planted["swapped"])  # and nothing else
    issues = report(tmp_path, "label_issues")
    assert all(float(r["probability"]) >= 0.5 and r["suggested"] != r["label"] for r in issues)
    assert [float(r["probability"]) for r in issues] == sorted((float(r["probability"]) for r in issues), reverse=True)
    pairs = {(frozenset((r["file"], r["twin"])), r["issue"]) for r in report(tmp_path, "near_duplicates")}
    assert (frozenset(planted["twin"]), "across splits") in pairs
    quality = {(r["file"], r["issue"]) for r in report(tmp_path, "quality")}
    assert {("train/pants/black.jpg", "too dark"), ("train/shoes/blurred.jpg", "blurred")} <= quality
    assert {f for f, _ in quality} <= planted["odd"]
    assert "train/hat/foreign.jpg" in [r["file"] for r in report(tmp_path, "outliers")][:3]
    metrics = json.loads((tmp_path / "reports" / "audit.json").read_text())
    assert metrics["leaked"]["test"] >= 1 and metrics["leakage_rate"] > 0
    for name in audit_stage.ISSUES:
        assert (tmp_path / "reports" / "audit" / f"{name}.png").stat().st_size > 1000

    p["split"]["group_near_duplicates"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    run(tmp_path, "split", env)
    run(tmp_path, "audit", env)
    where = {r["path"]: s for s in schemas.SPLITS for r in schemas.read_csv(tmp_path / "data" / "split" / f"{s}.csv")}
    assert where[planted["twin"][0]] == where[planted["twin"][1]] == "test"  # the evaluation side wins
    assert json.loads((tmp_path / "reports" / "audit.json").read_text())["leakage_rate"] == 0

    # Mirrored copies of three training photos arrive in test/: each joins its original in train,
    # which stays put (without the last split's memory, the evaluation side would take the original).
    mirrors = {}
    for label in ("hat", "pants", "shoes"):
        original = sorted(p for p in where if p.startswith(f"train/{label}/") and where[p] == "train")[-1]
        with Image.open(tmp_path / "data" / "images" / original) as im:
            ImageOps.mirror(im).save(tmp_path / "data" / "images" / "test" / label / "mirror.jpg", quality=95)
        mirrors[f"test/{label}/mirror.jpg"] = original
    for stage in ("ingest", "embed", "split"):
        run(tmp_path, stage, env)
    after = {r["path"]: s for s in schemas.SPLITS for r in schemas.read_csv(tmp_path / "data" / "split" / f"{s}.csv")}
    assert {p: after[p] for p in where} == where
    assert all(after[mirror] == "train" for mirror in mirrors)
    report_ = json.loads((tmp_path / "reports" / "split.json").read_text())
    assert report_["moved"] == [] and report_["kept_from_the_last_split"] == len(where)


# --- relabel ---------------------------------------------------------------------------------

@pytest.fixture
def reviewed(tmp_path):
    folder = tmp_path / "data" / "images"
    for path in ("train/cat/a.jpg", "train/cat/b.jpg", "train/dog/c.jpg", "test/dog/d.jpg"):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(path.encode())
    (folder / "train" / "dog" / "b.jpg").write_bytes(b"another b")
    rows = [{"file": "train/cat/a.jpg", "label": "cat", "suggested": "dog"},
            {"file": "train/cat/b.jpg", "label": "cat", "suggested": "dog"},
            {"file": "test/dog/d.jpg", "label": "dog", "suggested": ""},
            {"file": "../outside.jpg", "label": "cat", "suggested": "dog"}]
    schemas.write_csv(tmp_path / "issues.csv", rows, ["file", "label", "suggested"])
    (tmp_path / "outside.jpg").write_bytes(b"not the data's")
    return tmp_path


def test_relabel_moves_exactly_what_was_accepted_and_rejected(reviewed, capsys):
    args = [str(reviewed / "issues.csv"), "--images", str(reviewed / "data" / "images")]
    assert relabel.main(args + ["--accept", "train/cat/a.jpg", "--reject", "test/dog/d.jpg"]) == 0
    images_dir = reviewed / "data" / "images"
    assert sorted(p.relative_to(images_dir).as_posix() for p in images_dir.rglob("*.jpg")) == \
        ["train/cat/b.jpg", "train/dog/a.jpg", "train/dog/b.jpg", "train/dog/c.jpg"]
    assert (reviewed / "data" / "quarantine" / "test" / "dog" / "d.jpg").read_bytes() == b"test/dog/d.jpg"
    assert "2 image(s) moved" in capsys.readouterr().out


@pytest.mark.parametrize("action, message", [
    (["--accept", "../outside.jpg"], "outside"),
    (["--reject", "../outside.jpg"], "outside"),
    (["--accept", "train/cat/b.jpg"], "already exists"),  # train/dog/b.jpg is another image
    (["--accept", "test/dog/d.jpg"], "suggests no label"),
    (["--accept", "train/dog/c.jpg"], "not a row of the CSV"),
    (["--reject", "train/cat/a.jpg", "--quarantine", "data/images/q"], "inside"),
])
def test_relabel_refuses_and_moves_nothing(reviewed, monkeypatch, action, message):
    monkeypatch.chdir(reviewed)
    before = sorted(p for p in reviewed.rglob("*") if p.is_file())
    with pytest.raises(StageError, match=message):
        relabel.main(["issues.csv", "--images", "data/images", "--accept", "train/cat/a.jpg", *action])
    assert sorted(p for p in reviewed.rglob("*") if p.is_file()) == before


@pytest.mark.e2e
def test_after_relabel_dvc_diff_shows_exactly_the_moves(reviewed):
    def sh(*cmd):
        return subprocess.run(cmd, cwd=reviewed, env=ENV, capture_output=True, text=True, check=True).stdout
    for name in ("dvc.yaml", "params.yaml"):  # relabel finds the images folder in dvc.yaml, which reads params
        shutil.copy(ROOT / name, reviewed / name)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.com"],
                ["git", "config", "user.name", "t"], ["dvc", "init", "-q"], ["dvc", "add", "-q", "data/images"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "data"]):
        sh(*cmd)
    sh("python", "-m", "pipeline", "relabel", "issues.csv", "--accept", "train/cat/a.jpg", "--reject", "test/dog/d.jpg")
    sh("dvc", "add", "-q", "data/images")
    diff = {kind: [d["path"] for d in entries if "images" in str(d["path"])]  # not the pipeline's outputs
            for kind, entries in json.loads(sh("dvc", "diff", "--json")).items()}
    assert diff["renamed"] == [{"old": "data/images/train/cat/a.jpg", "new": "data/images/train/dog/a.jpg"}]
    assert diff["deleted"] == ["data/images/test/dog/d.jpg"]
    assert not diff["added"] and diff["modified"] == ["data/images/"]
