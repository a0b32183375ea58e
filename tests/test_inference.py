"""Exported formats and the predict command, on a tiny convolutional model and generated images."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from pipeline.lib import formats, images, inference, inputs, keras_files, models, schemas
from pipeline import predict
from pipeline.lib.errors import StageError

SIZE = 32
LABELS = ["circle", "square", "triangle"]
UNKNOWN_BELOW = 0.5  # known's threshold, built into the fixture's SavedModel


def tiny_classifier() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = models.Preprocess("MobileNetV2")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probabilities")(x))
    # Logits as far apart as a trained model's: random weights give every image about the same
    # energy, and an int8 file rounds a spread that is tiny beside the energy itself to nothing
    model.layers[-1].set_weights([w * 30 for w in model.layers[-1].get_weights()])
    return model


def tiny_calibration(model: keras.Model) -> dict:
    """A calibration as the calibrate stage writes it, its energy centred on the median of random
    images', so about half of them are unknown."""
    from pipeline.lib import confidence

    raw = models.logits(model).predict(np.random.default_rng(9).integers(0, 256, (40, SIZE, SIZE, 3)), verbose=0)
    energy = confidence.scores(raw, 1.0)["energy"]
    return {"temperature": 1.7, "temperature_in_model": False, "unknown_score": "known",
            "unknown_threshold": UNKNOWN_BELOW, "known_center": float(np.median(energy)),
            "known_scale": confidence.robust_scale(energy)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny classifier made deployable (calibrated probabilities and known) and saved as .keras,
    SavedModel, the three TFLite files (with metadata) and ONNX, labels and calibration beside, as
    the export stage writes them."""
    plain = tiny_classifier()
    calibration = tiny_calibration(plain)
    model = models.deployable(plain, calibration)
    folder = tmp_path_factory.mktemp("export")
    keras_files.save(model, folder / "model.keras")
    inference.write_labels(folder / inference.LABELS_FILE, LABELS)
    (folder / inference.CALIBRATION_FILE).write_text(json.dumps({**calibration, "temperature_in_model": True}))
    formats.saved_model(model, LABELS, folder / "saved_model", unknown_threshold=UNKNOWN_BELOW)
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(20):
            yield [rng.uniform(0, 255, (1, SIZE, SIZE, 3)).astype("float32")]

    for kind in ("float32", "float16", "int8"):
        formats.tflite(folder / "saved_model", folder / f"model_{kind}.tflite", kind, representative)
        formats.add_metadata(folder / f"model_{kind}.tflite", folder / inference.LABELS_FILE, "a test model")
    formats.onnx(model, folder / "model.onnx")
    return folder


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(1).integers(0, 256, (10, SIZE, SIZE, 3)).astype("uint8")


@pytest.mark.parametrize("name, tolerance", [("saved_model", 1e-5), ("model_float32.tflite", 1e-5),
                                             ("model_float16.tflite", 1e-2), ("model_int8.tflite", 0.1),
                                             ("model.onnx", 1e-5)])
def test_every_format_gives_the_keras_probabilities_and_known(exported, pixels, name, tolerance):
    reference, reference_known = inference.load(exported / "model.keras").classify(pixels, batch_size=4)
    got, known = inference.load(exported / name).classify(pixels, batch_size=4)
    assert got.shape == (10, 3) and known.shape == (10,)
    np.testing.assert_allclose(got, reference, atol=tolerance)
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=max(tolerance, 1e-4))
    np.testing.assert_allclose(known, reference_known, atol=tolerance)


def test_the_deployable_model_is_the_plain_one_calibrated_with_the_energy_score(pixels):
    """Its probabilities are the plain model's at the temperature, its known the NumPy formula's
    on the plain model's logits, and the same unknown rule follows from it in every runtime
    (test_every_format_gives_the_keras_probabilities_and_known)."""
    from pipeline.lib import confidence

    plain = tiny_classifier()
    calibration = tiny_calibration(plain)
    probabilities, known = inference.KerasClassifier(models.deployable(plain, calibration)).classify(pixels)
    raw = models.logits(plain).predict(pixels.astype("float32"), verbose=0)
    np.testing.assert_allclose(probabilities, confidence.calibrated(raw, calibration["temperature"]), atol=1e-5)
    np.testing.assert_allclose(known, confidence.known(raw, calibration["known_center"], calibration["known_scale"]),
                               atol=1e-5)
    assert (known < UNKNOWN_BELOW).any() and not (known < UNKNOWN_BELOW).all()
    np.testing.assert_allclose(inference.KerasClassifier(plain).predict(pixels), confidence.calibrated(raw, 1.0),
                               atol=1e-5)  # deployable left the plain model as it was


def test_int8_file_takes_uint8_pixels(exported):
    classifier = inference.load(exported / "model_int8.tflite")
    assert classifier.input["dtype"] == np.uint8 and classifier.image_size == SIZE


def test_unknown_model_file_is_refused(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(StageError, match="not a .keras, .tflite or .onnx file or a SavedModel folder"):
        inference.load(tmp_path / "model.pt")


def test_expand_files_folders_and_globs(tmp_path):
    for name in ("a/1.png", "a/b/2.JPG", "a/.hidden/3.png", "a/notes.txt", "c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    files, unmatched = inputs.expand([str(tmp_path / "a"), str(tmp_path / "*.png"), str(tmp_path / "nope.jpg")])
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
    reference, known = inference.load(exported / "model.keras").classify(
        np.stack([images.load_image(tmp_path / f"{i}.png", SIZE) for i in range(3)]))
    for r, probs, k in zip(results[:3], reference, known):
        assert [p["label"] for p in r["predictions"]] == [LABELS[j] for j in probs.argsort()[::-1][:2]]
        assert r["predictions"][0]["probability"] == pytest.approx(probs.max(), abs=1e-5)
        assert r["known"] == pytest.approx(k, abs=1e-5) and r["unknown"] == (k < UNKNOWN_BELOW)

    code = predict.main([str(exported / "model.keras"), str(tmp_path / "0.png")])
    table = capsys.readouterr().out
    assert code == 0 and table.count("%") == 3 and "0.png" in table


def test_predict_caps_k_and_summarises_unreadable_files(exported, tmp_path, capsys):
    images.save_png(np.zeros((8, 8, 3), np.uint8), tmp_path / "ok.png")
    for i in range(12):
        (tmp_path / f"bad{i:02d}.jpg").write_bytes(b"not an image")
    code = predict.main([str(exported / "model.keras"), str(tmp_path), "-k", "10000000", "--csv", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert code == 0 and err.count("not a readable image") == inputs.Unreadable.SHOWN  # the first few, named
    assert "7 more unreadable file(s) not named above (12 of 13 unreadable; every one is in" in err
    rows = schemas.read_csv(tmp_path / "p.csv")
    assert len(rows) == 13 and sum(bool(r["error"]) for r in rows) == 12  # every one in the CSV
    assert list(rows[0]) == ["file", "label_1", "probability_1", "label_2", "probability_2", "label_3",
                             "probability_3", "known", "unknown", "error"]  # -k capped at the 3 classes
    code = predict.main([str(exported / "model.keras"), str(tmp_path)])  # the table: classified images only
    out = capsys.readouterr()
    assert code == 0 and out.out.count("\n") == 1 and "ok.png" in out.out and "bad" not in out.out
    assert "12 of 13 unreadable" in out.err


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
    assert f"{tmp_path / 'model.keras'} is damaged (not a .keras zip archive)" in capsys.readouterr().err
    (tmp_path / "calibration.json").write_text('{"temperature": 2.0}')  # no threshold: not the stages' file
    image = tmp_path / "ok.png"
    images.save_png(np.zeros((8, 8, 3), np.uint8), image)
    for bad in (["--calibration", str(tmp_path / "calibration.json")], ["--calibration", str(tmp_path / "none.json")],
                ["--unknown-threshold", "1.5"]):
        with pytest.raises(SystemExit):
            predict.main([str(exported / "model.keras"), str(image), *bad])
    err = capsys.readouterr().err
    assert "calibration.json is damaged (no temperature_in_model)" in err and "none.json: no such file" in err
    assert "--unknown-threshold must be between 0 and 1" in err


def test_a_failed_conversion_names_the_file_and_the_reason(exported, tmp_path, monkeypatch):
    import tensorflow as tf

    from pipeline.lib.errors import StageError

    class Refuses:
        target_spec = type("Spec", (), {})()

        def convert(self):
            raise RuntimeError("op 'Erfinv' is neither a custom op nor a flex op\nmore detail")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", lambda path, **_: Refuses())
    with pytest.raises(StageError, match=r"model_int8.tflite failed: op 'Erfinv' is neither .* base.backbone"):
        formats.tflite(exported / "saved_model", tmp_path / "model_int8.tflite", "int8", lambda: iter([]))
    assert not (tmp_path / "model_int8.tflite").exists()


@pytest.mark.parametrize("kind, tolerance", [("float32", 1e-5), ("float16", 1e-2), ("int8", 0.1)])
def test_mediapipe_loads_the_tflite_files_as_they_are(exported, pixels, kind, tolerance):
    """MediaPipe Tasks' ImageClassifier needs the metadata (normalization, labels): it refuses a
    float model without it, and names each output with the embedded label."""
    classifier = inference.MediaPipeClassifier(exported / f"model_{kind}.tflite", LABELS)
    try:
        got, known = classifier.classify(pixels)
    finally:
        classifier.close()
    reference, reference_known = inference.load(exported / "model.keras").classify(pixels)
    np.testing.assert_allclose(got, reference, atol=tolerance)
    np.testing.assert_allclose(known, reference_known, atol=tolerance)  # its second head


def test_mediapipe_refuses_a_float_tflite_file_without_metadata(exported, tmp_path):
    formats.tflite(exported / "saved_model", tmp_path / "bare.tflite", "float32")
    with pytest.raises(Exception, match="(?i)normalization"):
        inference.MediaPipeClassifier(tmp_path / "bare.tflite", LABELS)


def test_saved_model_signature_takes_image_bytes_and_returns_names(exported, tmp_path):
    """Encoded files in, class names, probabilities and the unknown flag out, as predict gets
    from the same files."""
    rng = np.random.default_rng(3)
    paths = []
    for i, (fmt, mode) in enumerate([("JPEG", "RGB"), ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "L"),
                                     ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB")]):
        from PIL import Image
        size = (300, 200) if i == 4 else (47, 61)  # a large JPEG is decoded at a reduced scale
        im = Image.fromarray(rng.integers(0, 256, (*size[::-1], 4 if mode == "RGBA" else 3), dtype=np.uint8))
        if i in (1, 3):  # flat dark frames: the tiny model's energy is far lower on them than on noise
            im = Image.new(im.mode, im.size, (30 * i,) * len(im.mode))
        paths.append(tmp_path / f"{i}.{fmt.lower()}")
        im.convert(mode).save(paths[-1], format=fmt)
    names, probs, known, unknown = inference.SavedModelClassifier(exported / "saved_model").classify_files(
        paths, batch_size=3)
    reference, reference_known = inference.load(exported / "model.keras").classify(
        np.stack([images.load_image(path, SIZE) for path in paths]))
    np.testing.assert_allclose(probs, reference, atol=2e-3)  # pixels within one level of Pillow's
    np.testing.assert_allclose(known, reference_known, atol=2e-3)
    assert names == [LABELS[i] for i in probs.argmax(axis=1)]
    assert unknown.tolist() == (known < UNKNOWN_BELOW).tolist()
    assert unknown.any() and not unknown.all()  # the random model's images fall on both sides


def test_the_signature_decodes_as_pillow_does(tmp_path):
    """Within one grey level of images.load_image, for JPEG at every DCT scale, PNG with alpha, grey."""
    import tensorflow as tf
    from PIL import Image

    rng = np.random.default_rng(4)
    smooth = np.kron(rng.integers(0, 256, (40, 60, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 320 x 480
    cases = {"big.jpg": Image.fromarray(smooth), "rgba.png": Image.fromarray(
        np.dstack([smooth, rng.integers(0, 256, smooth.shape[:2])]).astype(np.uint8), "RGBA"),
        "grey.png": Image.fromarray(smooth[..., 0], "L")}
    for name, im in cases.items():
        im.save(tmp_path / name, quality=95)
        for size in (32, 100, 160, 400):  # JPEG scales 1/8, 1/2, 1/2, 1
            got = formats.decode_image(tf.constant((tmp_path / name).read_bytes()), size).numpy()
            diff = np.abs(got.astype(int) - images.load_image(tmp_path / name, size).astype(int))
            assert diff.max() <= 1, (name, size, diff.max())


def test_tta_averages_each_image_with_its_mirror(exported):
    rng = np.random.default_rng(5)
    half = rng.integers(0, 256, (6, SIZE, SIZE // 2, 3)).astype(np.uint8)
    symmetric = np.concatenate([half, half[:, :, ::-1]], axis=2)
    classifier = inference.load(exported / "model.keras")
    np.testing.assert_allclose(classifier.predict(symmetric, tta=True), classifier.predict(symmetric), atol=1e-6)
    asymmetric = np.concatenate([half, 255 - half], axis=2)
    mirrored = classifier.predict(asymmetric[:, :, ::-1])
    np.testing.assert_allclose(classifier.predict(asymmetric, tta=True),
                               (classifier.predict(asymmetric) + mirrored) / 2, atol=1e-6)
    assert not np.allclose(classifier.predict(asymmetric), mirrored, atol=1e-3)  # the mirror does change it


def test_the_stopwatch_passes_calls_through_and_rates_the_full_batches_after_the_first():
    stopwatch = inference.Stopwatch(lambda batch, scale=1: batch * scale, lambda batch, scale=1: len(batch))
    assert (stopwatch(np.ones(5), scale=2) == 2).all() and stopwatch.calls[0][0] == 5
    stopwatch.calls = [(4, 1.0), (4, 0.5), (2, 0.01), (4, 0.25)]  # the first, a warm-up, is slow
    assert stopwatch.images_per_s() == 12.0  # the median of 8 and 16 images/s; the partial batch left out
    stopwatch.calls = [(3, 0.5)]  # one call: nothing to leave out
    assert stopwatch.images_per_s() == 6.0
