"""A killed training stage leaves no model behind and, re-run, continues from its last checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from .conftest import OFFLINE_ENV

pytestmark = pytest.mark.slow
PHASE = "modernbert-xtr"  # the KD phase: smoke profile saves a checkpoint every 20 of its 60 steps


def test_killed_training_resumes_from_its_checkpoint(smoke_run, tmp_path):
    workspace = tmp_path / "ws"
    shutil.copytree(smoke_run.workspace, workspace, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    shutil.rmtree(workspace / "models" / PHASE)
    env = os.environ | OFFLINE_ENV | {"MLFLOW_TRACKING_URI": f"sqlite:///{workspace}/mlflow.db"}
    command = [sys.executable, "stages/train.py", PHASE]

    process = subprocess.Popen(command, cwd=workspace, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_checkpoint = workspace / "checkpoints" / PHASE / "checkpoint-20" / "checkpoint_complete.json"  # written last
    deadline = time.monotonic() + 300
    while not first_checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first_checkpoint.exists(), "training never wrote its first checkpoint"
    process.send_signal(signal.SIGKILL)
    process.wait()
    import torch

    saved = sorted((workspace / "checkpoints" / PHASE).glob("checkpoint-*/loss_temperature.pt"))
    assert saved, "the learnable temperature is saved with each checkpoint"
    temperature_at_kill = float(torch.load(saved[-1])["temperature"])
    assert not (workspace / "models" / PHASE).exists(), "a killed stage must not leave a model behind"

    result = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workspace / "models" / PHASE / "model.safetensors").exists()
    assert not (workspace / "checkpoints" / PHASE).exists(), "checkpoints are removed once the model is saved"

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    run_id = json.loads((workspace / "runs" / f"{PHASE}.json").read_text())["run_id"]
    tags = client.get_run(run_id).data.tags
    resumed_from = tags["resumed_from"]
    assert float(tags["resumed_temperature"]) == pytest.approx(temperature_at_kill, rel=1e-6)
    step = int(resumed_from.rsplit("-", 1)[1])
    assert step >= 20
    logged_steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert logged_steps and min(logged_steps) > step, f"resumed at {step} but logged {logged_steps}"
    assert max(logged_steps) == 60
    # The dvc plots loss curve is whole: the trainer's log history comes back with the checkpoint.
    curve = (workspace / "plots" / PHASE / "loss.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in curve[1:]] == list(range(10, 61, 10))
    # The temperature carried on from the checkpoint (it starts at the phase's value and moves with training).
    from retrievers.config import load_params

    initial = load_params(workspace / "params.yaml").phases[PHASE].temperature
    assert temperature_at_kill != pytest.approx(initial, abs=1e-7)
    assert client.get_run(run_id).data.metrics["final_temperature"] != pytest.approx(initial, abs=1e-7)
