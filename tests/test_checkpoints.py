"""Checkpoints a kill cut short are never resumed from; a corrupt latest one is skipped with a warning naming it;
the batch sampler gives a resumed epoch the same order as an uninterrupted one."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch
import yaml

from retrievers.config import parse_params
from retrievers.paths import Workspace
from retrievers.train.common import CHECKPOINT_SEAL, EpochSeededBatchSampling, prepare_checkpoints

from .conftest import REPO

PHASE = "modernbert-xtr"
WEIGHTS = REPO / "fixtures" / "models" / "tiny-modernbert" / "model.safetensors"


def _checkpoint(folder, step: int, sealed: bool = True):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    shutil.copy(WEIGHTS, path / "model.safetensors")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    torch.save({"state": {}}, path / "optimizer.pt")
    if sealed:
        (path / CHECKPOINT_SEAL).write_text(json.dumps({"step": step}))
    return path


def test_unsealed_and_corrupt_checkpoints_are_skipped_with_a_warning(tmp_path, caplog):
    ws = Workspace(tmp_path)
    params = parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert prepare_checkpoints(ws, params, PHASE) is None
    folder = tmp_path / "checkpoints" / PHASE
    _checkpoint(folder, 4)
    corrupt = _checkpoint(folder, 8)
    os.truncate(corrupt / "model.safetensors", 1000)
    _checkpoint(folder, 12, sealed=False)  # killed while saving: no seal
    torn = _checkpoint(folder, 16)
    (torn / "optimizer.pt").write_bytes(b"\x80\x02 not a whole pickle")
    with caplog.at_level(logging.WARNING, logger="retrievers.train.common"):
        chosen = prepare_checkpoints(ws, params, PHASE)
    assert chosen == str(folder / "checkpoint-4")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all("\n" not in w for w in warnings)
    assert f"skipping corrupt checkpoint {folder}/checkpoint-16 (UnpicklingError" in warnings[0]
    assert "checkpoint-12: not sealed" in warnings[1]
    assert f"skipping corrupt checkpoint {folder}/checkpoint-8 ({folder}/checkpoint-8/model." \
           "safetensors: unreadable weights" in warnings[2]
    assert (folder / "checkpoint-16").exists(), "nothing is deleted: the trainer rotates checkpoints itself"


def test_a_changed_config_or_a_damaged_stamp_starts_afresh(tmp_path):
    ws = Workspace(tmp_path)
    params = parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    prepare_checkpoints(ws, params, PHASE)
    folder = tmp_path / "checkpoints" / PHASE
    _checkpoint(folder, 4)
    (folder / "phase_config.json").write_text('{"sha2')  # a torn stamp: never trusted
    assert prepare_checkpoints(ws, params, PHASE) is None and not (folder / "checkpoint-4").exists()


@pytest.mark.parametrize("kind", ["batch_sampler", "no_duplicates"])
def test_a_resumed_epoch_has_the_uninterrupted_order(kind):
    """The factory's samplers shuffle with seed + the epoch the trainer's state says, not with a generator that a
    resumed run would restart (the stock RandomSampler's) or a set_epoch that skip_first_batches does not forward."""
    from datasets import Dataset

    dataset = Dataset.from_dict({"query": [f"q{i}" for i in range(40)], "positive": [f"p{i}" for i in range(40)]})

    def orders(epochs):
        sampling = EpochSeededBatchSampling(kind)
        sampler = sampling(dataset, batch_size=8, drop_last=True, generator=torch.Generator().manual_seed(7), seed=7)
        out = {}
        for epoch in epochs:
            sampler.set_epoch(epoch)
            out[epoch] = [list(batch) for batch in sampler]
        return out

    straight = orders([0, 1, 2, 3])
    resumed = orders([2, 3])  # a new process that starts at epoch 2
    assert resumed[2] == straight[2] and resumed[3] == straight[3]
    assert straight[0] != straight[1], "each epoch is shuffled anew"
    assert repr(EpochSeededBatchSampling(kind)) == kind


def test_the_temperatures_gradient_is_cleared_with_the_models():
    """The trainer zeroes only the model's gradients; the learnable temperature is registered on the model (as the
    fork registers it), so its gradient does not add up over steps (nor restart that sum on resume)."""
    from retrievers.losses import register_temperature

    model = torch.nn.Linear(2, 2)
    temperature = register_temperature(model, 0.05, learnable=True)
    for _ in range(3):
        (model(torch.ones(2)).sum() / temperature).backward()
        assert temperature.grad is not None and model.weight.grad is not None
        model.zero_grad()
        assert temperature.grad is None, "cleared with the model's"
