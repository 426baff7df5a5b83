"""evaluate@<model>: NanoBEIR evaluation from the local pinned copies -> a flat metrics dict.

ColBERT models use PyLate's ``NanoBEIREvaluator`` (metric keys ``NanoBEIR_mean_MaxSim_ndcg@10`` ...), SPLADE
models sentence-transformers' ``SparseNanoBEIREvaluator`` (``NanoBEIR_mean_dot_ndcg@10`` ..., plus sparsity);
each kind's evaluation is in its module of :mod:`retrievers.models`.
"""

from __future__ import annotations

from pathlib import Path

from retrievers import models
from retrievers.config import ModelConfig, Params, PyLateNanoBEIR, SparseNanoBEIR
from retrievers.paths import Workspace


def check_evaluation_data(ws: Workspace, evaluation: PyLateNanoBEIR | SparseNanoBEIR) -> None:
    """Each configured NanoBEIR set's corpus, queries and qrels load and agree (``data.validate``), before any model
    is loaded."""
    from datasets import load_dataset

    from retrievers.data.validate import check_evaluation_set

    root = ws.source_dir(evaluation.data)
    for name, (folder, split) in models.for_evaluation(evaluation).evaluation_sets(evaluation, root).items():
        tables = {}
        for subset in ("corpus", "queries", "qrels"):
            try:
                tables[subset] = load_dataset(folder, subset, split=split).data.table
            except (ValueError, FileNotFoundError) as error:
                raise FileNotFoundError(f"{folder}: cannot load {subset} split {split!r} of NanoBEIR set {name!r} "
                                        f"({str(error).splitlines()[0]}); re-run its download stage") from None
        check_evaluation_set(tables["corpus"], tables["queries"], tables["qrels"], f"{folder} [{split}]")


def evaluate_with(ws: Workspace, model, evaluation: PyLateNanoBEIR | SparseNanoBEIR) -> dict[str, float]:
    """Run the configured evaluator on an already loaded model."""
    results = models.for_evaluation(evaluation).evaluate(model, evaluation, ws.source_dir(evaluation.data))
    return {key: float(value) for key, value in results.items()}


def load_model(config: ModelConfig, path: Path):
    """Load a trained model folder with the stock library loader of its kind."""
    return models.for_model(config).load(path)


def evaluate_model(ws: Workspace, params: Params, model_key: str, model_path: Path | None = None) -> dict[str, float]:
    config = params.models[model_key]
    model = load_model(config, model_path or ws.model_dir(model_key))
    return evaluate_with(ws, model, config.evaluation)


def evaluate_untrained(ws: Workspace, params: Params, model_key: str) -> dict[str, float]:
    """The same evaluation of the base model with the untrained retrieval head: the 'before' numbers."""
    from retrievers.train.common import set_seed

    phase = params.phases[params.phase_chain(model_key)[0]]
    set_seed(params.seed)
    model = models.for_phase(phase).build(phase, ws.folder(phase.init))
    return evaluate_with(ws, model, params.models[model_key].evaluation)
