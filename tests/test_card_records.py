"""Cards are rendered from what train@ recorded: a SPLADE phase trained with ``loss: margin-mse`` gets a card
that names SparseMarginMSELoss (inside SpladeLoss) with the parameters the loss objects report, and tags it.

The phase really trains (2 steps of the tiny NeoBERT on the fixture's KD set) through ``retrievers.train.run_phase``
in a scratch workspace; the card stage then renders from models/<phase>/training_record.json. The metrics file the
card stage also reads is a stand-in here (the card's evaluation tables are tested in test_cards.py).
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

from retrievers.config import parse_params
from retrievers.paths import Workspace
from retrievers.profile import profile_params

from .conftest import REPO

pytestmark = pytest.mark.slow
PHASE = "neobert-splade"


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    raw = profile_params(REPO, "smoke")
    phase = raw["phases"][PHASE]
    phase["loss"] = "margin-mse"
    phase["query_regularizer_weight"], phase["document_regularizer_weight"] = 1e-4, 2e-4
    phase["args"] |= {"max_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1, "save_steps": 100,
                      "eval_steps": 100}
    params = parse_params(raw)
    for folder in (phase["init"], phase["data"], phase["eval_data"]):
        key = folder.partition("/")[2]
        (tmp_path / "data").mkdir(exist_ok=True)
        os.symlink(REPO / params.sources[key].local.path, tmp_path / folder)
    (tmp_path / "model_cards").mkdir()
    os.symlink(REPO / "model_cards" / "templates", tmp_path / "model_cards" / "templates")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the stages get the root passed in: nothing may land in the cwd
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("RETRIEVERS_GIT_COMMIT", "test")
    return tmp_path, params


def test_a_margin_mse_splade_phase_gets_a_card_naming_that_loss_with_its_parameters(workspace):
    from retrievers.pipeline import card
    from retrievers.train import run_phase

    root, params = workspace
    ws = Workspace(root)
    run_phase(ws, params, PHASE)
    record = json.loads((root / "models" / PHASE / "training_record.json").read_text())["phases"][-1]
    assert record["loss"]["class"] == "sentence_transformers.sparse_encoder.losses.SpladeLoss.SpladeLoss"
    inner = record["loss"]["config"]["loss"]
    assert inner["class"].endswith("SparseMarginMSELoss")
    assert record["loss"]["config"]["query_regularizer_weight"] == 1e-4
    assert record["loss"]["config"]["document_regularizer_weight"] == 2e-4
    assert record["data"]["steps"] == 2 and record["trainer_arguments"]["max_steps"] == 2

    (root / "metrics").mkdir()
    (root / "metrics" / f"{PHASE}.json").write_text(json.dumps({"NanoMSMARCO_dot_ndcg@10": 0.5,
                                                                        "NanoBEIR_mean_dot_ndcg@10": 0.5}))
    card(ws, params, PHASE)
    text = (root / "model_cards" / PHASE / "README.md").read_text()
    assert "loss:SparseMarginMSELoss" in text and "loss:SpladeLoss" in text and "loss:FlopsLoss" in text
    assert "SparseMultipleNegativesRankingLoss" not in text  # nothing hand-written about the card's usual loss
    assert "`sentence_transformers.sparse_encoder.losses.SpladeLoss.SpladeLoss`" in text
    assert inner["class"] in text and '"query_regularizer_weight": 0.0001' in text
    assert '"document_regularizer_weight": 0.0002' in text
    # the whole config the loss objects report, as the card prints it
    assert json.dumps(record["loss"]["config"], indent=2).replace("\n", "\n  ") in text
    assert '"similarity_fct": "pairwise_dot_score"' in text
    assert not any((root / "elsewhere").iterdir()), "a stage wrote into the process's cwd"
