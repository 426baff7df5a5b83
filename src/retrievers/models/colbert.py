"""ColBERT models (ModernBERT-XTR): PyLate's ``ColBERT``, token vectors scored by MaxSim, a PLAID index.

The one place that knows how this kind is built, loaded, encoded, evaluated, indexed and described on its card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retrievers.config import ColBERTConfig, SpeedConfig
from retrievers.errors import MissingInputError

KIND = "colbert"
ARCHITECTURE_NAME = "ColBERT"  # the repr of the libraries' model object, as the published cards print it
EVALUATOR_NAME = "pylate.evaluation.NanoBEIREvaluator"
PER_SET_EVALUATOR = "pylate.evaluation.pylate_information_retrieval_evaluator.PyLateInformationRetrievalEvaluator"
INDEX_NAME = "PLAID"


def recognises(modules_json: str) -> bool:
    """Whether a saved model's modules.json is one of this kind's."""
    return "pylate." in modules_json


# ------------------------------------------------------------------------------------------- building
def build_colbert(init: Path, colbert: ColBERTConfig, device: str | None = None, speed: SpeedConfig | None = None):
    """A PyLate ColBERT from a base encoder (adds the Dense head) or from a ColBERT checkpoint (keeps it).

    Prefixes are passed explicitly: PyLate treats ``None`` as its "[Q] "/"[D] " defaults. With ``speed``, the
    model is a ``retrievers.packed.PackedColBERT`` (same modules and saved files, faster training forwards)."""
    from pylate import models

    from retrievers.packed import PackedColBERT, with_speed

    cls = models.ColBERT if speed is None else PackedColBERT
    model = cls(
        model_name_or_path=str(init),
        embedding_size=colbert.embedding_size,
        query_length=colbert.query_length,
        document_length=colbert.document_length,
        query_prefix=colbert.query_prefix,
        document_prefix=colbert.document_prefix,
        attend_to_expansion_tokens=colbert.attend_to_expansion_tokens,
        device=device,
    )
    return model if speed is None else with_speed(model, speed)


def colbert_collator(model):
    """PyLate's collator, or its packed variant (documents padded to the batch's longest) for a PackedColBERT."""
    from pylate import utils

    from retrievers.packed import PackedColBERT, PackedColBERTCollator

    if isinstance(model, PackedColBERT) and model.speed.documents_to_longest:
        return PackedColBERTCollator(model.tokenize)
    return utils.ColBERTCollator(model.tokenize)


def build(phase):
    """The phase's model before training (its init folder with the phase's ColBERT head)."""
    return build_colbert(Path(phase.init), phase.colbert)


def load(path: Path | str):
    """A trained or released model folder, with the stock loader."""
    from pylate.models import ColBERT

    return ColBERT(str(path))


# ------------------------------------------------------------------------------------------- training
def training_arguments_class() -> type:
    from sentence_transformers import SentenceTransformerTrainingArguments

    return SentenceTransformerTrainingArguments


def trainer(phase, init: Path, data: Path, output: Path, seed: int):
    """(model, trainer) for an XTR phase: contrastive on triplets or distillation from teacher scores."""
    from retrievers.train.common import trainer_arguments

    args = trainer_arguments(training_arguments_class(), phase.args, output, seed)
    if phase.recipe == "xtr-contrastive":
        from retrievers.train.xtr import contrastive_trainer

        return contrastive_trainer(phase, init, data, args)
    from retrievers.train.xtr import distillation_trainer

    return distillation_trainer(phase, init, data, args)


# ------------------------------------------------------------------------------------------- encoding
def encode_batch(model, texts: list[str], is_query: bool, batch_size: int) -> list:
    return model.encode(texts, is_query=is_query, batch_size=batch_size, show_progress_bar=False)


def stack(parts: list) -> list[np.ndarray]:
    """The batches' outputs as one list of [tokens, dim] arrays."""
    return [np.asarray(p, dtype=np.float32) for batch in parts for p in batch]


def encoded_record(model, encoded, i: int, top_terms: int) -> dict[str, Any]:
    """What `retrievers encode` prints for text ``i``: its token vectors."""
    return {"embedding": encoded[i].astype(np.float64).round(6).tolist()}


def encode_probe(model, texts: list[str]) -> list[np.ndarray]:
    """Deterministic encodings used to compare two copies of a model."""
    outputs = model.encode(texts, is_query=True, show_progress_bar=False)
    outputs += model.encode(texts, is_query=False, show_progress_bar=False)
    return [np.asarray(o, dtype=np.float32) for o in outputs]


def predict(model, texts: list[str], params: dict | None) -> list:
    """The MLflow pyfunc's output: token vectors, of queries unless ``params['is_query']`` is false."""
    is_query = bool((params or {}).get("is_query", True))
    return [e.tolist() for e in model.encode(texts, is_query=is_query, show_progress_bar=False)]


