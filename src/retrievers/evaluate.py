"""evaluate@<model>: NanoBEIR evaluation from the local pinned copies -> a flat metrics dict.

ColBERT models use PyLate's ``NanoBEIREvaluator`` (metric keys ``NanoBEIR_mean_MaxSim_ndcg@10`` ...), SPLADE
models sentence-transformers' ``SparseNanoBEIREvaluator`` (``NanoBEIR_mean_dot_ndcg@10`` ..., plus sparsity);
each kind's evaluation is in its module of :mod:`retrievers.models`.
"""

from __future__ import annotations

from pathlib import Path

from retrievers import models, paths
from retrievers.config import ModelConfig, Params, PyLateNanoBEIR, SparseNanoBEIR


def evaluate_with(model, evaluation: PyLateNanoBEIR | SparseNanoBEIR) -> dict[str, float]:
    """Run the configured evaluator on an already loaded model."""
    results = models.for_evaluation(evaluation).evaluate(model, evaluation, paths.source_dir(evaluation.data))
    return {key: float(value) for key, value in results.items()}


def load_model(config: ModelConfig, path: Path):
    """Load a trained model folder with the stock library loader of its kind."""
    return models.for_model(config).load(path)


def evaluate_model(params: Params, model_key: str, model_path: Path | None = None) -> dict[str, float]:
    config = params.models[model_key]
    model = load_model(config, model_path or paths.model_dir(model_key))
    return evaluate_with(model, config.evaluation)


def evaluate_untrained(params: Params, model_key: str) -> dict[str, float]:
    """The same evaluation of the base model with the untrained retrieval head: the 'before' numbers."""
    from retrievers.train.common import set_seed

    phase = params.phases[params.phase_chain(model_key)[0]]
    set_seed(params.seed)
    model = models.for_phase(phase).build(phase)
    return evaluate_with(model, params.models[model_key].evaluation)
