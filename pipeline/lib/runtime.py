"""What TensorFlow runs on, and how reproducibly: the devices it sees (warning when the NVIDIA driver
lists a GPU it does not), and seeds with deterministic ops."""
from __future__ import annotations

import logging
import re
import shutil
import subprocess

import keras
import tensorflow as tf

log = logging.getLogger("pipeline.lib.runtime")


def log_devices() -> list[str]:
    """Log the devices TensorFlow runs on (``devices: GPU:0 NVIDIA H100``, or ``devices: CPU (no GPU
    visible)``) and warn when the NVIDIA driver lists a GPU that TensorFlow does not see."""
    gpus = tf.config.list_physical_devices("GPU")
    names = [f"GPU:{i} {tf.config.experimental.get_device_details(gpu).get('device_name', gpu.name)}"
             for i, gpu in enumerate(gpus)]
    log.info("devices: %s", ", ".join(names) if names else "CPU (no GPU visible)")
    driver = driver_gpus()
    if driver and not gpus:
        why = ("this TensorFlow is built without CUDA (tensorflow-cpu): `make setup TENSORFLOW=cuda` "
               "installs the CUDA build" if not tf.test.is_built_with_cuda() else
               "its CUDA libraries do not work with this driver: compare the CUDA version `nvidia-smi` "
               "shows with `python -c 'import tensorflow as tf; print(tf.sysconfig.get_build_info())'`, "
               "and check LD_LIBRARY_PATH and CUDA_VISIBLE_DEVICES")
        log.warning("nvidia-smi lists %s but TensorFlow sees no GPU, so this runs on the CPU: %s",
                    ", ".join(driver), why)
    return names


def driver_gpus() -> list[str]:
    """The GPUs ``nvidia-smi -L`` lists (``GPU 0: NVIDIA H100 80GB HBM3 (UUID: ...)``), by name;
    empty where there is no NVIDIA driver."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):  # a driver that does not answer lists no GPU
        return []
    return [m.group(1) for m in re.finditer(r"^GPU \d+: (.+?)(?: \(UUID: [^)]*\))?\s*$", out, re.M)]


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow's ops deterministic.

    Same data, params and seed then give byte-identical shards, features,
    weights and metrics on the CPU (tests/test_e2e.py compares two runs).
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
