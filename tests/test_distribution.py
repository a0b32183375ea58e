"""distribution.strategy: the default device, MirroredStrategy on two logical CPUs (the multi-GPU
code path, run on this CPU), two real workers on localhost, and multi-worker's TF_CONFIG handling."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from pipeline.lib import distribution
from pipeline.lib.errors import StageError

# Trains a small classifier the way the stages do (strategy first, model and trainer in its
# scope, per-replica batch scaled), then prints what happened as JSON.
TRAIN = textwrap.dedent("""
    import json, sys
    import numpy as np
    from pipeline.lib import distribution, training
    strategy = distribution.strategy(sys.argv[1])
    import keras
    import tensorflow as tf
    keras.utils.set_random_seed(0)  # the same initial weights every run: runs are compared
    with strategy.scope():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="softmax")])
        trainer = training.Trainer(model, strategy, 0.05, class_weights={0: 1.0, 1: 2.0, 2: 1.0})
    rng = np.random.default_rng(0)
    x = rng.random((200, 8)).astype("float32")
    y = np.digitize(x[:, 0], [1 / 3, 2 / 3]).astype("int32")
    batch = distribution.global_batch(16, strategy)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)  # the global batch: 16 on each of 2 replicas
    loss = [trainer.train_epoch(data)[0] for _ in range(8)]
    # 25 images: a last batch split unevenly over two replicas (13 + 12)
    evaluated = trainer.evaluate(tf.data.Dataset.from_tensor_slices((x[:25], y[:25])).batch(32))
    kernel = model.layers[0].kernel.value
    copies = [v.numpy().tolist() for v in getattr(kernel, "values", [kernel])]
    print(json.dumps({"strategy": "default" if strategy is tf.distribute.get_strategy() else type(strategy).__name__,
                      "replicas": strategy.num_replicas_in_sync,
                      "devices": list(strategy.extended.worker_devices) if sys.argv[1] != "single" else [],
                      "batch": batch, "loss": loss, "copies": copies,
                      "chief": distribution.is_chief(strategy), "evaluated": evaluated}))
""")


def train(strategy: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", TRAIN, strategy], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_single_and_auto_without_gpus_use_the_default_strategy():
    assert not tf.config.list_logical_devices("GPU")  # these machines have none
    for name in ("single", "auto"):
        strategy = distribution.strategy(name)
        assert strategy is tf.distribute.get_strategy() and strategy.num_replicas_in_sync == 1
        assert distribution.global_batch(16, strategy) == 16 and distribution.is_chief(strategy)


@pytest.fixture(scope="module")
def single() -> dict:
    return train("single")


def test_one_device_trains_with_class_weights(single):
    assert single["strategy"] == "default" and single["replicas"] == 1
    assert single["batch"] == 16 and single["loss"][-1] < 0.8 * single["loss"][0]


def test_two_logical_cpus_mirror_training_as_one_device_does(single):
    run = train("mirrored", PIPELINE_CPU_DEVICES="2")
    assert run["strategy"] == "MirroredStrategy" and run["replicas"] == 2
    assert [d.rsplit("/", 1)[-1] for d in run["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert run["batch"] == 32  # 16 per replica
    first, second = run["copies"]  # one copy of each weight per replica, kept identical
    assert len(run["copies"]) == 2 and np.allclose(first, second)
    # the same global batches, split in two: the same training, to float precision
    np.testing.assert_allclose(run["loss"], single["loss"], rtol=1e-4)
    np.testing.assert_allclose(run["evaluated"], single["evaluated"], rtol=1e-4)
    assert run["chief"]


def test_multi_worker_needs_a_valid_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(StageError, match="needs the TF_CONFIG environment variable"):
        distribution.strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{cluster: ")
    with pytest.raises(StageError, match="TF_CONFIG is not valid JSON"):
        distribution.strategy("multi_worker")


def test_the_chief_is_the_chief_task_or_else_worker_zero():
    workers = {"worker": ["a:1", "b:1"]}
    assert distribution.is_chief_task("worker", 0, workers)
    assert not distribution.is_chief_task("worker", 1, workers)
    with_chief = {"chief": ["c:1"], **workers}
    assert distribution.is_chief_task("chief", 0, with_chief)
    assert not distribution.is_chief_task("worker", 0, with_chief)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_workers_train_as_one_device_does(single):
    """Two real workers on this machine, as docs/scaling.md's TF_CONFIG example sets them up
    (keras-team/keras#20585 stops Keras' fit here; the training loop runs)."""
    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    workers = [subprocess.Popen([sys.executable, "-c", TRAIN, "multi_worker"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(
                                    {"cluster": cluster, "task": {"type": "worker", "index": i}})})
               for i in range(2)]
    results = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), results[0][1][-2000:] + results[1][1][-2000:]
    runs = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    assert [r["replicas"] for r in runs] == [2, 2] and [r["chief"] for r in runs] == [True, False]
    assert [r["batch"] for r in runs] == [32, 32]
    for run in runs:
        np.testing.assert_allclose(run["loss"], single["loss"], rtol=1e-4)
        np.testing.assert_allclose(run["evaluated"], single["evaluated"], rtol=1e-4)
