"""A careful user and a hostile teammate: no command writes over what it did not create, no move
leaves the data, every file a command reads is checked as input, no folder walk recurses, and
degenerate data says so. Each case of issue 32, run where it needs no pipeline."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import ROOT
from pipeline import check, predict, rank, relabel
from pipeline.lib import artifacts, audit, confidence, images, inputs, quality, schemas, sources
from pipeline.lib.errors import StageError

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The project's dvc.yaml and params.yaml, a few class folders in data/images, a dummy model,
    as the working directory."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    for label in ("circle", "square"):
        (tmp_path / "data/images" / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 90, 0, 0)).save(tmp_path / f"data/images/{label}/{i}.png")
    (tmp_path / "models").mkdir()
    (tmp_path / "models/model.keras").write_bytes(b"the model: not to be overwritten")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def everything(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- 1. nothing a command writes destroys what it did not create ------------------------------

@pytest.mark.parametrize("where, message", [
    ("some_folder", "a folder is there; name a file"),
    (".", "that holds "),
    ("models/model.keras", "that is models/model.keras, and this command reads it"),
    ("data/images/circle/0.png", "that is inside data/images"),
    ("data/images/circle/new.csv", "that is inside data/images, and the pipeline does not create it"),
    ("notes.txt", "already there and not a CSV that predict wrote"),
])
@pytest.mark.parametrize("command", ["predict", "rank"])
def test_predict_and_rank_refuse_an_output_before_any_work(project, capsys, command, where, message):
    (project / "some_folder").mkdir()
    (project / "some_folder/keep.txt").write_text("mine")
    (project / "notes.txt").write_text("mine too")
    before = everything(project)
    flag = "--csv" if command == "predict" else "--out"
    main = predict.main if command == "predict" else rank.main
    with pytest.raises(SystemExit) as exit_:
        main(["models/model.keras", "data/images", flag, where])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message.replace("predict", command) in err and "Traceback" not in err, err
    assert f"{flag} {where}" in err
    assert everything(project) == before  # not a byte changed: refused before the model was even read


def test_a_csv_the_command_wrote_before_is_replaced_and_nothing_else(project):
    (project / "old.csv").write_bytes(b"file,label_1,probability_1,unknown,error\r\nx.png,a,0.5,,\r\n")
    artifacts.check_output("old.csv", folder=False, kind=predict.CSV, flag="--csv")  # its own: fine
    (project / "ranked.csv").write_bytes(b"rank,file,label,probability,uncertainty\r\n1,x.png,a,0.5,0.5\r\n")
    artifacts.check_output("ranked.csv", folder=False, kind=rank.CSV, flag="--out")
    with pytest.raises(StageError, match="not a CSV that rank wrote"):
        artifacts.check_output("old.csv", folder=False, kind=rank.CSV, flag="--out")
    with pytest.raises(StageError, match="control characters"):
        artifacts.check_output("a\nb.csv", folder=False, kind=rank.CSV)


def test_explain_writes_only_into_a_folder_of_its_own(project, capsys):
    (project / "why").mkdir()
    (project / "why/0.png.gradcam.png").write_text("not a PNG: someone's notes")
    for folder, message in (("data/images/why", "inside data/images"), ("models/model.keras", "that is models/model.keras"),
                            ("notes.txt", "a file is there, not a folder")):
        (project / "notes.txt").write_text("x")
        with pytest.raises(SystemExit):
            predict.main(["models/model.keras", "data/images", "--explain", folder])
        assert message in capsys.readouterr().err
    artifacts.check_output("why", folder=True, replaces=False, flag="--explain")  # an existing folder: fine
    with pytest.raises(StageError, match="not a PNG image"):  # but a file in it that is not a heat map is kept
        with artifacts.atomic_file(project / "why/0.png.gradcam.png", artifacts.PNG):
            pass
    assert (project / "why/0.png.gradcam.png").read_text() == "not a PNG: someone's notes"


def test_the_atomic_writer_never_deletes_a_folder_it_did_not_create(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs/precious.txt").write_text("keep")
    for writer in (artifacts.atomic_dir, artifacts.atomic_file):
        with pytest.raises(StageError, match="theirs"):
            with writer(tmp_path / "theirs"):
                raise AssertionError("the body must not run")
    (tmp_path / "a.txt").write_text("a file")
    with pytest.raises(StageError, match="a file is there, not a folder"):
        with artifacts.atomic_dir(tmp_path / "a.txt"):
            pass
    assert (tmp_path / "theirs/precious.txt").read_text() == "keep" and (tmp_path / "a.txt").read_text() == "a file"


def stage_outputs() -> list[tuple[str, str, str]]:
    """(stage, flag, path) of each output argument in dvc.yaml's commands: a path the stage declares
    (outs, metrics, plots), or a folder that holds one."""
    found = []
    for name, stage in DVC_YAML["stages"].items():
        words = shlex.split(stage["cmd"])
        outs = [Path(next(iter(o)) if isinstance(o, dict) else o)
                for kind in ("outs", "metrics", "plots") for o in stage.get(kind, [])]
        for flag, value in zip(words, words[1:]):
            if flag.startswith("--") and any(Path(value) == o or Path(value) in o.parents for o in outs):
                found.append((name, flag, value))
    return found


def test_every_stage_output_is_found():
    assert len({s for s, _, _ in stage_outputs()}) == len(DVC_YAML["stages"])  # each stage has one at least


@pytest.mark.parametrize("stage, flag, path", stage_outputs())
def test_every_stage_refuses_an_output_over_the_data_or_its_inputs(project, monkeypatch, stage, flag, path):
    """Each stage's main(), with one output pointed at the images (or at the stage's own first input):
    one StageError from cli.start, before the stage reads anything."""
    import importlib
    import signal

    monkeypatch.setattr(artifacts, "_STAGE", None)  # start() sets it (and SIGTERM's handler): both restored after
    handler = signal.getsignal(signal.SIGTERM)
    restore_sigterm = lambda: signal.signal(signal.SIGTERM, handler)  # noqa: E731
    words = shlex.split(DVC_YAML["stages"][stage]["cmd"])[4:]  # after python -m pipeline <stage>
    module = importlib.import_module(f"pipeline.stages.{stage}")
    outputs = {f for s, f, _ in stage_outputs() if s == stage}
    first_input = next(v for f, v in zip(words, words[1:]) if f.startswith("--") and f not in outputs)
    for target, message in (("data/images", "data/images"), (first_input, "and this command reads it")):
        argv = [target if previous == flag else word for previous, word in zip([""] + words, words)]
        monkeypatch.setattr(sys, "argv", [f"python -m pipeline {stage}", *argv])
        before = everything(project)
        try:
            with pytest.raises(StageError, match=f"{flag} {target}: that (is|holds) .*{message}"):
                module.main()
        finally:
            restore_sigterm()
        assert everything(project) == before


# --- 2. every move stays inside the data ------------------------------------------------------

@pytest.fixture
def audited(tmp_path, monkeypatch):
    """data/images with train/{cat,dog}, a link farm outside, and an audit CSV with hostile rows."""
    folder = tmp_path / "data/images"
    for path in ("train/cat/a.jpg", "train/cat/b.jpg", "train/dog/c.jpg"):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(path.encode())
    (tmp_path / "elsewhere").mkdir()
    (folder / "train/linked").symlink_to(tmp_path / "elsewhere")  # a class folder that is a link
    rows = [{"file": "train/cat/a.jpg", "label": "cat", "suggested": "dog"},
            {"file": "train/cat/b.jpg", "label": "cat", "suggested": "../../../escaped"}]
    schemas.write_csv(tmp_path / "issues.csv", rows, ["file", "label", "suggested"])
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("suggested, message", [
    ("../../../escaped", "holds a path separator"),
    ("/tmp/escaped", "holds a path separator"),
    (".", r"is \. or \.\."),
    ("..", r"is \. or \.\."),
    ("linked", "resolves to .*elsewhere, not a class folder"),
    ("bird", "not one of the data's classes .*--new-class bird"),
    ("do\ng", "control characters"),
])
def test_relabel_refuses_every_destination_outside_the_classes(audited, suggested, message):
    schemas.write_csv(audited / "issues.csv", [{"file": "train/cat/b.jpg", "label": "cat", "suggested": suggested}],
                     ["file", "label", "suggested"])
    before = everything(audited)
    with pytest.raises(StageError, match=message):
        relabel.main(["issues.csv", "--images", "data/images", "--accept", "train/cat/b.jpg"])
    assert everything(audited) == before and not (audited / "escaped").exists()


def test_relabel_accepts_a_new_class_only_when_named(audited):
    schemas.write_csv(audited / "issues.csv", [{"file": "train/cat/b.jpg", "label": "cat", "suggested": "bird"}],
                     ["file", "label", "suggested"])
    assert relabel.main(["issues.csv", "--images", "data/images", "--accept-all", "--new-class", "bird"]) == 0
    assert (audited / "data/images/train/bird/b.jpg").read_bytes() == b"train/cat/b.jpg"
    with pytest.raises(StageError, match="--new-class 'a/b' holds a path separator"):
        relabel.main(["issues.csv", "--images", "data/images", "--accept-all", "--new-class", "a/b"])


@pytest.mark.parametrize("file, message", [
    ("train/cat/a\0.jpg", "control characters"),
    ("/etc/passwd", "absolute path"),
    ("train/linked/x.jpg", "outside data/images's class folders"),
])
def test_relabel_refuses_hostile_file_names_with_one_line(audited, file, message):
    (audited / "elsewhere/x.jpg").write_bytes(b"outside")
    schemas.write_csv(audited / "issues.csv", [{"file": file, "label": "cat", "suggested": "dog"}],
                     ["file", "label", "suggested"])
    before = everything(audited)
    with pytest.raises(StageError, match=message):
        relabel.main(["issues.csv", "--images", "data/images", "--accept-all"])
    assert everything(audited) == before


def test_a_rejected_image_stays_inside_the_quarantine(audited):
    (audited / "data/quarantine/train").mkdir(parents=True)
    (audited / "data/quarantine/train/cat").symlink_to(audited / "elsewhere")  # a link inside the quarantine
    with pytest.raises(StageError, match="place in the quarantine resolves to .*elsewhere"):
        relabel.main(["issues.csv", "--images", "data/images", "--reject", "train/cat/a.jpg"])
    assert (audited / "data/images/train/cat/a.jpg").exists()


# --- 3. every file a command reads is checked as input ---------------------------------------

GOOD = {"temperature": 1.5, "temperature_in_model": False, "unknown_score": "probability", "unknown_threshold": 0.4}


@pytest.mark.parametrize("key, value, message", [
    ("temperature", -1, "'-1'; it must be a finite number above 0"),
    ("temperature", 0, "a finite number above 0"),
    ("temperature", "nan", "a finite number above 0"),
    ("temperature", True, "a finite number above 0"),
    ("unknown_threshold", 7, "'7'; it must be a number from 0 to 1"),
    ("unknown_threshold", "nan", "a number from 0 to 1"),
    ("unknown_threshold", None, "a number from 0 to 1"),
    ("temperature_in_model", "yes", "true or false"),
    ("unknown_score", "energy", "'probability'"),
])
def test_a_calibration_file_is_checked_before_it_is_applied(tmp_path, key, value, message):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({**GOOD, key: value}))
    with pytest.raises(StageError, match=f"calibration.json is damaged \\({key} is .*{message}"):
        confidence.read_calibration(path)
    path.write_text(json.dumps(GOOD).replace("1.5", "NaN"))  # Python's json reads a bare NaN
    with pytest.raises(StageError, match="temperature is 'nan'"):
        confidence.read_calibration(path)
    path.write_text(json.dumps(GOOD))
    assert confidence.read_calibration(path) == GOOD


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_embeddings_are_named_with_the_stage_that_writes_them(project, bad):
    folder = project / "data/embeddings"
    folder.mkdir(parents=True)
    rows = [{"path": f"{i}.png", "label": "a", "split": "", "sha256": str(i), "bytes": "1", "width": "8", "height": "8",
             "brightness": "0.5", "contrast": "0.1", "blur": "0.1", "entropy": "1"} for i in range(5)]
    schemas.write_csv(folder / "images.csv", rows, schemas.MANIFEST_FIELDS + quality.QUALITY_FIELDS)
    x = np.ones((5, 4), np.float32)
    x[3, 1] = bad
    np.save(folder / "features.npy", x)
    with pytest.raises(StageError, match=r"features.npy is damaged \(row 3 holds NaN or infinity\): rerun "
                                         r"`dvc repro -f -s embed`"):
        audit.read_embeddings(folder, rows)


def test_non_finite_features_are_named_with_the_stage_that_writes_them(project):
    folder = project / "data/features"
    folder.mkdir(parents=True)
    x = np.zeros((3, 2), np.float32)
    x[2, 0] = np.nan
    np.save(folder / "train_x.npy", x)
    np.save(folder / "train_y.npy", np.zeros(3, np.int64))
    with pytest.raises(StageError, match=r"train_x.npy is damaged \(row 2 .*-s extract_features"):
        schemas.read_features(folder, "train", 2)


def labels_csv(tmp_path: Path, text: str, **columns) -> tuple[list[dict], list[dict]]:
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(root / name)
    (root / "labels.csv").write_text(text, newline="")
    p = SimpleNamespace(labels_csv="labels.csv", image_dir=None, csv_image_column="image", csv_label_column="label",
                        csv_split_column=None, label_separator="|", csv_label_columns=[], max_unpacked_mb=10,
                        max_expansion_ratio=10)
    p.__dict__.update(columns)
    return sources.open_source(str(root), p)[2:]


def test_a_labels_csv_with_a_duplicated_column_nul_bytes_or_backslashes_says_so(tmp_path):
    with pytest.raises(StageError, match="names the column 'label' 2 times"):
        labels_csv(tmp_path, "image,label,label\na.png,x,y\nb.png,y,x\n")
    files, skipped = labels_csv(tmp_path, "image,label\na\0.png,x\nb.png,y\n")
    assert [f["path"] for f in files] == ["b.png"]
    assert {"path": "labels.csv:2", "label": "x", "reason": "path has control characters",
            "detail": "'a\\x00.png'"} in skipped
    (tmp_path / "images/sub").mkdir()
    (tmp_path / "images/a.png").rename(tmp_path / "images/sub/a.png")
    _, skipped = labels_csv(tmp_path, "image,label\nsub\\a.png,x\nb.png,y\n")
    assert any(s["path"] == "sub\\a.png" and "its path has \\ in it: write / between folders" in s["reason"]
               for s in skipped)


def test_ingest_says_why_no_class_was_found(tmp_path):
    (tmp_path / "images/circle").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"images/circle/{i}.png")
    (tmp_path / "images/labels.csv").write_text("image,label\n" + "".join(
        f"circle\\{i}.png,{'ab'[i % 2]}\n" for i in range(3)))
    (tmp_path / "project").mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / "project" / name)
    params = (tmp_path / "project/params.yaml").read_text().replace("labels_csv: null", "labels_csv: labels.csv")
    (tmp_path / "project/params.yaml").write_text(params)
    out = subprocess.run([sys.executable, "-m", "pipeline", "ingest", "--source", str(tmp_path / "images"),
                          "--manifest", "m.csv", "--report", "r.json"], cwd=tmp_path / "project",
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and "found 0 class(es)" in last and "3 listed in the CSV but not found, and its " \
        "path has \\ in it" in last, out.stderr


# --- 4. no recursion on a user's folder ----------------------------------------------------------

@pytest.fixture
def deep(tmp_path):
    """A folder 1,100 levels deep with an image at its bottom and one near its top."""
    root = bottom = tmp_path / "deep"
    root.mkdir()
    for _ in range(1100):  # one level at a time: Path.mkdir(parents=True) recurses too
        bottom = bottom / "d"
        bottom.mkdir()
    Image.new("RGB", (8, 8)).save(bottom / "x.png")
    Image.new("RGB", (8, 8)).save(root / "d" / "top.png")
    yield root
    (bottom / "x.png").unlink()  # bottom up, one level at a time: pytest's own clean-up (rmtree) recurses
    (root / "d" / "top.png").unlink()
    while bottom != root:
        bottom.rmdir()
        bottom = bottom.parent


def test_no_walk_of_a_deep_folder_recurses(deep, capsys, tmp_path):
    files, unmatched = inputs.expand([str(deep)])
    assert [f.name for f in files] == ["top.png"] and not unmatched
    assert f"folder(s) nested deeper than {artifacts.MAX_DEPTH} levels not read" in capsys.readouterr().err
    found: list[Path] = []
    assert [f.name for f in images.image_files(deep, found)] == ["top.png"] and len(found) == 1  # calibrate's
    assert sources.walk_files(deep) == [deep / "d" / "top.png"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data/images").symlink_to(deep)
    (tmp_path / "data/images.dvc").write_text("outs:\n- path: images\n")
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    assert check.check_source(tmp_path) == "data/images is tracked by data/images.dvc"


def test_a_deep_glob_is_one_line(deep):
    with pytest.raises(StageError, match="nested too deep for a \\*\\* pattern"):
        inputs.expand([str(deep / "**" / "*.png")])


# --- 6. degenerate data says so ----------------------------------------------------------------

def test_split_says_no_class_is_left_after_the_small_class_rule(project):
    rows = [{"path": f"c{c}/{i}.png", "label": f"c{c}", "split": "", "sha256": f"{c:04d}{i}", "bytes": "1",
             "width": "8", "height": "8"} for c in range(500) for i in range(2)]
    schemas.write_csv(project / "data/manifest.csv", rows, schemas.MANIFEST_FIELDS)
    params = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(params.replace("min_images_per_class: 10", "min_images_per_class: 3"))
    cmd = shlex.split(DVC_YAML["stages"]["split"]["cmd"])
    out = subprocess.run([sys.executable, *cmd[1:]], cwd=project, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "0 class(es) left after split.drop_labels / merge_labels / min_images_per_class=3" in out.stderr


def test_an_ood_set_of_training_images_is_flagged():
    """Injected truth: the "other things" are copies of training images, on which the model is surer
    than on test images; AUROC falls below chance and calibrate's check fires."""
    rng = np.random.default_rng(0)
    test_logits = rng.normal(size=(200, 5)) + np.eye(5)[rng.integers(0, 5, 200)] * 3
    train_copies = rng.normal(size=(100, 5)) + np.eye(5)[rng.integers(0, 5, 100)] * 6  # fitted: surer
    ood = confidence.separation(confidence.scores(test_logits, 1.0)["probability"],
                                confidence.scores(train_copies, 1.0)["probability"])
    assert ood["auroc"] < 0.5
    assert confidence.looks_like_training(ood["auroc"])
    real_ood = rng.normal(size=(100, 5))  # no class stands out
    assert not confidence.looks_like_training(confidence.separation(
        confidence.scores(test_logits, 1.0)["probability"], confidence.scores(real_ood, 1.0)["probability"])["auroc"])


