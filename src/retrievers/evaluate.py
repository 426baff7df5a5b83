"""evaluate@<model>: NanoBEIR evaluation from the local pinned copies -> a flat metrics dict.

ColBERT models use PyLate's ``NanoBEIREvaluator`` (metric keys ``NanoBEIR_mean_MaxSim_ndcg@10`` ...), SPLADE
models sentence-transformers' ``SparseNanoBEIREvaluator`` (``NanoBEIR_mean_dot_ndcg@10`` ..., plus sparsity).
"""

from __future__ import annotations

from pathlib import Path

from retrievers import paths
from retrievers.config import ModelConfig, Params, PyLateNanoBEIR, SparseNanoBEIR


class LocalNanoBEIRData:
    """Mixin for the NanoBEIR evaluators: their ``_load_dataset_subset_split`` (sentence-transformers' override
    point, through which each set's corpus, queries and qrels are loaded) reads the local copy's parquet files
    (``retrievers.data.local``) instead of ``datasets.load_dataset``, whose cache is keyed on the folder's name.

    ``per_set_folders``: PyLate's layout, one folder per set (``<root>/NanoSciFact``, split ``train``), instead of
    one folder whose splits are the sets (sentence-transformers' NanoBEIR-en)."""

    local_root: Path
    per_set_folders: bool = False

    def _load_dataset_subset_split(self, subset: str, split: str, required_columns: list[str]):
        from retrievers.data.local import load_split

        if self.per_set_folders:
            return load_split(self.local_root / split, subset, "train", required_columns)
        return load_split(self.local_root, subset, split, required_columns)


def sparse_nanobeir_evaluator(root: Path, datasets: list[str], batch_size: int, **kwargs):
    """sentence-transformers' ``SparseNanoBEIREvaluator`` over the local NanoBEIR-en copy in ``root``."""
    from sentence_transformers.sparse_encoder.evaluation import SparseNanoBEIREvaluator

    class LocalSparseNanoBEIREvaluator(LocalNanoBEIRData, SparseNanoBEIREvaluator):
        local_root = root

    return LocalSparseNanoBEIREvaluator(
        dataset_names=datasets, dataset_id=str(root), batch_size=batch_size, show_progress_bar=False, **kwargs
    )


def pylate_nanobeir_evaluator(root: Path, datasets: list[str], batch_size: int):
    """PyLate's ``NanoBEIREvaluator`` over the local zeta-alpha-ai Nano* copies in ``root`` (one folder per set).

    PyLate 1.6 overrides ``_load_dataset`` with a copy of sentence-transformers' that calls ``load_dataset`` on its
    module-level repository ids; this subclass uses sentence-transformers' own ``_load_dataset`` again (the same
    dicts, built the same way) with PyLate's ``PyLateInformationRetrievalEvaluator`` as its
    ``information_retrieval_class``, so the data arrives through ``_load_dataset_subset_split``."""
    from pylate.evaluation import NanoBEIREvaluator
    from pylate.evaluation.pylate_information_retrieval_evaluator import PyLateInformationRetrievalEvaluator
    from sentence_transformers.evaluation import NanoBEIREvaluator as STNanoBEIREvaluator

    class LocalPyLateNanoBEIREvaluator(LocalNanoBEIRData, NanoBEIREvaluator):
        local_root = root
        per_set_folders = True
        information_retrieval_class = PyLateInformationRetrievalEvaluator
        _load_dataset = STNanoBEIREvaluator._load_dataset

    missing = [n for n in datasets if not (root / f"Nano{_human_readable(n)}").exists()]
    if missing:
        raise FileNotFoundError(
            f"{root}: no local copy of NanoBEIR set(s) {missing}; add them to the source's "
            "members in params.yaml or drop them from evaluation.datasets"
        )
    return LocalPyLateNanoBEIREvaluator(dataset_names=datasets, batch_size=batch_size, show_progress_bar=False)


def _human_readable(name: str) -> str:
    from sentence_transformers.evaluation.NanoBEIREvaluator import DATASET_NAME_TO_HUMAN_READABLE

    return DATASET_NAME_TO_HUMAN_READABLE.get(name.lower(), name)


def evaluator_for(evaluation: PyLateNanoBEIR | SparseNanoBEIR, root: Path | None = None):
    """The configured evaluator over the local copy of its data (``data/<evaluation.data>`` by default)."""
    root = root or paths.source_dir(evaluation.data)
    if isinstance(evaluation, PyLateNanoBEIR):
        return pylate_nanobeir_evaluator(root, evaluation.datasets, evaluation.batch_size)
    return sparse_nanobeir_evaluator(root, evaluation.datasets, evaluation.batch_size)


def evaluate_with(model, evaluation: PyLateNanoBEIR | SparseNanoBEIR) -> dict[str, float]:
    """Run the configured evaluator on an already loaded model."""
    results = evaluator_for(evaluation)(model)
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
