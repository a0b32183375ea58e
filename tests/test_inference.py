"""Exported formats and the predict command, on a tiny convolutional model and generated images."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from pipeline.lib import images, inference, models
from pipeline.stages import export
from pipeline import predict

SIZE = 32
LABELS = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny classifier saved as .keras, SavedModel and the three TFLite files, labels beside."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = models.Preprocess("MobileNetV2")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    folder = tmp_path_factory.mktemp("export")
    models.save(model, folder / "model.keras")
    model.export(str(folder / "saved_model"), format="tf_saved_model", verbose=False)
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(20):
            yield [rng.uniform(0, 255, (1, SIZE, SIZE, 3)).astype("float32")]

    for kind in ("float32", "float16", "int8"):
        export.tflite(folder / "saved_model", folder / f"model_{kind}.tflite", kind, representative)
    inference.write_labels(folder / inference.LABELS_FILE, LABELS)
    return folder


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(1).integers(0, 256, (10, SIZE, SIZE, 3)).astype("uint8")


@pytest.mark.parametrize("name, tolerance", [("saved_model", 1e-5), ("model_float32.tflite", 1e-5),
                                             ("model_float16.tflite", 1e-2), ("model_int8.tflite", 0.1)])
def test_every_format_gives_the_keras_probabilities(exported, pixels, name, tolerance):
    reference = inference.load(exported / "model.keras").predict(pixels, batch_size=4)
    got = inference.load(exported / name).predict(pixels, batch_size=4)
    assert got.shape == (10, 3)
    np.testing.assert_allclose(got, reference, atol=tolerance)
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=max(tolerance, 1e-4))


def test_int8_file_takes_uint8_pixels(exported):
    classifier = inference.load(exported / "model_int8.tflite")
    assert classifier.input["dtype"] == np.uint8 and classifier.image_size == SIZE


def test_unknown_model_file_is_refused(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .keras file, a .tflite file or a SavedModel folder"):
        inference.load(tmp_path / "model.pt")


def test_expand_files_folders_and_globs(tmp_path):
    for name in ("a/1.png", "a/b/2.JPG", "a/.hidden/3.png", "a/notes.txt", "c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    files, unmatched = predict.expand([str(tmp_path / "a"), str(tmp_path / "*.png"), str(tmp_path / "nope.jpg")])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a/1.png", "a/b/2.JPG", "c.png"]
    assert unmatched == [str(tmp_path / "nope.jpg")]


def test_predict_prints_top_k_and_reports_unreadable_files(exported, tmp_path, capsys):
    rng = np.random.default_rng(2)
    for i in range(3):
        images.save_png(rng.integers(0, 256, (40, 50, 3)), tmp_path / f"{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    code = predict.main([str(exported / "model_float32.tflite"), str(tmp_path), "--json", "-k", "2"])
    out = capsys.readouterr()
    results = json.loads(out.out)
    assert code == 0
    assert [r["path"].rsplit("/", 1)[-1] for r in results] == ["0.png", "1.png", "2.png", "broken.jpg"]
    assert "error" in results[3] and "broken.jpg: not a readable image" in out.err
    reference = inference.load(exported / "model.keras").predict(
        np.stack([images.load_image(tmp_path / f"{i}.png", SIZE) for i in range(3)]))
    for r, probs in zip(results[:3], reference):
        assert [p["label"] for p in r["predictions"]] == [LABELS[j] for j in probs.argsort()[::-1][:2]]
        assert r["predictions"][0]["probability"] == pytest.approx(probs.max(), abs=1e-5)

    code = predict.main([str(exported / "model.keras"), str(tmp_path / "0.png")])
    table = capsys.readouterr().out
    assert code == 0 and table.count("%") == 3 and "0.png" in table


def test_predict_fails_only_when_nothing_could_be_classified(exported, tmp_path, capsys):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert predict.main([str(exported / "model.keras"), str(tmp_path / "broken.jpg")]) == 1
    with pytest.raises(SystemExit, match="no labels.txt beside"):
        predict.main([str(tmp_path / "broken.jpg"), str(tmp_path / "broken.jpg")])
    with pytest.raises(SystemExit):  # argparse: nothing matched
        predict.main([str(exported / "model.keras"), str(tmp_path / "*.none")])
    assert "no image files to classify" in capsys.readouterr().err
    (tmp_path / "model.keras").write_bytes(b"not a model")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    with pytest.raises(SystemExit):
        predict.main([str(tmp_path / "model.keras"), str(exported / "labels.txt")])
    assert f"{tmp_path / 'model.keras'} is not a readable Keras model" in capsys.readouterr().err


def test_a_failed_conversion_names_the_file_and_the_reason(exported, tmp_path, monkeypatch):
    import tensorflow as tf

    from pipeline.lib.artifacts import StageError

    class Refuses:
        target_spec = type("Spec", (), {})()

        def convert(self):
            raise RuntimeError("op 'Erfinv' is neither a custom op nor a flex op\nmore detail")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", lambda path: Refuses())
    with pytest.raises(StageError, match=r"model_int8.tflite failed: op 'Erfinv' is neither .* base.backbone"):
        export.tflite(exported / "saved_model", tmp_path / "model_int8.tflite", "int8", lambda: iter([]))
    assert not (tmp_path / "model_int8.tflite").exists()