def test_a_rerun_of_lr_find_replaces_its_own_results_only(tmp_path, monkeypatch):
    from pipeline import lr_find

    monkeypatch.chdir(tmp_path)
    artifacts.write_json(tmp_path / "lr_find_head.json", {"suggested_learning_rate": 0.1}, lr_find.RESULT)
    (tmp_path / "notes.json").write_text('{"mine": 1}\n')
    monkeypatch.setattr(artifacts, "_WRITTEN", set())  # a new process: only the file's kind vouches for it
    artifacts.write_json(tmp_path / "lr_find_head.json", {"suggested_learning_rate": 0.2}, lr_find.RESULT)
    assert json.loads((tmp_path / "lr_find_head.json").read_text()) == {"suggested_learning_rate": 0.2}
    with pytest.raises(StageError, match="already there and not an lr_find result"):
        artifacts.write_json(tmp_path / "notes.json", {"suggested_learning_rate": 0.2}, lr_find.RESULT)
    assert (tmp_path / "notes.json").read_text() == '{"mine": 1}\n'


# --- fuzz: the new readers take any bytes and answer with a result or one StageError ---------

def fuzz_text(rng: np.random.Generator, alphabet: str = "ab./\\\0\n\r,\"' é画-_~$") -> str:
    return "".join(rng.choice(list(alphabet), size=int(rng.integers(0, 12))))


