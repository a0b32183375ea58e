"""task: multi_label: label sets from a CSV, a stable split stratified per label, per-label
thresholds and scores, the loss; the whole pipeline on a tiny generated set (e2e)."""
from __future__ import annotations

import collections
import json
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


def test_stages_that_do_not_take_multi_label_yet_say_so_in_one_line():
    from pipeline.lib import models
    from pipeline.stages import audit
    head = models.build_head(np.zeros((4, 3), np.float32), 2, 0, 0.0, multi_label=True)
    with pytest.raises(StageError, match="task: multi_label model .* calibrate, export, predict and rank do not"):
        models.logits(head)  # what calibrate, export, predict and rank build on
    found, figures = audit.label_issues([], None, None, None, [], SimpleNamespace(task="multi_label"))
    assert found == [] and figures["label_issues_checked"] is False


@pytest.mark.e2e
def test_a_multi_label_set_runs_through_the_pipeline(tmp_path):
    data = make_multilabel(tmp_path / "ml", count=100, size=40)
    params = default_params(**TINY, task="multi_label")
    params["ingest"]["labels_csv"] = "labels.csv"
    project = Project(tmp_path / "p", params, data=data)
    project.repro("evaluate")
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
