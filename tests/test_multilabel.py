"""task: multi_label: label sets from a CSV, a stable split stratified per label, per-label
thresholds and scores, the loss; the whole pipeline on a tiny generated set (e2e)."""
from __future__ import annotations

import collections
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from project import Project, default_params
from shapes import make_multilabel
from tiny_run import TINY
from pipeline.lib import multilabel, sources
from pipeline.lib.errors import StageError
from pipeline.stages import split


def ingest_params(**overrides) -> SimpleNamespace:
    return SimpleNamespace(**{**default_params()["ingest"], **overrides})


def test_a_label_set_is_read_from_one_column_with_a_separator(shapes_dir):
    (shapes_dir / "labels.csv").write_text(
        "image,tags\n"
        "circle/000.png, round ; red \n"     # spaces around each label go
        "circle/001.png,\n"                  # no label: "none of these", kept
        "square/000.png,boxy;round;boxy\n"   # a label twice is once
        "square/001.png,boxy;a|b\n")         # | separates labels in the pipeline's own CSVs
    p = ingest_params(csv_label_column="tags", label_separator=";")
    _, _, files, skipped = sources.open_source(str(shapes_dir / "labels.csv"), p, "multi_label")
    assert [(f["path"], f["label"]) for f in files] == [
        ("circle/000.png", "red|round"), ("circle/001.png", ""), ("square/000.png", "boxy|round")]
    bad = [s for s in skipped if s["reason"] == "bad label in the CSV"]
    assert len(bad) == 1 and "'a|b'" in bad[0]["detail"] and "row 5" in bad[0]["detail"]


def test_a_label_set_is_read_from_one_0_1_column_per_label(shapes_dir):
    (shapes_dir / "labels.csv").write_text(
        "image,round,boxy\n"
        "circle/000.png,1,0\n"
        "circle/001.png,0,0\n"
        "square/000.png,1,1\n"
        "square/001.png,1,yes\n")
    p = ingest_params(csv_label_columns=["round", "boxy"])
    _, _, files, skipped = sources.open_source(str(shapes_dir / "labels.csv"), p, "multi_label")
    assert [f["label"] for f in files] == ["round", "", "boxy|round"]
    bad = [s for s in skipped if s["reason"] == "bad label in the CSV"]
    assert len(bad) == 1 and "'boxy' holds 'yes', not 0 or 1" in bad[0]["detail"]
    with pytest.raises(StageError, match="ingest.csv_label_columns 'shiny' is not a column"):
        sources.open_source(str(shapes_dir / "labels.csv"), ingest_params(csv_label_columns=["shiny"]),
                            "multi_label")


def test_the_mode_and_the_source_must_agree(shapes_dir):
    with pytest.raises(StageError, match="task is multi_label, but source .* has no labels CSV: class folders"):
        sources.open_source(str(shapes_dir), ingest_params(), "multi_label")
    (shapes_dir / "labels.csv").write_text("image,round\ncircle/000.png,1\n")
    with pytest.raises(StageError, match="ingest.csv_label_columns .* needs task: multi_label"):
        sources.open_source(str(shapes_dir / "labels.csv"), ingest_params(csv_label_columns=["round"]))


def _rows(n: int, seed: int, prefix: str = "") -> list[dict]:
    """``n`` images with random label sets over 5 labels of very different frequencies."""
    rng = np.random.default_rng(seed)
    rates = {"common": 0.6, "mid": 0.3, "rare": 0.08, "rarer": 0.04, "pair": 0.2}
    return [{"path": f"{prefix}{i}", "sha256": f"{prefix}h{i}", "split": "",
             "label": multilabel.encode(k for k, r in rates.items() if rng.random() < r)} for i in range(n)]


def _where(parts: dict) -> dict:
    return {r["path"]: name for name, part in parts.items() for r in part}


