"""Training on the fixture must make retrieval clearly better than the untrained model, for both models."""

from __future__ import annotations

import json

import pytest

from retrievers.config import load_params
from retrievers.evaluate import evaluate_untrained
from retrievers.paths import Workspace

pytestmark = pytest.mark.slow
MARGIN = 0.10  # absolute nDCG@10


@pytest.mark.parametrize(
    "model, key", [("modernbert-xtr", "NanoBEIR_mean_MaxSim_ndcg@10"), ("neobert-splade", "NanoBEIR_mean_dot_ndcg@10")]
)
def test_training_raises_ndcg_on_held_out_queries(smoke_run, model, key):
    ws = Workspace(smoke_run.workspace)
    before = evaluate_untrained(ws, load_params(ws.params_file), model)[key]
    after = json.loads((smoke_run.workspace / "metrics" / f"{model}.json").read_text())[key]
    print(f"{model}: nDCG@10 untrained {before:.4f} -> trained {after:.4f}")
    assert after >= before + MARGIN, f"{model}: {before:.4f} -> {after:.4f} is not a clear gain"


def test_xtr_distillation_keeps_the_contrastive_phase_gain(smoke_run):
    """Before, after phase 1 (contrastive) and after phase 2 (KD from phase 1): phase 1 must clearly beat the
    untrained model, and distillation from it must not undo that (it may only lose within a small tolerance)."""
    from retrievers.evaluate import evaluate_model

    key = "NanoBEIR_mean_MaxSim_ndcg@10"
    ws = Workspace(smoke_run.workspace)
    params = load_params(ws.params_file)
    before = evaluate_untrained(ws, params, "modernbert-xtr")[key]
    phase1 = evaluate_model(ws, params, "modernbert-xtr", ws.model_dir("modernbert-xtr-contrastive"))[key]
    phase2 = json.loads((smoke_run.workspace / "metrics" / "modernbert-xtr.json").read_text())[key]
    print(f"modernbert-xtr nDCG@10: untrained {before:.4f} -> contrastive {phase1:.4f} -> distilled {phase2:.4f}")
    assert phase1 >= before + MARGIN
    assert phase2 >= phase1 - 0.02
