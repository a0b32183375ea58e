"""Where training runs (``distribution.strategy``): one device, every local GPU, or several machines.

  single        the default device (one GPU if there is one, else the CPU)
  auto          MirroredStrategy over every local GPU when there are two or more, else single
  mirrored      MirroredStrategy over every local GPU, or over the logical CPUs if there is none
  multi_worker  MultiWorkerMirroredStrategy: every machine runs the same stage command with its
                own TF_CONFIG (docs/scaling.md); worker 0 (or the chief) writes
                the outputs, the others write to a temporary folder that is thrown away.
                Blocked for now: Keras 3's Model.fit fails under this strategy
                (keras-team/keras#20585, open; tests/test_distribution.py notices the fix)

The batch sizes in params.yaml are per replica: each step takes ``batch_size`` images per
device, ``batch_size * replicas`` in all (``global_batch``), as the Keras guides do, so adding
GPUs speeds up epochs instead of shrinking each device's share.

``PIPELINE_CPU_DEVICES=N`` splits the CPU into N logical devices before TensorFlow starts:
it runs the mirrored code path on a machine without GPUs (the tests do).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import tensorflow as tf

from pipeline.lib.artifacts import StageError

log = logging.getLogger("pipeline.lib.distribution")
STRATEGIES = ("single", "auto", "mirrored", "multi_worker")
# Keras 3.15's TensorFlow trainer reduces a PerReplica batch that MultiWorkerMirroredStrategy
# cannot reduce (keras-team/keras#20585, tensorflow/tensorflow#72388): fit fails on the
# first step. tests/test_distribution.py runs two real workers and fails once that is fixed.
MULTI_WORKER_FIT_WORKS = False
PATCHED_KERAS = "3.15.1"  # the Keras whose private trainer method _build_from_one_replica replaces


def strategy(name: str) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy for ``distribution.strategy``; call it before building any model."""
    _split_cpu()
    if name == "multi_worker":  # first: collective ops must be configured before the runtime starts
        if "TF_CONFIG" not in os.environ:
            raise StageError("distribution.strategy multi_worker needs the TF_CONFIG environment variable "
                             "(the cluster's workers and this one's index; docs/scaling.md)")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError as err:
            raise StageError(f"TF_CONFIG is not valid JSON ({err})") from None
        if not MULTI_WORKER_FIT_WORKS:
            raise StageError("distribution.strategy multi_worker: Keras 3's Model.fit cannot train under "
                             "MultiWorkerMirroredStrategy yet (keras-team/keras#20585); use mirrored (all GPUs "
                             "of one machine) or single")
        chosen = tf.distribute.MultiWorkerMirroredStrategy()
    elif name not in STRATEGIES:
        raise StageError(f"distribution.strategy must be one of {', '.join(STRATEGIES)}; got {name!r}")
    else:
        gpus = tf.config.list_logical_devices("GPU")
        if name == "single" or (name == "auto" and len(gpus) < 2):
            chosen = tf.distribute.get_strategy()  # the default strategy: no replicas, no overhead
        else:
            chosen = tf.distribute.MirroredStrategy([d.name for d in gpus or tf.config.list_logical_devices("CPU")])
    if chosen.num_replicas_in_sync > 1:
        _build_from_one_replica()
    log.info("distribution: %s, %d replica(s) in sync", type(chosen).__name__, chosen.num_replicas_in_sync)
    return chosen


def global_batch(per_replica: int, chosen: tf.distribute.Strategy) -> int:
    return per_replica * chosen.num_replicas_in_sync


def is_chief(chosen: tf.distribute.Strategy) -> bool:
    """Whether this process writes the outputs: always, except on multi-worker's other workers."""
    resolver = getattr(chosen.extended, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return is_chief_task(resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict())


def is_chief_task(task_type: str, task_id: int, cluster: dict) -> bool:
    """TF_CONFIG's rule: the "chief" task if the cluster has one, else worker 0."""
    return task_type == "chief" or ("chief" not in cluster and task_type == "worker" and task_id == 0)


def output_path(path: Path, chosen: tf.distribute.Strategy) -> Path:
    """``path`` on the chief; a throw-away path elsewhere (every worker must save, since saving
    may run collective ops, but only the chief's files are the stage's outputs)."""
    if is_chief(chosen):
        return path
    return Path(tempfile.mkdtemp(prefix="worker-")) / path.name


def _build_from_one_replica() -> None:
    """Keras 3.15 builds a model's metrics from the first batch averaged over the replicas
    (``strategy.reduce``), which fails when that batch splits unevenly: 24 validation images
    on two replicas of 16 ("Inputs to operation AddN must have the same size and shape",
    keras-team/keras#19246). Only the batch's shapes and dtypes matter there, so build from
    the first replica's part instead. Keras is pinned; tests/test_distribution.py and the
    e2e mirrored run exercise this. The patch replaces a private method, so it is applied only
    to the Keras version it was written against."""
    import inspect

    import keras
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    original = getattr(TensorFlowTrainer, "_maybe_symbolic_build", None)
    if keras.__version__ != PATCHED_KERAS or original is None or \
            list(inspect.signature(original).parameters) != ["self", "iterator", "data_batch"]:
        raise StageError(f"distribution.strategy with 2+ replicas needs a patch written for Keras {PATCHED_KERAS} "
                         f"(pipeline/lib/distribution.py, keras-team/keras#19246); this is Keras {keras.__version__}. "
                         "Check whether that Keras fixes the bug, then update or drop the patch and PATCHED_KERAS")

    def build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return  # as Keras: built when the step function is traced
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0], next(batches))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    TensorFlowTrainer._maybe_symbolic_build = build


def _split_cpu() -> None:
    n = int(os.environ.get("PIPELINE_CPU_DEVICES") or 0)
    if n < 2:
        return
    try:  # list_physical_devices does not start the runtime; list_logical_devices would
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:  # the runtime has started: fine if it was split already (a second call)
        if len(tf.config.list_logical_devices("CPU")) != n:
            raise StageError("PIPELINE_CPU_DEVICES takes effect only before TensorFlow starts: "
                             "call distribution.strategy() before building any model") from None