def test_the_split_is_stratified_per_label_and_stable_when_images_are_added():
    rows = _rows(600, 0)
    fractions = {"test": 0.2, "val": 0.1}
    parts = split.assign([[r] for r in rows], fractions, 7, "x", multi=True)
    total = multilabel.counts(rows)
    for name, share in {**fractions, "train": 0.7}.items():
        found = multilabel.counts(parts[name])
        for label, n in total.items():  # each label's share within an image or two of the target
            assert abs(found[label] - share * n) <= 1.5, (name, label, found[label], share * n)
        assert abs(len(parts[name]) - share * len(rows)) <= 3
    before = _where(parts)
    more = rows + _rows(150, 1, prefix="new")
    placed = {split.key(r): name for name, part in parts.items() for r in part}  # what the last split held
    after = _where(split.assign([[r] for r in more], fractions, 7, "x", before=placed, multi=True))
    assert {k: after[k] for k in before} == before  # no image placed before moved
    new = [r for r in more if r["path"].startswith("new")]
    for name in ("test", "val"):  # and the new ones are stratified too
        assert 0 < sum(after[r["path"]] == name for r in new if "common" in r["label"])


def test_a_rare_label_gets_an_image_in_every_split_and_groups_stay_together():
    rows = _rows(200, 2)
    rows += [{"path": f"few{i}", "sha256": f"few{i}", "split": "", "label": "few"} for i in range(3)]
    units = [rows[0:2], rows[2:4]] + [[r] for r in rows[4:]]  # two near-duplicate groups of two
    parts = split.assign(units, {"test": 0.1, "val": 0.1}, 3, "x", multi=True)
    where = _where(parts)
    assert {where[f"few{i}"] for i in range(3)} == {"train", "val", "test"}
    assert where["0"] == where["1"] and where["2"] == where["3"]


def test_relabel_applies_to_each_label_of_a_set():
    rows = [{"path": str(i), "label": label, "split": "", "sha256": str(i)} for i, label in
            enumerate(["a|b", "a|tiny", "b|c", "c", "a|c", "b", "", "a|b|c"])]
    p = SimpleNamespace(drop_labels=["b"], merge_labels={"c": "a"}, min_images_per_class=2, small_classes="drop")
    out, changes = split.relabel(rows, p, multi=True)
    assert [r["label"] for r in out] == ["a", "a", "a", "a", "a", "", "", "a"]  # tiny dropped: 1 image
    assert changes["tiny"].startswith("dropped") and changes["c"] == "merged into a"
    with pytest.raises(StageError, match="no image has the label 'd'"):
        split.relabel(rows, SimpleNamespace(**{**vars(p), "drop_labels": ["d"]}), multi=True)


def test_thresholds_are_per_label_and_reach_a_precision_target():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [1, 1], [0, 0]])
    p = np.array([[0.9, 0.2], [0.6, 0.1], [0.7, 0.8], [0.2, 0.3], [0.8, 0.35], [0.1, 0.4]])
    cut = multilabel.thresholds(y, p)
    assert cut[0] == pytest.approx(0.6) and cut[1] == pytest.approx(0.35)  # F1 6/7 and 0.8, the best
    strict = multilabel.thresholds(y, p, precision_target=1.0)
    assert strict[1] == pytest.approx(0.8)  # the lowest threshold of precision 1
    s = multilabel.scores(y, p, cut, ["a", "b"])
    predicted = p >= cut
    assert s["exact_match"] == pytest.approx(np.mean((predicted == y).all(axis=1)))
    assert s["hamming_loss"] == pytest.approx(np.mean(predicted != y))
    assert s["per_label"]["a"]["f1"] == pytest.approx(6 / 7) and s["per_label"]["b"]["images"] == 2


