"""docs/scaling.md's two-host example, run for real on localhost: the chief's `dvc repro` and a
second worker's `python -m pipeline.worker`, side by side in one project folder (the shared mount)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from project import BIN
from shapes import make_dataset
from test_distribution import free_port
from tiny_run import tiny_project

WORKER_STAGES = ["extract_features", "train_head", "finetune"]


def tf_config(cluster: dict, index: int) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def test_two_workers_extract_and_train_with_the_chief_writing_everything(tmp_path):
    project = tiny_project(tmp_path / "project", make_dataset(tmp_path / "shapes", per_class=40, size=40))
    project.set_param("distribution.strategy", "multi_worker")
    project.repro("augment")  # the stages before the distributed ones, on the chief alone
    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    # The docs' `dvc repro`, less export and summary (not distributed; the e2e tests cover them)
    chief = subprocess.Popen([str(BIN / "dvc"), "repro", "evaluate"], cwd=project.path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env={**project.env, "TF_CONFIG": tf_config(cluster, 0)})
    worker = subprocess.Popen([sys.executable, "-m", "pipeline.worker", *WORKER_STAGES], cwd=project.path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**project.env, "TF_CONFIG": tf_config(cluster, 1)})
    chief_log, worker_log = (p.communicate(timeout=900)[0] for p in (chief, worker))
    assert chief.returncode == 0 and worker.returncode == 0, chief_log[-3000:] + worker_log[-3000:]

    (tmp_path / "chief.log").write_text(chief_log)
    (tmp_path / "worker.log").write_text(worker_log)
    assert worker_log.count("distribution: MultiWorkerMirroredStrategy, 2 replica(s) in sync") == 3
    assert worker_log.count("this is task 2 of 2\n") == 3 and chief_log.count("this is task 1 of 2 (the chief)") == 3
    for path in ("data/features", "models/extractor.keras", "models/head.keras", "models/model.keras"):
        assert f"not the chief: {path} goes to a throw-away folder" in worker_log
    assert "not the chief" not in chief_log
    assert project.changed_stages() == {"export", "summary"}  # the chief's outputs are the ones dvc.lock records
    assert project.metrics()["finetune"]["accuracy"] > 0.6  # three classes: chance is 1/3

    # The same extraction on one machine: the same bytes
    features = {f.name: f.read_bytes() for f in (project.path / "data" / "features").iterdir()}
    project.set_param("distribution.strategy", "single")
    out = project.run("dvc", "repro", "-f", "-s", "extract_features")
    assert "Running stage 'extract_features'" in out.stdout
    assert {f.name: f.read_bytes() for f in (project.path / "data" / "features").iterdir()} == features
    assert len(np.load(project.path / "data" / "features" / "train_x.npy")) > 0
