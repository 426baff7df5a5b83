"""evaluate@<model>: NanoBEIR evaluation from the local pinned copies -> a flat metrics dict.

ColBERT models use PyLate's ``NanoBEIREvaluator`` (metric keys ``NanoBEIR_mean_MaxSim_ndcg@10`` ...), SPLADE
models sentence-transformers' ``SparseNanoBEIREvaluator`` (``NanoBEIR_mean_dot_ndcg@10`` ..., plus sparsity).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from unittest import mock

from retrievers import paths
from retrievers.config import ModelConfig, Params, PyLateNanoBEIR, SparseNanoBEIR


def _local_pylate_sets(root: Path) -> dict[str, str]:
    """PyLate's dataset names -> local copies of their zeta-alpha-ai Nano* repositories under ``root``."""
    from pylate.evaluation import nano_beir_evaluator as module

    folders = {name: root / repo_id.split("/")[-1] for name, repo_id in module.MAPPING_DATASET_NAME_TO_ID.items()}
    return {name: str(folder) for name, folder in folders.items() if folder.exists()}


@contextmanager
def _pylate_sets_from(local: dict[str, str]):
    """Point PyLate's evaluator at the local copies.

    PyLate 1.6 reads the repository ids from a module-level mapping and has no ``dataset_id`` argument;
    the mapping is patched for the duration of the evaluation only."""
    from pylate.evaluation import nano_beir_evaluator as module

    with mock.patch.dict(module.MAPPING_DATASET_NAME_TO_ID, local):
        yield


def _check_sets(names: list[str], available: dict[str, str], root: Path) -> None:
    missing = [n for n in names if n not in available]
    if missing:
        raise FileNotFoundError(
            f"{root}: no local copy of NanoBEIR set(s) {missing}; add them to the source's "
            "members in params.yaml or drop them from evaluation.datasets"
        )


def check_evaluation_data(evaluation: PyLateNanoBEIR | SparseNanoBEIR) -> None:
    """Each configured NanoBEIR set's corpus, queries and qrels load and agree (``data.validate``), before any model
    is loaded: PyLate's per-set folders (split ``train``), or one NanoBEIR-en folder with a split per set."""
    from datasets import load_dataset

    from retrievers.data.validate import check_evaluation_set

    root = paths.source_dir(evaluation.data)
    if isinstance(evaluation, PyLateNanoBEIR):
        local = _local_pylate_sets(root)
        _check_sets(evaluation.datasets, local, root)
        where = {name: (local[name], "train") for name in evaluation.datasets}
    else:
        from sentence_transformers.evaluation.NanoBEIREvaluator import DATASET_NAME_TO_HUMAN_READABLE

        unknown = [n for n in evaluation.datasets if n.lower() not in DATASET_NAME_TO_HUMAN_READABLE]
        if unknown:
            raise FileNotFoundError(f"{root}: unknown NanoBEIR set(s) {unknown}; use names of "
                                    f"{sorted(DATASET_NAME_TO_HUMAN_READABLE)}")
        where = {n: (str(root), f"Nano{DATASET_NAME_TO_HUMAN_READABLE[n.lower()]}") for n in evaluation.datasets}
    for name, (folder, split) in where.items():
        tables = {}
        for subset in ("corpus", "queries", "qrels"):
            try:
                tables[subset] = load_dataset(folder, subset, split=split).data.table
            except (ValueError, FileNotFoundError) as error:
                raise FileNotFoundError(f"{folder}: cannot load {subset} split {split!r} of NanoBEIR set {name!r} "
                                        f"({str(error).splitlines()[0]}); re-run its download stage") from None
        check_evaluation_set(tables["corpus"], tables["queries"], tables["qrels"], f"{folder} [{split}]")


def evaluate_with(model, evaluation: PyLateNanoBEIR | SparseNanoBEIR) -> dict[str, float]:
    """Run the configured evaluator on an already loaded model."""
    root = paths.source_dir(evaluation.data)
    if isinstance(evaluation, PyLateNanoBEIR):
        from pylate.evaluation import NanoBEIREvaluator

        local = _local_pylate_sets(root)
        _check_sets(evaluation.datasets, local, root)
        with _pylate_sets_from(local):
            evaluator = NanoBEIREvaluator(
                dataset_names=evaluation.datasets, batch_size=evaluation.batch_size, show_progress_bar=False
            )
            results = evaluator(model)
    else:
        from sentence_transformers.sparse_encoder.evaluation import SparseNanoBEIREvaluator

        evaluator = SparseNanoBEIREvaluator(
            dataset_names=evaluation.datasets,
            dataset_id=str(root),
            batch_size=evaluation.batch_size,
            show_progress_bar=False,
        )
        results = evaluator(model)
    return {key: float(value) for key, value in results.items()}


def load_model(config: ModelConfig, path: Path):
    """Load a trained model folder with the stock library loader of its kind."""
    return load_kind(config.kind, path)


def load_kind(kind: str, path: Path | str):
    """``colbert`` -> PyLate ColBERT, ``splade`` -> sentence-transformers SparseEncoder, from a local folder."""
    if kind == "colbert":
        from pylate.models import ColBERT

        return ColBERT(str(path))
    from sentence_transformers import SparseEncoder

    return SparseEncoder(str(path))


def evaluate_model(params: Params, model_key: str, model_path: Path | None = None) -> dict[str, float]:
    config = params.models[model_key]
    model = load_model(config, model_path or paths.model_dir(model_key))
    return evaluate_with(model, config.evaluation)


def evaluate_untrained(params: Params, model_key: str) -> dict[str, float]:
    """The same evaluation of the base model with the untrained retrieval head: the 'before' numbers."""
    from retrievers.config import SpladePhase
    from retrievers.train.common import set_seed

    phase = params.phases[params.phase_chain(model_key)[0]]
    set_seed(params.seed)
    if isinstance(phase, SpladePhase):
        from retrievers.train.splade import build_splade

        model = build_splade(Path(phase.init), phase.splade)
    else:
        from retrievers.train.xtr import build_colbert

        model = build_colbert(Path(phase.init), phase.colbert)
    return evaluate_with(model, params.models[model_key].evaluation)