def test_the_multi_label_loss_weighs_each_labels_present_and_absent_targets():
    import tensorflow as tf

    from pipeline.lib import training
    y = np.array([[1, 0], [0, 1]])
    p = np.array([[0.8, 0.3], [0.4, 0.9]], np.float32)
    w = np.array([[1.0, 2.0], [3.0, 0.5]])  # row 0: absent, row 1: present
    expected = -np.mean(np.where(y, w[1] * np.log(p), w[0] * np.log(1 - p)), axis=1)
    got = training.multi_label_losses(tf.constant(w, tf.float32), y, p).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    weights = training.label_weights([50, 5], 100, ["a", "b"], "auto", 3.0)
    np.testing.assert_allclose(weights, [[100 / 100, 100 / 190], [100 / 100, 100 / 10]])
    assert training.label_weights([50, 40], 100, ["a", "b"], "auto", 3.0) is None


def test_a_gallery_caption_names_the_surest_missed_and_extra_label_and_counts_the_rest():
    from pipeline.stages import evaluate
    labels = [f"l{i}" for i in range(30)]
    truth, prob = np.zeros(30, np.uint8), np.full(30, 0.01)
    truth[:6] = 1
    prob[:6] = [0.4, 0.1, 0.3, 0.2, 0.05, 0.35]  # all missed: the lowest are the surest misses
    prob[20:] = np.linspace(0.6, 0.95, 10)  # all extra: the highest are the surest
    caption = evaluate.mistake_caption("images/x.png", truth, prob, prob >= 0.5, labels)
    assert caption.splitlines() == ["x.png", "missed: l4 (5%) +5 more", "extra: l29 (95%) +9 more"]


def test_the_audit_says_it_looked_for_no_label_issue_in_this_mode():
    from pipeline.stages import audit
    found, figures = audit.label_issues([], None, None, None, [], SimpleNamespace(task="multi_label"))
    assert found == [] and figures["label_issues_checked"] is False


def test_platt_scaling_per_label_recovers_a_known_one_and_lowers_each_labels_ece():
    from pipeline.lib import confidence
    rng = np.random.default_rng(0)
    truth_t, truth_b = np.array([0.5, 1.0, 2.5]), np.array([0.0, -1.5, 1.0])  # over-, shifted, under-confident
    logits = rng.normal(0, 3, (4000, 3))
    y = (rng.random((4000, 3)) < confidence.label_probabilities(logits, truth_t, truth_b)).astype(np.uint8)
    t, shift = confidence.fit_label_platt(logits, y)
    np.testing.assert_allclose(t, truth_t, rtol=0.15)
    np.testing.assert_allclose(shift, truth_b, atol=0.2)
    before, after = (confidence.label_quality(logits, y, temp, ["a", "b", "c"], b) for temp, b in ((1.0, 0.0), (t, shift)))
    for label in "abc":
        assert after["per_label"][label]["ece"] < before["per_label"][label]["ece"] / 2
    assert after["nll"] < before["nll"]
    y[:, 2] = 0  # a label never present in validation keeps T = 1, shift 0: its fit would sharpen without limit
    t, shift = confidence.fit_label_platt(logits, y)
    assert (t[2], shift[2]) == (1.0, 0.0)


