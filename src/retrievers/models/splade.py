"""SPLADE models (NeoBERT-SPLADE): sentence-transformers' ``SparseEncoder``, sparse vocabulary-sized vectors
scored by dot product, a Seismic inverted index (pyseismic-lsr).

The one place that knows how this kind is built, loaded, encoded, evaluated, indexed and described on its card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from retrievers.config import SpeedConfig, SpladeConfig

KIND = "splade"
ARCHITECTURE_NAME = "SparseEncoder"  # the repr of the libraries' model object, as the published cards print it
EVALUATOR_NAME = "sentence_transformers.sparse_encoder.evaluation.SparseNanoBEIREvaluator"
PER_SET_EVALUATOR = "sentence_transformers.sparse_encoder.evaluation.SparseInformationRetrievalEvaluator"
INDEX_NAME = "Seismic inverted"


def recognises(modules_json: str) -> bool:
    """Whether a saved model's modules.json is one of this kind's."""
    return "SpladePooling" in modules_json


# ------------------------------------------------------------------------------------------- building
def build_splade(init: Path, splade: SpladeConfig, speed: SpeedConfig | None = None):
    """MLMTransformer + SpladePooling over a masked-language model (or reload a saved SparseEncoder).

    With ``speed``, the model is a ``retrievers.packed.PackedSparseEncoder`` (same modules and saved files)."""
    from sentence_transformers import SparseEncoder

    from retrievers.packed import PackedSparseEncoder, with_speed

    if speed is not None:
        return with_speed(_build_splade(PackedSparseEncoder, init, splade), speed)
    return _build_splade(SparseEncoder, init, splade)


def _build_splade(cls, init: Path, splade: SpladeConfig):
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    if (init / "modules.json").exists():
        return cls(str(init))
    mlm = MLMTransformer(str(init), max_seq_length=splade.max_seq_length)
    pooling = SpladePooling(
        pooling_strategy=splade.pooling_strategy,
        activation_function=splade.activation_function,
        word_embedding_dimension=mlm.get_sentence_embedding_dimension(),
    )
    return cls(modules=[mlm, pooling])


def build(phase):
    """The phase's model before training (its init folder with the SPLADE head)."""
    return build_splade(Path(phase.init), phase.splade)


def load(path: Path | str):
    """A trained or released model folder, with the stock loader."""
    from sentence_transformers import SparseEncoder

    return SparseEncoder(str(path))


# ------------------------------------------------------------------------------------------- training
def training_arguments_class() -> type:
    from sentence_transformers.sparse_encoder import SparseEncoderTrainingArguments

    return SparseEncoderTrainingArguments


def trainer(phase, init: Path, data: Path, output: Path, seed: int):
    """(model, trainer) for the SPLADE phase."""
    from retrievers.train.common import trainer_arguments
    from retrievers.train.splade import splade_trainer

    args = trainer_arguments(training_arguments_class(), phase.args, output, seed)
    return splade_trainer(phase, init, data, args, seed)


# ------------------------------------------------------------------------------------------- encoding
def _to_csr(tensor):
    from scipy import sparse

    coo = tensor.coalesce().cpu()
    rows, cols = coo.indices().numpy()
    return sparse.csr_matrix((coo.values().float().numpy(), (rows, cols)), shape=tuple(coo.shape))


def encode_batch(model, texts: list[str], is_query: bool, batch_size: int):
    method = model.encode_query if is_query else model.encode_document
    return _to_csr(method(texts, batch_size=batch_size, convert_to_sparse_tensor=True, show_progress_bar=False))


def stack(parts: list):
    """The batches' outputs as one scipy CSR matrix [texts, vocabulary]."""
    from scipy import sparse

    return sparse.vstack(parts).tocsr()


def encoded_record(model, encoded, i: int, top_terms: int) -> dict[str, Any]:
    """What `retrievers encode` prints for text ``i``: its ``top_terms`` heaviest terms and their weights."""
    row = encoded.getrow(i)
    order = np.argsort(-row.data)[:top_terms]
    tokens = model.tokenizer.convert_ids_to_tokens(row.indices[order].tolist())
    weights = row.data[order].astype(np.float64).round(4).tolist()
    return {"terms": dict(zip(tokens, weights, strict=True))}


def encode_probe(model, texts: list[str]) -> list[np.ndarray]:
    """Deterministic encodings used to compare two copies of a model."""
    dense = model.encode(texts, convert_to_sparse_tensor=False, show_progress_bar=False)
    return [np.asarray(row.cpu() if hasattr(row, "cpu") else row, dtype=np.float32) for row in dense]


