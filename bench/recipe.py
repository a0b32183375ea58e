"""The usual one-script Keras transfer-learning recipe: the baseline the pipeline is measured against.

Frozen MobileNetV2 with augmentation and ``preprocess_input`` inside the model,
a head trained for N epochs on the images, then the top layers unfrozen (with
BatchNorm frozen) at a low learning rate. Prints one JSON line of timings and
test accuracies.

    python bench/recipe.py DATA_DIR [--out result.json]   # DATA_DIR holds train/, validation/, test/
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--head-epochs", type=int, default=30)
    ap.add_argument("--head-patience", type=int, default=5)
    ap.add_argument("--unfreeze", type=int, default=54)
    ap.add_argument("--finetune-lr", type=float, default=1e-5)
    ap.add_argument("--finetune-epochs", type=int, default=10)
    ap.add_argument("--finetune-patience", type=int, default=3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", help="also write the JSON result to this file")
    args = ap.parse_args()
    started = time.perf_counter()
    keras.utils.set_random_seed(args.seed)

    size = (args.image_size, args.image_size)
    load = lambda split, shuffle: keras.utils.image_dataset_from_directory(  # noqa: E731
        os.path.join(args.data, split), image_size=size, batch_size=32, shuffle=shuffle, seed=args.seed)
    train, val, test = load("train", True), load("validation", False), load("test", False)
    classes = len(train.class_names)

    augmentation = keras.Sequential([
        keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.05),
        keras.layers.RandomZoom(0.1), keras.layers.RandomTranslation(0.1, 0.1), keras.layers.RandomContrast(0.1)])
    base = keras.applications.MobileNetV2(include_top=False, weights="imagenet", input_shape=size + (3,))
    base.trainable = False
    inputs = keras.Input(size + (3,))
    x = keras.applications.mobilenet_v2.preprocess_input(augmentation(inputs))
    x = keras.layers.GlobalAveragePooling2D()(base(x, training=False))
    outputs = keras.layers.Dense(classes, activation="softmax")(keras.layers.Dropout(0.2)(x))
    model = keras.Model(inputs, outputs)

    def fit(lr: float, epochs: int, patience: int) -> tuple[float, int]:
        model.compile(keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        stop = keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)
        start = time.perf_counter()
        history = model.fit(train, validation_data=val, epochs=epochs, callbacks=[stop], verbose=2)
        return time.perf_counter() - start, len(history.history["loss"])

    head_seconds, head_epochs = fit(args.head_lr, args.head_epochs, args.head_patience)
    head_accuracy = model.evaluate(test, verbose=0)[1]

    base.trainable = True
    for layer in base.layers[:-args.unfreeze]:
        layer.trainable = False
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    finetune_seconds, finetune_epochs = fit(args.finetune_lr, args.finetune_epochs, args.finetune_patience)
    finetune_accuracy = model.evaluate(test, verbose=0)[1]
    result = json.dumps({"head_seconds": head_seconds, "head_epochs": head_epochs, "head_accuracy": head_accuracy,
                         "finetune_seconds": finetune_seconds, "finetune_epochs": finetune_epochs,
                         "finetune_accuracy": finetune_accuracy, "total_seconds": time.perf_counter() - started})
    print(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(result + "\n")


if __name__ == "__main__":
    main()