def test_a_multi_label_model_ships_platt_scaling_per_label_and_the_joint_energy(tmp_path):
    """deployable's probabilities are sigmoid(logits / T + shift) per label and its known the NumPy formula
    on the raw logits; the SavedModel's label sets follow the thresholds, and LiteRT converts the
    joint energy with its built-in ops."""
    import keras

    from pipeline.lib import confidence, formats, inference, models
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(models.Preprocess("MobileNetV2")(inputs)))
    plain = keras.Model(inputs, keras.layers.Dense(3, activation="sigmoid", name="probabilities")(x))
    plain.layers[-1].set_weights([w * 20 for w in plain.layers[-1].get_weights()])
    pixels = np.random.default_rng(1).integers(0, 256, (12, 16, 16, 3)).astype("float32")
    raw = models.logits(plain).predict(pixels, verbose=0)
    energy = confidence.joint_energy(raw)
    calibration = {"task": "multi_label", "temperature": [0.5, 1.0, 2.0], "shift": [0.0, -1.0, 0.5],
                   "label_thresholds": [0.3, 0.5, 0.7],
                   "temperature_in_model": False, "unknown_score": "known", "unknown_threshold": 0.5,
                   "known_center": float(np.median(energy)), "known_scale": confidence.robust_scale(energy)}
    model = models.deployable(plain, calibration)
    probabilities, known = inference.KerasClassifier(model).classify(pixels)
    np.testing.assert_allclose(probabilities, confidence.label_probabilities(raw, [0.5, 1.0, 2.0], [0.0, -1.0, 0.5]),
                               atol=1e-5)
    np.testing.assert_allclose(known, confidence.label_known(raw, calibration["known_center"],
                                                             calibration["known_scale"]), atol=1e-5)
    with pytest.raises(StageError, match="calibration is for a task: single_label model"):
        models.deployable(plain, {**calibration, "task": "single_label", "temperature": 1.0})
    formats.saved_model(model, ["a", "b", "c"], tmp_path / "sm", 0.5, calibration["label_thresholds"])
    out = tf_signature(tmp_path / "sm")(pixels)
    present = probabilities >= np.array(calibration["label_thresholds"])
    assert (out["present"].numpy() == present).all()
    assert [c.decode() for c in out["classes"].numpy()] == [multilabel.encode(np.array(["a", "b", "c"])[row])
                                                            for row in present]
    formats.tflite(tmp_path / "sm", tmp_path / "m.tflite", "float32")
    got, got_known = inference.load(tmp_path / "m.tflite").classify(pixels.astype("uint8"))
    np.testing.assert_allclose(got_known, known, atol=1e-5)


def tf_signature(path):
    """The SavedModel's image-bytes signature, fed pixels encoded as PNG."""
    import io

    import tensorflow as tf
    from PIL import Image

    serve = tf.saved_model.load(str(path)).signatures["serving_default"]

    def run(pixels):
        encoded = []
        for image in pixels.astype("uint8"):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            encoded.append(buffer.getvalue())
        return serve(image_bytes=tf.constant(encoded))
    return run


def test_a_multi_label_calibration_file_is_checked_per_label(tmp_path):
    from pipeline.lib import confidence
    good = {"task": "multi_label", "temperature": [1.2, 0.8], "shift": [0.1, -0.4], "label_thresholds": [0.3, 0.6],
            "temperature_in_model": True, "unknown_score": "known", "unknown_threshold": 0.5, "known_center": 1.0,
            "known_scale": 0.5}
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(good))
    assert confidence.read_calibration(path)["label_thresholds"] == [0.3, 0.6]
    for bad, message in (({"temperature": [1.2, 0]}, "temperature is"), ({"label_thresholds": [0.3]}, "label_thr"),
                         ({"label_thresholds": [0.3, 1.5]}, "label_thr"), ({"task": "both"}, "task is"),
                         ({"shift": [0.1]}, "shift is")):
        path.write_text(json.dumps({**good, **bad}))
        with pytest.raises(StageError, match=message):
            confidence.read_calibration(path)


def test_multi_label_uncertainty_is_the_label_nearest_its_threshold():
    from pipeline.lib import confidence
    cut = np.array([0.2, 0.8])
    p = np.array([[0.2, 0.0],    # a label right at its threshold: as unsure as can be
                  [0.6, 0.1],    # half-way from 0.2 to 1, and far below 0.8
                  [1.0, 0.0]])   # sure of both
    np.testing.assert_allclose(confidence.uncertainty(p, "margin", cut), [1.0, 0.5, 0.0])
    entropy = confidence.uncertainty(np.array([[0.5, 0.5], [0.9, 0.1], [1.0, 0.0]]), "entropy", cut)
    np.testing.assert_allclose(entropy, [2 * np.log(2), -2 * (0.9 * np.log(0.9) + 0.1 * np.log(0.1)), 0], atol=1e-9)


