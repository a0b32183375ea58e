"""Where training runs (``distribution.strategy``): one device, every local GPU, or several machines.

  single        the default device (one GPU if there is one, else the CPU)
  auto          MirroredStrategy over every local GPU when there are two or more, else single
  mirrored      MirroredStrategy over every local GPU, or over the logical CPUs if there is none
  multi_worker  MultiWorkerMirroredStrategy: every machine runs the same stage command with its
                own TF_CONFIG (docs/scaling.md); worker 0 (or the chief) writes
                the outputs, the others write to a temporary folder that is thrown away.

Training runs in ``training.Trainer``'s loop under every strategy (Keras 3's ``fit`` fails
under MultiWorkerMirroredStrategy, keras-team/keras#20585).

The batch sizes in params.yaml are per replica: each step takes ``batch_size`` images per
device, ``batch_size * replicas`` in all (``global_batch``), as the Keras guides do, so adding
GPUs speeds up epochs instead of shrinking each device's share.

``PIPELINE_CPU_DEVICES=N`` splits the CPU into N logical devices before TensorFlow starts:
it runs the mirrored code path on a machine without GPUs (the tests do).
"""
from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from pipeline.lib.errors import StageError

log = logging.getLogger("pipeline.lib.distribution")
STRATEGIES = ("single", "auto", "mirrored", "multi_worker")


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
            raise StageError(f"TF_CONFIG is not valid JSON ({err})") from err
        # TensorFlow logs every collective op at INFO under multi-worker; its warnings still show.
        logging.getLogger("tensorflow").setLevel(logging.WARNING)
        chosen = tf.distribute.MultiWorkerMirroredStrategy()
    elif name not in STRATEGIES:
        raise StageError(f"distribution.strategy must be one of {', '.join(STRATEGIES)}; got {name!r}")
    else:
        gpus = tf.config.list_logical_devices("GPU")
        if name == "single" or (name == "auto" and len(gpus) < 2):
            chosen = tf.distribute.get_strategy()  # the default strategy: no replicas, no overhead
        else:
            chosen = tf.distribute.MirroredStrategy([d.name for d in gpus or tf.config.list_logical_devices("CPU")])
    # Named from the public classes, never type(chosen).__name__ (the default one's is private)
    kind = ("MultiWorkerMirroredStrategy" if name == "multi_worker" else "MirroredStrategy"
            if isinstance(chosen, tf.distribute.MirroredStrategy) else "the default strategy (one device)")
    log.info("distribution: %s, %d replica(s) in sync", kind, chosen.num_replicas_in_sync)
    if name == "multi_worker":
        index, workers = worker_share(chosen)
        log.info("this is task %d of %d%s", index + 1, workers, " (the chief)" if is_chief(chosen) else "")
    return chosen


def global_batch(per_replica: int, chosen: tf.distribute.Strategy) -> int:
    return per_replica * chosen.num_replicas_in_sync


def is_chief(chosen: tf.distribute.Strategy) -> bool:
    """Whether this process writes the outputs: always, except on multi-worker's other workers."""
    resolver = getattr(chosen, "cluster_resolver", None)
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
    log.info("not the chief: %s goes to a throw-away folder", path)
    folder = tempfile.mkdtemp(prefix="worker-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Path(folder) / path.name


def worker_share(chosen: tf.distribute.Strategy) -> tuple[int, int]:
    """``(index, workers)``: this machine's place among the cluster's tasks, ``(0, 1)`` unless
    multi-worker. Work split by hand (feature extraction) goes by it."""
    resolver = getattr(chosen, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 0, 1
    cluster = resolver.cluster_spec().as_dict()
    tasks = [(kind, i) for kind in ("chief", "worker") for i in range(len(cluster.get(kind, [])))]
    return tasks.index((resolver.task_type, resolver.task_id)), len(tasks)


def all_gather(chosen: tf.distribute.Strategy, values: tuple[tf.Tensor, ...]) -> tuple[tf.Tensor, ...]:
    """Every worker's ``values`` concatenated (same shapes on every worker), on every worker:
    a collective op, so every worker must call it the same number of times."""
    if worker_share(chosen)[1] == 1:
        return values
    return tuple(chosen.experimental_local_results(g)[0] for g in _gather_function(chosen)(*values))


@functools.cache
def _gather_function(chosen: tf.distribute.Strategy):
    """One compiled all-gather per strategy (TensorFlow warns that eager collectives are slow)."""
    def gather(*values):
        # Placed on this worker's device: traced from plain tensors, the collective would have no
        # device to gather to ("destinations can not be empty").
        with tf.device(chosen.extended.worker_devices[0]):
            values = tuple(tf.identity(v) for v in values)
        return tf.distribute.get_replica_context().all_gather(values, axis=0)

    return tf.function(lambda *values: chosen.run(gather, args=values))


def barrier(chosen: tf.distribute.Strategy) -> None:
    """Wait until every worker gets here: workers leave a stage only once the chief has written
    its outputs, which their next stage reads."""
    if worker_share(chosen)[1] > 1:
        all_gather(chosen, (tf.zeros([1]),))


def scratch_path(path: Path, chosen: tf.distribute.Strategy) -> Path:
    """``path`` on the chief; beside it, one per task, on the other workers: each worker keeps
    its own backup (two workers may share a machine and a folder)."""
    if is_chief(chosen):
        return Path(path)
    resolver = chosen.cluster_resolver
    return Path(path).with_name(f"{Path(path).name}-{resolver.task_type}-{resolver.task_id}")


def _split_cpu() -> None:
    n = int(os.environ.get("PIPELINE_CPU_DEVICES") or 0)
    if n < 2:
        return
    try:  # list_physical_devices does not start the runtime; list_logical_devices would
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as err:  # the runtime has started: fine if it was split already (a second call)
        if len(tf.config.list_logical_devices("CPU")) != n:
            raise StageError("PIPELINE_CPU_DEVICES takes effect only before TensorFlow starts: "
                             "call distribution.strategy() before building any model") from err
