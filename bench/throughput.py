"""Benchmarks 3 and 4: stage throughput against the raw model on in-memory tensors.

3. extract-features: images/s of the stage's feature loop (shards read, decoded
   and batched by tf.data) against the bare backbone forward pass on an
   in-memory batch of the same size. Target: at least 90% of raw.
4. finetune: training images/s per epoch (validation excluded, first epoch
   excluded as warm-up) against a plain `train_on_batch` loop on in-memory
   tensors with the same model and trainable layers. Target: at least 85%.
   Also the stage under distribution.precision=mixed_bfloat16 (float32 raw loop).
Default params.yaml, offline clothing photos.   python bench/throughput.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import yaml

from common import BIN, ROOT, environment, make_project, median, rates, require_assets, run, save, table

FINETUNE_EPOCHS = 3


def raw_rates(env: dict, params: dict) -> tuple[float, float]:
    """(forward images/s, train_on_batch images/s) of the bare model in this process."""
    os.environ.update(env)  # KERAS_HOME must be set before Keras is imported
    sys.path.insert(0, str(ROOT))
    import keras
    import numpy as np
    import tensorflow as tf

    from pipeline.lib import models, runtime

    runtime.set_seed(params["seed"])
    extractor = models.build_extractor(SimpleNamespace(**params["base"]))
    size = params["base"]["image_size"]
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (params["extract"]["batch_size"], size, size, 3)),
                    tf.float32)
    forward = tf.function(lambda batch: extractor(batch, training=False))

    def per_second(step, batch, warmup=3, repeats=20):
        for _ in range(warmup):
            step()
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        return repeats * batch / (time.perf_counter() - start)

    forward_rate = per_second(lambda: forward(x).numpy(), len(x))
    head = models.build_head(np.random.default_rng(1).normal(size=(64, extractor.output_shape[-1])).astype("float32"),
                             10, params["train_head"]["hidden_units"], params["train_head"]["dropout"])
    model = models.assemble(extractor, head)
    models.unfreeze_top(models.backbone_of(model), params["finetune"]["unfreeze_layers"])
    model.compile(keras.optimizers.Adam(params["finetune"]["learning_rate"]), loss="sparse_categorical_crossentropy")
    batch = params["finetune"]["batch_size"]
    xb = tf.constant(np.random.default_rng(2).uniform(0, 255, (batch, size, size, 3)), tf.float32)
    yb = np.arange(batch) % 10
    train_rate = per_second(lambda: model.train_on_batch(xb, yb), batch, repeats=30)
    return forward_rate, train_rate


def main() -> None:
    require_assets()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        tmp = Path(tmp)
        env = environment(tmp)
        project = make_project(tmp / "project", env, finetune={"epochs": FINETUNE_EPOCHS, "patience": FINETUNE_EPOCHS})
        dvc = str(BIN / "dvc")
        print("pipeline stages ...", flush=True)
        run([dvc, "repro", "train_head"], project, env)
        _, extract_log = run([dvc, "repro", "-f", "-s", "extract_features"], project, env)
        _, finetune_log = run([dvc, "repro", "finetune"], project, env)
        _, plain_log = run([dvc, "exp", "run", "finetune", "-S", "finetune.online_augmentation=false"], project, env)
        _, bf16_log = run([dvc, "exp", "run", "finetune", "-S", "finetune.online_augmentation=true",
                           "-S", "distribution.precision=mixed_bfloat16"], project, env)
        print("raw model on in-memory tensors ...", flush=True)
        raw_forward, raw_train = raw_rates(env, params)  # inside: the Keras cache lives in tmp
    extract = rates(extract_log, "extracted")[0]
    finetune = median(rates(finetune_log, "trained on")[1:])
    plain = median(rates(plain_log, "trained on")[1:])
    # distribution.precision reruns train_head too: finetune's epochs are the log's last ones
    bf16 = median(rates(bf16_log, "trained on")[-FINETUNE_EPOCHS:][1:])

    table("3. Extract-features throughput (target >= 90% of raw)", ["", "images/s", "share of raw"],
          [["raw forward, in-memory batch", raw_forward, "100%"],
           ["extract_features stage", extract, f"{extract / raw_forward:.0%}"]])
    table("4. Finetune throughput per epoch (target >= 85% of raw)", ["", "images/s", "share of raw"],
          [["raw train_on_batch, in-memory batch", raw_train, "100%"],
           ["finetune stage, online augmentation on (default)", finetune, f"{finetune / raw_train:.0%}"],
           ["finetune stage, online augmentation off", plain, f"{plain / raw_train:.0%}"],
           ["finetune stage, augmentation on, mixed_bfloat16", bf16, f"{bf16 / raw_train:.0%}"]])
    save("throughput", {
        "extract": {"stage_images_per_s": extract, "raw_images_per_s": raw_forward,
                    "share": extract / raw_forward, "target": 0.9},
        "finetune": {"stage_images_per_s": finetune, "stage_no_augmentation_images_per_s": plain,
                     "raw_images_per_s": raw_train, "share": finetune / raw_train,
                     "share_no_augmentation": plain / raw_train, "stage_mixed_bfloat16_images_per_s": bf16,
                     "share_mixed_bfloat16": bf16 / raw_train, "target": 0.85},
    })


if __name__ == "__main__":
    main()