@pytest.mark.parametrize("form", ["separator", "columns"])
def test_relabel_adds_and_removes_one_label_in_the_csv_and_changes_nothing_else(tmp_path, monkeypatch, form):
    import yaml

    from pipeline import relabel
    images = tmp_path / "data/images"
    (images / "pics").mkdir(parents=True)
    for name in ("a", "b", "c", "d"):
        (images / "pics" / f"{name}.png").write_bytes(name.encode())
    if form == "separator":
        text = 'image,tags,note\r\npics/a.png,cat;dog,"x, y"\r\npics/b.png,cat,\r\npics/c.png,,z\r\npics/d.png,dog,\r\n'
        ingest = {"labels_csv": "labels.csv", "csv_label_column": "tags", "label_separator": ";"}
        expected = 'image,tags,note\r\npics/a.png,cat,"x, y"\r\npics/b.png,cat;dog,\r\npics/c.png,,z\r\n'
    else:
        text = "image,cat,dog\npics/a.png,1,1\npics/b.png,1,0\npics/c.png,0,0\npics/d.png,0,1\n"
        ingest = {"labels_csv": "labels.csv", "csv_label_columns": ["cat", "dog"]}
        expected = "image,cat,dog\npics/a.png,1,0\npics/b.png,1,1\npics/c.png,0,0\n"
    (images / "labels.csv").write_bytes(text.encode())
    mode = (images / "labels.csv").stat().st_mode & 0o777
    params = default_params(task="multi_label")
    params["ingest"].update(ingest)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    schemas_write(tmp_path / "outliers.csv", [{"file": "pics/d.png", "label": "dog", "suggested": "", "issue": ""}])
    monkeypatch.chdir(tmp_path)
    args = ["--images", "data/images"]
    for bad, message in ((["--add", "pics/c.png", "bird"], "'bird' is not one of the data's labels"),
                         (["--add", "pics/e.png", "cat"], "pics/e.png: no row of"),
                         (["--accept", "pics/a.png"], "flags no label issues to accept"),
                         (["--reject", "pics/d.png"], "give its CSV")):
        with pytest.raises(StageError, match=message):
            relabel.main(args + bad)
    assert (images / "labels.csv").read_bytes() == text.encode()  # refused: nothing written
    assert relabel.main(["outliers.csv", *args, "--remove", "pics/a.png", "dog", "--add", "pics/b.png", "dog",
                         "--reject", "pics/d.png"]) == 0
    assert (images / "labels.csv").read_bytes() == expected.encode()  # the other rows byte for byte
    assert (images / "labels.csv").stat().st_mode & 0o777 == mode  # the CSV keeps its mode
    assert sorted(p.name for p in images.iterdir()) == ["labels.csv", "pics"]  # no temporary file left
    assert (tmp_path / "data/quarantine/pics/d.png").read_bytes() == b"d" and not (images / "pics/d.png").exists()


def schemas_write(path, rows):
    from pipeline.lib import schemas
    schemas.write_csv(path, rows, ["file", "label", "suggested", "issue"])


