"""distribution.strategy: the default device, MirroredStrategy on one device and on two logical
CPUs (the multi-GPU code path, run on this CPU), and multi-worker's TF_CONFIG handling."""
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
from pipeline.lib import distribution, training
from pipeline.lib.artifacts import StageError

# Trains a small classifier the way the stages do (strategy first, model and compile in its
# scope, per-replica batch scaled), then prints what happened as JSON.
TRAIN = textwrap.dedent("""
    import json, sys
    import numpy as np
    from pipeline.lib import distribution, training
    strategy = distribution.strategy(sys.argv[1])
    import keras
    keras.utils.set_random_seed(0)  # the same initial weights every run: the loss test is not left to chance
    with strategy.scope():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
        training.compile_classifier(model, 0.05)
    rng = np.random.default_rng(0)
    x = rng.random((200, 8)).astype("float32")
    y = np.digitize(x[:, 0], [1 / 3, 2 / 3]).astype("int32")
    history = model.fit(x, y, batch_size=distribution.global_batch(16, strategy), epochs=8, verbose=0,
                        class_weight={0: 1.0, 1: 2.0, 2: 1.0})
    # a fresh model's first batch split unevenly over two replicas (13 + 12), as 24 validation
    # images on two replicas of 16 are in the e2e run: distribution._build_from_one_replica
    with strategy.scope():
        fresh = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
        training.compile_classifier(fresh, 0.05)
    evaluated = fresh.evaluate(x[:25], y[:25], batch_size=distribution.global_batch(16, strategy), verbose=0)
    kernel = model.layers[0].kernel.value
    copies = [v.numpy().tolist() for v in getattr(kernel, "values", [kernel])]
    print(json.dumps({"strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
                      "devices": list(getattr(strategy.extended, "worker_devices", [])),
                      "batch": distribution.global_batch(16, strategy), "loss": history.history["loss"],
                      "steps_per_execution": model.steps_per_execution, "copies": copies,
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


def test_one_device_mirrored_strategy_trains():
    run = train("mirrored")
    assert run["strategy"] == "MirroredStrategy" and run["replicas"] == 1 and run["batch"] == 16
    assert run["steps_per_execution"] == training.STEPS_PER_EXECUTION
    assert run["loss"][-1] < 0.8 * run["loss"][0]


def test_two_logical_cpus_mirror_training_with_a_scaled_batch():
    run = train("mirrored", PIPELINE_CPU_DEVICES="2")
    assert run["strategy"] == "MirroredStrategy" and run["replicas"] == 2
    assert [d.rsplit("/", 1)[-1] for d in run["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert run["batch"] == 32  # 16 per replica
    assert run["steps_per_execution"] == 1  # keras-team/keras#19246
    assert run["loss"][-1] < 0.8 * run["loss"][0]
    first, second = run["copies"]  # one copy of each weight per replica, kept identical
    assert len(run["copies"]) == 2 and np.allclose(first, second)
    assert run["chief"] and len(run["evaluated"]) == 2  # loss, accuracy of the unevenly split batch


def test_multi_worker_needs_a_valid_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(StageError, match="needs the TF_CONFIG environment variable"):
        distribution.strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{cluster: ")
    with pytest.raises(StageError, match="TF_CONFIG is not valid JSON"):
        distribution.strategy("multi_worker")


def test_multi_worker_stops_with_the_upstream_reason_until_keras_fit_supports_it(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(StageError, match=r"keras-team/keras#20585"):
        distribution.strategy("multi_worker")


def test_the_keras_patch_refuses_a_keras_it_was_not_written_for(monkeypatch):
    import keras

    monkeypatch.setattr(keras, "__version__", "3.99.0")
    with pytest.raises(StageError, match=r"patch written for Keras 3.15.1 .* this is Keras 3.99.0"):
        distribution._build_from_one_replica()


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


@pytest.mark.xfail(strict=True, reason="keras-team/keras#20585: Keras 3's fit fails under "
                   "MultiWorkerMirroredStrategy. When this passes, set distribution.MULTI_WORKER_FIT_WORKS")
def test_two_workers_train_with_keras_fit():
    """Two real workers on this machine, as docs/scaling.md's TF_CONFIG example sets them up."""
    script = TRAIN.replace("distribution.strategy(sys.argv[1])", "__import__('tensorflow').distribute."
                           "MultiWorkerMirroredStrategy()")
    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    workers = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(
                                    {"cluster": cluster, "task": {"type": "worker", "index": i}})})
               for i in range(2)]
    results = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), results[0][1][-2000:]
    runs = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    assert [r["replicas"] for r in runs] == [2, 2] and [r["chief"] for r in runs] == [True, False]
