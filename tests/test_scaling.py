"""docs/scaling.md's two-host example, run for real on localhost: the chief's `dvc repro` and a
second worker's `python -m pipeline worker`, side by side in one project folder (the shared mount)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import digests
from project import BIN
from test_distribution import free_port

WORKER_STAGES = ["extract_features", "train_head", "finetune"]


def tf_config(cluster: dict, index: int) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


pytestmark = pytest.mark.e2e


def test_two_workers_extract_and_train_with_the_chief_writing_everything(finished, tmp_path):
    project = finished.copy(tmp_path / "project")  # ingest to augment done, on one machine
    project.set_param("distribution.strategy", "multi_worker")
    assert project.changed_stages() == set(WORKER_STAGES)
    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    # The docs' `dvc repro`, less export and summary (not distributed; the e2e tests cover them)
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("chief", "worker")}
    chief = subprocess.Popen([str(BIN / "dvc"), "repro", "evaluate"], cwd=project.path, stdout=logs["chief"],
                             stderr=subprocess.STDOUT, text=True, start_new_session=True,
                             env={**project.env, "TF_CONFIG": tf_config(cluster, 0)})
    worker = subprocess.Popen([sys.executable, "-m", "pipeline", "worker", *WORKER_STAGES], cwd=project.path,
                              stdout=logs["worker"], stderr=subprocess.STDOUT, text=True, start_new_session=True,
                              env={**project.env, "TF_CONFIG": tf_config(cluster, 1)})
    # When one side fails, the other waits on its collectives for ever (docs/scaling.md): stop both at
    # once, and show both logs, rather than wait out the timeout with the failing side's log unread.
    deadline = time.monotonic() + 900
    while (chief.poll() is None or worker.poll() is None) and time.monotonic() < deadline \
            and chief.poll() in (None, 0) and worker.poll() in (None, 0):
        time.sleep(1)
    for side in (chief, worker):
        if side.poll() is None:
            os.killpg(side.pid, signal.SIGKILL)  # the whole group: the stage processes under dvc and the worker
        side.wait()
    for f in logs.values():
        f.close()
    chief_log, worker_log = ((tmp_path / f"{name}.log").read_text() for name in ("chief", "worker"))
    assert chief.returncode == 0 and worker.returncode == 0, chief_log[-3000:] + worker_log[-3000:]

    assert worker_log.count("distribution: MultiWorkerMirroredStrategy, 2 replica(s) in sync") == 3
    assert worker_log.count("this is task 2 of 2\n") == 3 and chief_log.count("this is task 1 of 2 (the chief)") == 3
    for path in ("data/features", "models/extractor.keras", "models/head.keras", "models/model.keras"):
        assert f"not the chief: {path} goes to a throw-away folder" in worker_log
    assert "not the chief" not in chief_log
    assert project.changed_stages() == {"calibrate", "export", "summary"}  # the chief's outputs are the ones dvc.lock records
    assert project.metrics()["finetune"]["accuracy"] > 0.6  # three classes: chance is 1/3

    # The extraction split between two workers gives the bytes of one machine's (the finished project's)
    assert digests(project.path, ["data/features"]) == digests(finished.path, ["data/features"])
    assert len(np.load(project.path / "data" / "features" / "train_x.npy")) > 0