@pytest.mark.e2e
def test_a_multi_label_set_runs_through_the_pipeline(tmp_path):
    """ingest to summary; then predict and rank on the exported model."""
    data = make_multilabel(tmp_path / "ml", count=100, size=40)
    params = default_params(**TINY, task="multi_label")
    params["ingest"]["labels_csv"] = "labels.csv"
    project = Project(tmp_path / "p", params, data=data)
    project.repro()
    report = json.loads((project.path / "reports/split.json").read_text())
    assert report["task"] == "multi_label" and report["labels"] == ["circle", "square", "triangle"]
    for name in ("train", "val", "test"):
        assert all(report["per_class"][name][label] > 0 for label in report["labels"])
    metrics = json.loads((project.path / "reports/metrics.json").read_text())
    for name in ("head", "finetune"):
        assert {"mean_average_precision", "micro_f1", "macro_f1", "exact_match", "hamming_loss"} <= set(metrics[name])
        assert metrics[name]["mean_average_precision"] > 0.55  # learnable: chance is a label's share, about 0.45
    import csv
    with open(project.path / "reports/evaluate/predictions.csv") as f:
        predictions = list(csv.DictReader(f))
    assert list(predictions[0]) == ["path", "actual", "predicted", "p_circle", "p_square", "p_triangle"]
    assert len(predictions) == metrics["test_images"]
    # the confusion CSV: a pair per label found, missed or added, (none, none) for an image with neither
    expected = collections.Counter()
    for row in predictions:
        truth, guess = set(multilabel.decode(row["actual"])), set(multilabel.decode(row["predicted"]))
        expected.update((x, x) for x in truth & guess)
        expected.update((x, "(none)") for x in truth - guess)
        expected.update(("(none)", x) for x in guess - truth)
        expected.update([("(none)", "(none)")] if not truth | guess else [])
    with open(project.path / "reports/evaluate/confusion_finetune.csv") as f:
        assert collections.Counter((r["actual"], r["predicted"]) for r in csv.DictReader(f)) == expected
    calibration = json.loads((project.path / "models/export/calibration.json").read_text())
    assert calibration["task"] == "multi_label" and calibration["temperature_in_model"] is True
    assert len(calibration["temperature"]) == len(calibration["label_thresholds"]) == 3
    report = json.loads((project.path / "reports/calibration.json").read_text())
    assert set(report["test_after"]["per_label"]) == {"circle", "square", "triangle"}
    assert {"test_none_predicted", "ood_predicted_none", "ood_none_or_unknown"} <= set(report["answers"])
    export = json.loads((project.path / "reports/export.json").read_text())
    assert export["task"] == "multi_label" and export["keras"]["agreement"] == 1.0  # the export's own check passed
    assert export["onnx"]["agreement"] >= 0.9 and export["saved_model_bytes"]["agreement"] >= 0.9
    assert "multi-label" in (project.path / "reports/summary.md").read_text()
    # predict: every label at or above its threshold, in the CSV's labels column (k = 3: every probability)
    labels = ["circle", "square", "triangle"]
    files = [str(project.path / "data/images" / row["path"]) for row in predictions[:6]]
    project.command("predict", "models/export/model.keras", *files, "--csv", "out.csv")
    with open(project.path / "out.csv") as f:
        for row in csv.DictReader(f):
            p = {row[f"label_{i}"]: float(row[f"probability_{i}"]) for i in (1, 2, 3)}
            assert set(multilabel.decode(row["labels"])) == {
                x for x, t in zip(labels, calibration["label_thresholds"]) if p[x] >= t}, row
    project.command("rank", "models/export/model.keras", *files, "--out", "rank.csv")
    with open(project.path / "rank.csv") as f:
        ranked = list(csv.DictReader(f))
    assert ranked and all(set(multilabel.decode(r["label"])) <= set(labels) for r in ranked)
    assert [float(r["uncertainty"]) for r in ranked] == sorted((float(r["uncertainty"]) for r in ranked), reverse=True)
    # docs/examples/mediapipe_labels.py on the float32 file, against predict on the same file and images at
    # the model's size (MediaPipe's own resize then changes nothing): the same label sets
    from pipeline.lib import images
    size = params["base"]["image_size"]
    small = []
    for i, path in enumerate(files):
        small.append(tmp_path / f"{i}.png")
        images.save_png(images.load_image(path, size), small[-1])
    model = "models/export/model_float32.tflite"
    found = json.loads(project.command("predict", model, *map(str, small), "--json").stdout)
    lines = project.run("python", str(Path(__file__).parents[1] / "docs/examples/mediapipe_labels.py"), model,
                        *map(str, small)).stdout.splitlines()
    assert len(lines) == len(found)
    for line, r in zip(lines, found):
        p = {x["label"]: x["probability"] for x in r["predictions"]}
        assert r["labels"] == sorted((x for x, t in zip(labels, calibration["label_thresholds"]) if p[x] >= t),
                                     key=lambda x: -p[x])  # surest first
        path, answer, _, _ = line.split("\t")
        assert path == r["path"] and answer == ("unknown" if r["unknown"] else "|".join(r["labels"]) or "(none)")
