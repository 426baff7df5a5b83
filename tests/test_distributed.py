"""Multi-GPU training, shown on CPU: `train@<phase>` with nproc_per_node 2 runs under torchrun (DDP over gloo)."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from .conftest import REPO, run
from .test_splade import tiny_neobert  # noqa: F401  (the tiny NeoBERT fixture)

pytestmark = pytest.mark.slow
PER_DEVICE_BATCH = 4
STEPS = 3
SAMPLES = 2 * PER_DEVICE_BATCH * STEPS  # one epoch is STEPS steps only if both ranks share the data
PHASES = {"modernbert-xtr-contrastive": "modernbert-xtr", "neobert-splade": "neobert-splade"}  # phase: model


@pytest.fixture(scope="module")
def ddp_workspace(tmp_path_factory):
    """The smoke profile with both first phases set to 2 processes and a few steps, trained through `dvc repro`."""
    workspace = tmp_path_factory.mktemp("ddp") / "ws"
    run([sys.executable, "-m", "retrievers.profile", "smoke", str(workspace)], cwd=REPO)
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    for phase in PHASES:
        held_out = params["phases"][phase].get("eval_samples", 0) and PER_DEVICE_BATCH  # SPLADE splits these off
        params["phases"][phase] |= {"nproc_per_node": 2, "max_train_samples": SAMPLES + held_out}
        if held_out:
            params["phases"][phase]["eval_samples"] = held_out
        params["phases"][phase]["args"] |= {"per_device_train_batch_size": PER_DEVICE_BATCH, "max_steps": -1,
                                            "num_train_epochs": 1, "logging_steps": 1, "save_steps": 1000,
                                            "eval_steps": 1000}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    uri = f"sqlite:///{workspace}/mlflow.db"
    run(["dvc", "repro", *(f"train@{phase}" for phase in PHASES)], cwd=workspace, env={"MLFLOW_TRACKING_URI": uri})
    return workspace, uri


@pytest.mark.parametrize("phase", PHASES)
def test_two_process_training_shares_the_data_and_writes_once(ddp_workspace, phase):
    from mlflow import MlflowClient

    workspace, uri = ddp_workspace
    assert (workspace / "models" / phase / "model.safetensors").exists()
    assert not (workspace / "checkpoints" / phase).exists()
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(PHASES[phase]).experiment_id])
    assert len(runs) == 1, "only rank 0 opens an MLflow run"
    run_id = json.loads((workspace / "runs" / f"{phase}.json").read_text())["run_id"]
    assert runs[0].info.run_id == run_id
    assert runs[0].data.tags["world_size"] == "2"
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert max(steps) == STEPS
    # One epoch of SAMPLES in STEPS steps: each step took 2 ranks x PER_DEVICE_BATCH samples (one rank: 2 x STEPS).
    epochs = {m.step: m.value for m in client.get_metric_history(run_id, "epoch")}
    assert epochs[STEPS] == pytest.approx(1.0)


def test_a_failed_torchrun_ends_the_stage_in_one_line(tmp_path):
    """The ranks print their own errors; the launching stage then ends with one line, not a second traceback."""
    from retrievers.paths import Workspace
    from retrievers.train.common import launch_torchrun

    # no stages/train.py under this root: both ranks fail at once
    with pytest.raises(SystemExit) as exit_info:
        launch_torchrun(Workspace(tmp_path), "modernbert-xtr-contrastive", 2)
    message = str(exit_info.value.code)
    assert message.startswith("train@modernbert-xtr-contrastive: error: torchrun exited with status ")
    assert "\n" not in message


def test_two_process_splade_resumed_mid_epoch_equals_uninterrupted(tiny_neobert, tmp_path):  # noqa: F811
    """DDP on CPU: a run resumed from a mid-epoch checkpoint (after an in-training evaluation; each rank's collator
    state in its own file) ends with the uninterrupted run's weights and losses. The resume once failed in the
    trainer's optimizer load (map_location cpu:<rank>)."""
    import torch

    def launch(output, *resume):
        run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             str(REPO / "tests" / "ddp_splade_rank.py"), str(tiny_neobert), str(output), *resume], cwd=tmp_path)
        return torch.load(output / "final.pt")

    straight = launch(tmp_path / "straight")
    assert straight["world_size"] == 2 and max(straight["losses"]) == 8  # 2 epochs of 4 two-rank steps
    checkpoint = tmp_path / "straight" / "checkpoint-2"
    assert {p.name for p in checkpoint.glob("collator_state*")} == {"collator_state_rank0.pt",
                                                                     "collator_state_rank1.pt"}
    resumed = launch(tmp_path / "resumed", str(checkpoint))
    assert {s: v for s, v in resumed["losses"].items() if s > 2} == {s: v for s, v in straight["losses"].items()
                                                                      if s > 2}
    assert all(torch.equal(resumed["weights"][k], straight["weights"][k]) for k in straight["weights"])