def test_fuzzed_calibration_files_are_applied_only_when_sound(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no dvc.yaml to look the file's stage up in, 400 times
    rng = np.random.default_rng(7)
    values = [-1, 0, 0.5, 1, 2, 1e308, -1e-300, True, False, None, "nan", "0.4", [], {}, float("nan"), float("inf")]
    path = tmp_path / "calibration.json"
    for i in range(400):
        data = {key: values[rng.integers(len(values))] for key in GOOD if rng.random() < 0.9}
        text = json.dumps(data) if i % 5 else os.urandom(int(rng.integers(0, 40))).decode("latin-1")
        path.write_text(text, encoding="utf-8" if i % 5 else "latin-1")
        try:
            found = confidence.read_calibration(path)
        except StageError as err:
            assert "calibration.json is damaged" in str(err)
            continue
        assert 0 < found["temperature"] < float("inf") and 0 <= found["unknown_threshold"] <= 1
        assert isinstance(found["temperature_in_model"], bool)


def test_fuzzed_audit_rows_never_move_a_file_out_of_the_class_folders(audited):
    rng = np.random.default_rng(11)
    root = (audited / "data/images").resolve()
    rows_seen = 0
    for _ in range(300):
        file = rng.choice(["train/cat/a.jpg", "train/cat/b.jpg", fuzz_text(rng)])
        row = {"file": file, "label": rng.choice(["cat", fuzz_text(rng)]),
               "suggested": rng.choice(["dog", "cat", "linked", "..", fuzz_text(rng)])}
        try:
            moves = relabel.plan({file: row}, audited / "data/images", audited / "data/quarantine",
                                 [file] if rng.random() < 0.7 else [], [file] if rng.random() < 0.3 else [],
                                 [fuzz_text(rng)])
        except StageError:
            continue
        rows_seen += 1
        for source, target in moves:
            assert source.is_relative_to(root)
            assert target.parent.parent == source.parent.parent or \
                target.is_relative_to((audited / "data/quarantine").resolve()), (row, target)
    assert rows_seen  # some rows were good enough to plan


def test_fuzzed_labels_csvs_are_read_or_refused_with_one_line(tmp_path):
    rng = np.random.default_rng(3)
    read = refused = 0
    for i in range(150):
        header = rng.choice(["image,label", "image,label,label", "label,image", fuzz_text(rng, "imagelbl,\"\n")])
        rows = "".join(f"{fuzz_text(rng)},{fuzz_text(rng)}\n" for _ in range(int(rng.integers(0, 6))))
        (tmp_path / str(i)).mkdir()
        try:
            files, skipped = labels_csv(tmp_path / str(i), f"{header}\n{rows}")
        except StageError as err:
            refused += 1
            assert "\n" not in str(err) and "labels.csv" in str(err), str(err)
            continue
        read += 1
        assert all(not any(ord(c) < 32 for c in f["path"]) for f in files)
        assert all(s["reason"] for s in skipped)
    assert read and refused  # both ways were taken
