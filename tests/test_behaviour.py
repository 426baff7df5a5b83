"""Training on the fixture must make retrieval clearly better than the untrained model, for both models."""

from __future__ import annotations

import json
import os

import pytest

from retrievers.config import load_params
from retrievers.evaluate import evaluate_untrained

pytestmark = pytest.mark.slow
MARGIN = 0.10  # absolute nDCG@10


@pytest.mark.parametrize(
    "model, key", [("modernbert-xtr", "NanoBEIR_mean_MaxSim_ndcg@10"), ("neobert-splade", "NanoBEIR_mean_dot_ndcg@10")]
)
def test_training_raises_ndcg_on_held_out_queries(smoke_run, model, key):
    cwd = os.getcwd()
    os.chdir(smoke_run.workspace)
    try:
        params = load_params()
        before = evaluate_untrained(params, model)[key]
    finally:
        os.chdir(cwd)
    after = json.loads((smoke_run.workspace / "metrics" / f"{model}.json").read_text())[key]
    print(f"{model}: nDCG@10 untrained {before:.4f} -> trained {after:.4f}")
    assert after >= before + MARGIN, f"{model}: {before:.4f} -> {after:.4f} is not a clear gain"
