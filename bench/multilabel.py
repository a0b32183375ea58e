"""task: multi_label on real photos: the pipeline against a one-script Keras multi-label recipe.

    python bench/multilabel.py [--head-epochs 10] [--finetune-epochs 3]   # writes bench/results/multilabel.json

Makes the composites of scripts/multilabel_clothing.py from the offline clothing photos (one to
four garments per image, 10 labels), runs the pipeline (`dvc repro evaluate`, task: multi_label)
in a scratch project, then, on the very same train / val / test split, the usual one-script
recipe: frozen MobileNetV2 with augmentation and preprocess_input in the model, a sigmoid head
trained on the images for the same epochs, then the same top layers unfrozen (BatchNorm frozen)
for the same fine-tuning epochs at the same rate. Both pick each label's threshold on validation
(highest F1, pipeline.lib.multilabel.thresholds) and are scored on test by the same function.
Prints and writes wall times and test mAP, micro / macro F1, exact match, Hamming loss.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import common  # noqa: E402

LABELS = ["dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "skirt", "t-shirt"]


def composites(folder: Path) -> None:
    subprocess.run([sys.executable, str(common.ROOT / "scripts" / "multilabel_clothing.py"), str(common.CLOTHING),
                    str(folder)], check=True)


def recipe(project: Path, args, rate: float, unfreeze: int, size: int, seed: int) -> dict:
    """The one-script recipe on the project's split; its wall seconds and test metrics."""
    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from pipeline.lib import multilabel

    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    labels = json.loads((project / "data/split/labels.json").read_text())

    def dataset(part: str, shuffle: bool):
        with open(project / f"data/split/{part}.csv") as f:
            rows = list(csv.DictReader(f))
        paths = [str(project / "data/images" / r["path"]) for r in rows]
        y = multilabel.targets(rows, labels).astype("float32")
        ds = tf.data.Dataset.from_tensor_slices((paths, y))
        if shuffle:
            ds = ds.shuffle(len(paths), seed=seed)
        load = lambda p, t: (tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(p), channels=3), (size, size)), t)  # noqa: E731
        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(32).prefetch(2), y

    train, _ = dataset("train", True)
    val, val_y = dataset("val", False)
    test, test_y = dataset("test", False)
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights="imagenet")
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.RandomRotation(0.05)(x)
    x = keras.applications.mobilenet_v2.preprocess_input(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inputs, keras.layers.Dense(len(labels), activation="sigmoid")(x))
    stop = [keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)]
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    model.fit(train, validation_data=val, epochs=args.head_epochs, callbacks=stop, verbose=2)
    head_seconds = time.perf_counter() - started
    out = {"head": scored(model, val, val_y, test, test_y, labels)}
    base.trainable = True
    for layer in base.layers[:len(base.layers) - unfreeze]:
        layer.trainable = False
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    model.compile(keras.optimizers.Adam(rate), "binary_crossentropy")
    model.fit(train, validation_data=val, epochs=args.finetune_epochs,
              callbacks=[keras.callbacks.EarlyStopping(patience=3, restore_best_weights=True)], verbose=2)
    out["finetune"] = scored(model, val, val_y, test, test_y, labels)
    out["seconds"] = {"head": round(head_seconds, 1), "total": round(time.perf_counter() - started, 1)}
    return out


def scored(model, val, val_y, test, test_y, labels) -> dict:
    from pipeline.lib import multilabel
    cut = multilabel.thresholds(val_y, model.predict(val, verbose=0))
    found = multilabel.scores(test_y, model.predict(test, verbose=0), cut, labels)
    found.pop("per_label")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head-epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    args = ap.parse_args()
    common.require_assets()
    params = common.yaml.safe_load((common.ROOT / "params.yaml").read_text())
    with tempfile.TemporaryDirectory(prefix="bench-multilabel-") as tmp:
        tmp = Path(tmp)
        env = common.environment(tmp)
        project = common.make_project(
            tmp / "project", env, fill=composites,
            ingest={"labels_csv": "labels.csv"},
            train_head={"epochs": args.head_epochs}, finetune={"epochs": args.finetune_epochs})
        text = (project / "params.yaml").read_text().replace("task: single_label", "task: multi_label")
        (project / "params.yaml").write_text(text)
        started = time.perf_counter()
        common.run(["dvc", "repro", "evaluate"], project, env)
        pipeline_seconds = time.perf_counter() - started
        metrics = json.loads((project / "reports/metrics.json").read_text())
        split = json.loads((project / "reports/split.json").read_text())
        print(f"pipeline: {pipeline_seconds:.0f} s", json.dumps(metrics), flush=True)
        import os
        os.environ.update(KERAS_HOME=env["KERAS_HOME"])
        baseline = recipe(project, args, params["finetune"]["learning_rate"], params["finetune"]["unfreeze_layers"],
                          params["base"]["image_size"], params["seed"])
    result = {"images": split["images"],
              "labels": split["labels"], "epochs": {"head": args.head_epochs, "finetune": args.finetune_epochs},
              "pipeline": {"seconds": round(pipeline_seconds, 1),
                           **{k: metrics[k] for k in ("head", "finetune", "finetune_tta") if k in metrics}},
              "recipe": baseline}
    print(json.dumps(result, indent=1))
    common.save("multilabel", result)


if __name__ == "__main__":
    main()