def predict(model, texts: list[str], params: dict | None) -> list:
    """The MLflow pyfunc's output: every (term, weight) of each text."""
    return [model.decode(e, top_k=None) for e in model.encode(texts, show_progress_bar=False)]


# ------------------------------------------------------------------------------------------- indexing
def _rows(matrix):
    """(term ids as strings, float32 weights) per row of a CSR matrix: Seismic's sparse vector format."""
    from seismic import get_seismic_string

    for i in range(matrix.shape[0]):
        row = matrix.getrow(i)
        yield row.indices.astype(str).astype(get_seismic_string()), row.data.astype(np.float32)


def build_index(index_dir: Path, ids: list[str], embeddings) -> None:
    from seismic import SeismicDataset, SeismicIndex

    dataset = SeismicDataset()
    for doc_id, (terms, weights) in zip(ids, _rows(embeddings), strict=True):
        dataset.add_document(doc_id, terms, weights)
    SeismicIndex.build_from_dataset(dataset).save(str(index_dir / "seismic"))


def search(index_dir: Path, queries: list[dict], encoded, k: int) -> list[list[dict]]:
    from seismic import SeismicIndex

    seismic = SeismicIndex.load(str(index_dir / "seismic.index.seismic"))
    results = []
    for query, (terms, weights) in zip(queries, _rows(encoded), strict=True):
        # query_cut = every query term and heap_factor 1: no query pruning, no early stop on the summaries
        hits = seismic.search(query["id"], terms, weights, k=k, query_cut=max(len(terms), 1), heap_factor=1.0)
        results.append([{"id": doc_id, "score": float(score)} for _, score, doc_id in hits])
    return results


# ----------------------------------------------------------------------------------------- evaluation
def evaluation_sets(evaluation, root: Path) -> dict[str, tuple[str, str]]:
    """Set name -> (folder, split) that the evaluator reads: one NanoBEIR-en folder, a split per set."""
    from sentence_transformers.evaluation.NanoBEIREvaluator import DATASET_NAME_TO_HUMAN_READABLE

    unknown = [n for n in evaluation.datasets if n.lower() not in DATASET_NAME_TO_HUMAN_READABLE]
    if unknown:
        raise FileNotFoundError(f"{root}: unknown NanoBEIR set(s) {unknown}; use names of "
                                f"{sorted(DATASET_NAME_TO_HUMAN_READABLE)}")
    return {n: (str(root), f"Nano{DATASET_NAME_TO_HUMAN_READABLE[n.lower()]}") for n in evaluation.datasets}


def nanobeir_evaluator(root: Path, datasets: list[str], batch_size: int):
    """sentence-transformers' ``SparseNanoBEIREvaluator`` over the local NanoBEIR-en copy at ``root``, fed through
    its ``_load_dataset_subset_split`` hook from the parquet files (``retrievers.data.local.LocalNanoBEIRData``)."""
    from sentence_transformers.sparse_encoder.evaluation import SparseNanoBEIREvaluator

    from retrievers.data.local import LocalNanoBEIRData

    class LocalSparseNanoBEIREvaluator(LocalNanoBEIRData, SparseNanoBEIREvaluator):
        local_root = root

    return LocalSparseNanoBEIREvaluator(
        dataset_names=datasets, dataset_id=str(root), batch_size=batch_size, show_progress_bar=False
    )


def evaluate(model, evaluation, root: Path) -> dict:
    """sentence-transformers' SparseNanoBEIREvaluator on the local NanoBEIR-en copy at ``root``."""
    return nanobeir_evaluator(root, evaluation.datasets, evaluation.batch_size)(model)


# ------------------------------------------------------------------------------------------------ card
def embedding_size(phase, model_dir: Path) -> int:
    """The vocabulary size: one dimension per token."""
    return json.loads((model_dir / "config.json").read_text())["vocab_size"]


CARD_STYLE = {  # the published card's front matter (retrievers.cards.CardStyle)
    "per_set_task": ("sparse-information-retrieval", "Sparse Information Retrieval"),
    "mean_task": ("sparse-nano-beir", "Sparse Nano BEIR"),
    "library_name": "sentence-transformers",
    "pipeline_tag": "feature-extraction",
    "tags": (
        "sentence-transformers",
        "sparse-encoder",
        "sparse",
        "splade",
        "generated_from_trainer",
    ),
}