# ------------------------------------------------------------------------------------------- indexing
def build_index(index_dir: Path, ids: list[str], embeddings) -> None:
    from pylate import indexes

    plaid = indexes.PLAID(index_folder=str(index_dir), index_name="plaid", override=True,
                          show_progress=False, device="cpu")
    plaid.add_documents(documents_ids=ids, documents_embeddings=embeddings)


def search(index_dir: Path, queries: list[dict], encoded, k: int) -> list[list[dict]]:
    from pylate import indexes, retrieve

    plaid = indexes.PLAID(index_folder=str(index_dir), index_name="plaid", override=False, show_progress=False,
                          device="cpu")
    hits = retrieve.ColBERT(index=plaid).retrieve(queries_embeddings=encoded, k=k)
    return [[{"id": str(h["id"]), "score": float(h["score"])} for h in row] for row in hits]


# ----------------------------------------------------------------------------------------- evaluation
def _local_pylate_sets(root: Path) -> dict[str, str]:
    """PyLate's dataset names -> local copies of their zeta-alpha-ai Nano* repositories under ``root``."""
    from pylate.evaluation import nano_beir_evaluator as module

    folders = {name: root / repo_id.split("/")[-1] for name, repo_id in module.MAPPING_DATASET_NAME_TO_ID.items()}
    return {name: str(folder) for name, folder in folders.items() if folder.exists()}


def _local_evaluator_class():
    """PyLate's NanoBEIREvaluator reading each set from a local folder, through its ``_load_dataset`` override point.

    PyLate 1.6 maps a set's name to a Hub repository id in a module-level table and has no ``dataset_id``
    argument; its evaluator builds every per-set evaluator in ``_load_dataset(name, **kwargs)``, which this
    subclass overrides to read the local copy of that repository instead (same columns, same filtering)."""
    from datasets import load_dataset
    from pylate.evaluation import NanoBEIREvaluator, PyLateInformationRetrievalEvaluator

    class LocalNanoBEIREvaluator(NanoBEIREvaluator):
        def __init__(self, local_sets: dict[str, str], **kwargs):
            self.local_sets = local_sets  # read by _load_dataset, which the parent's __init__ calls
            super().__init__(**kwargs)

        def _load_dataset(self, dataset_name, **ir_evaluator_kwargs):
            folder = self.local_sets[dataset_name.lower()]
            corpus, queries, qrels = (load_dataset(folder, part, split="train")
                                      for part in ("corpus", "queries", "qrels"))
            relevant: dict[str, set[str]] = {}
            for query_id, corpus_id in zip(qrels["query-id"], qrels["corpus-id"], strict=True):
                relevant.setdefault(query_id, set()).add(corpus_id)
            for option, prompts in (("query_prompt", self.query_prompts), ("corpus_prompt", self.corpus_prompts)):
                if prompts is not None:
                    ir_evaluator_kwargs[option] = prompts.get(dataset_name, None)
            return PyLateInformationRetrievalEvaluator(
                queries={i: text for i, text in zip(queries["_id"], queries["text"], strict=True) if text},
                corpus={i: text for i, text in zip(corpus["_id"], corpus["text"], strict=True) if text},
                relevant_docs=relevant,
                name=self._get_human_readable_name(dataset_name),
                **ir_evaluator_kwargs,
            )

    return LocalNanoBEIREvaluator


def _check_sets(names: list[str], available: dict[str, str], root: Path) -> None:
    missing = [n for n in names if n not in available]
    if missing:
        raise MissingInputError(
            f"{root}: no local copy of NanoBEIR set(s) {missing}; add them to the source's "
            "members in params.yaml or drop them from evaluation.datasets"
        )


def evaluate(model, evaluation, root: Path) -> dict:
    """PyLate's NanoBEIREvaluator on the local copies of the sets under ``root``."""
    local = _local_pylate_sets(root)
    _check_sets(evaluation.datasets, local, root)
    evaluator = _local_evaluator_class()(
        local, dataset_names=evaluation.datasets, batch_size=evaluation.batch_size, show_progress_bar=False
    )
    return evaluator(model)


# ------------------------------------------------------------------------------------------------ card
def embedding_size(phase, model_dir: Path) -> int:
    return phase.colbert.embedding_size


CARD_STYLE = {  # the published card's front matter (retrievers.cards.CardStyle)
    "per_set_task": ("py-late-information-retrieval", "Py Late Information Retrieval"),
    "mean_task": ("nano-beir", "Nano BEIR"),
    "library_name": "PyLate",
    "pipeline_tag": "sentence-similarity",
    "tags": (
        "ColBERT",
        "PyLate",
        "sentence-transformers",
        "sentence-similarity",
        "feature-extraction",
        "generated_from_trainer",
    ),
}
