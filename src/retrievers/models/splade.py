"""SPLADE models (NeoBERT-SPLADE): sentence-transformers' ``SparseEncoder``, sparse vocabulary-sized vectors
scored by dot product, a Seismic inverted index (pyseismic-lsr).

The one place that knows how this kind is built, loaded, encoded, evaluated, indexed and described on its card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the config models (pydantic) are loaded by the pipeline, not by inference
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


def build(phase, init: Path):
    """The phase's model before training (its ``init`` folder with the SPLADE head)."""
    return build_splade(init, phase.splade)


def load(path: Path | str):
    """A trained or released model folder: sentence-transformers' ``SparseEncoder`` with the inference forward of
    ``retrievers.models.sparse_inference`` (the same vectors without the tokens x vocabulary logits)."""
    from retrievers.models.sparse_inference import InferenceSparseEncoder

    return InferenceSparseEncoder(str(path))


def settle_for_save(model) -> None:
    """Put the model in the state an uninterrupted run saves it in: the fast tokenizer keeps the padding of its last
    call, which tokenizer.json records (a training batch's or an evaluation's: to the longest). A run resumed from
    its last checkpoint tokenizes nothing before saving; one text tokenized here, as the collator does, leaves the
    same state."""
    model.tokenize(["a document"])

# ------------------------------------------------------------------------------------------- training
def training_arguments_class() -> type:
    from sentence_transformers.sparse_encoder import SparseEncoderTrainingArguments

    return SparseEncoderTrainingArguments


def trainer(phase, init: Path, data: Path, output: Path, seed: int, eval_data: Path | None = None):
    """(model, trainer) for the SPLADE phase; ``eval_data``: the in-training evaluator's folder."""
    from retrievers.train.common import trainer_arguments
    from retrievers.train.splade import splade_trainer

    args = trainer_arguments(training_arguments_class(), phase.args, output, seed)
    return splade_trainer(phase, init, data, args, seed, eval_data)


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
    """The MLflow pyfunc's output: every term and its weight, for each text encoded as a query unless
    ``params['is_query']`` is false (then as a document)."""
    method = model.encode_query if bool((params or {}).get("is_query", True)) else model.encode_document
    return [dict(model.decode(e, top_k=None)) for e in method(texts, show_progress_bar=False)]

PYFUNC_OUTPUT = "terms"


def pyfunc_output_spec():
    """The MLflow signature's output column: term -> weight per text."""
    from mlflow.types import ColSpec, DataType
    from mlflow.types.schema import Map

    return ColSpec(Map(DataType.double), PYFUNC_OUTPUT)



# ------------------------------------------------------------------------------------------- indexing
def _rows(matrix):
    """(term ids as strings, float32 weights) per row of a CSR matrix: Seismic's sparse vector format."""
    from seismic import get_seismic_string

    for i in range(matrix.shape[0]):
        row = matrix.getrow(i)
        yield row.indices.astype(str).astype(get_seismic_string()), row.data.astype(np.float32)


# A shard of the corpus (retrievers.indexing): the CSR arrays of its rows.
def shard_arrays(encoded) -> dict[str, np.ndarray]:
    return {"data": encoded.data.astype(np.float32), "indices": encoded.indices.astype(np.int32),
            "indptr": encoded.indptr.astype(np.int64), "shape": np.array(encoded.shape, dtype=np.int64)}


def shard_vectors(arrays):
    from scipy import sparse

    return sparse.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=tuple(arrays["shape"]))


def count(encoded) -> int:
    return encoded.shape[0]


def select(vectors, rows: list[int]):
    return vectors[rows]


def query_vectors(encoded, i: int):
    return encoded[i]


def exact_scores(queries, vectors) -> np.ndarray:
    """Dot products [queries, documents] of the sparse vectors."""
    return (queries @ vectors.T).toarray().astype(np.float32)


RERANK_DEPTH = 100  # Seismic's top 100 rescored exactly from the shards (float32 dot products): Seismic's own scores
# misorder near rank 10. Measured at 20,000 realistic-vocabulary passages (benchmarks/index_recall.py --zipf), whole
# posting lists and exact summaries: top-10 recall vs exact 0.970 from Seismic's scores, 1.000 after rescoring.


def build_index(index_dir: Path, shards, build: dict, search: dict) -> None:
    """Seismic from the shards ((ids, vectors) pairs); Seismic holds the whole sparse collection while building."""
    from seismic import SeismicDataset, SeismicIndex

    dataset = SeismicDataset()
    for ids, vectors in shards:
        for doc_id, (terms, weights) in zip(ids, _rows(vectors), strict=True):
            dataset.add_document(str(doc_id), terms, weights)
    SeismicIndex.build_from_dataset(dataset, **build).save(str(index_dir / "seismic"))


def load_index(index_dir: Path, build: dict, search: dict):
    from seismic import SeismicIndex

    return SeismicIndex.load(str(index_dir / "seismic.index.seismic"))


def search_index(index, encoded, query_ids: list[str], k: int, search: dict) -> list[list[tuple[str, float]]]:
    results = []
    for query_id, (terms, weights) in zip(query_ids, _rows(encoded), strict=True):
        cut = max(len(terms), 1) if search["query_cut"] == "all" else int(search["query_cut"])
        hits = index.search(str(query_id), terms, weights, k=k, query_cut=cut, heap_factor=float(search["heap_factor"]))
        results.append([(doc_id, float(score)) for _, score, doc_id in hits])
    return results


def index_files(index_dir: Path) -> list[Path]:
    return list(index_dir.glob("seismic*"))


DENSE_LISTS = 0.1  # posting lists averaging more than this share of the documents: no inverted index
DENSE_CHECK_DOCUMENTS = 10_000  # below this a build takes seconds and the calibration alone decides


def approximate_unsuitable(shards) -> str | None:
    """Why an inverted index cannot pay on these vectors, or None. A term's posting list holds every document
    that has the term; when the lists average more than DENSE_LISTS of the corpus (a tiny vocabulary: the
    fixture's 381 tokens give 85% at 100,000 passages; real SPLADE on MS MARCO about 0.4%), every query term
    scans most documents, Seismic is slower than scoring all of them, and its builds take minutes per setting."""
    documents, frequency = 0, None
    for _, vectors in shards:
        counts = np.bincount(vectors.indices, minlength=vectors.shape[1])
        frequency = counts if frequency is None else frequency + counts
        documents += vectors.shape[0]
    if frequency is None or documents < DENSE_CHECK_DOCUMENTS:
        return None
    used = frequency[frequency > 0]
    share = float(used.mean()) / documents if used.size else 0.0
    if share <= DENSE_LISTS:
        return None
    return (f"posting lists average {share:.0%} of the {documents:,} documents ({used.size} terms used, "
            f"{frequency.sum() / documents:.0f} per document): an inverted index would scan most documents for "
            "every query, so search scores every document exactly instead")


def candidate_settings(documents: int) -> list[tuple[dict, dict]]:
    """(build, search) Seismic settings, cheapest first. Seismic's defaults (n_postings 3500, summary_energy 0.4,
    centroid_fraction 0.1, query_cut 10, heap_factor 0.7) are tuned for MS MARCO's 8.8M passages of real SPLADE
    vectors. Here every query term is used, posting lists keep at least a tenth of the corpus; the second setting
    makes the block summaries exact (summary_energy 1.0: each block's summary holds every term's maximum, not the
    terms of 40% of its weight) on the same lists and blocks, and the last two keep whole posting lists with five
    times as many blocks, whose clustering grows with the square of a list's length."""
    pruned = {"n_postings": max(3500, documents // 10), "centroid_fraction": 0.1, "summary_energy": 0.4,
              "max_fraction": 1.5}
    exact_summaries = pruned | {"summary_energy": 1.0}
    whole = {"n_postings": max(3500, documents), "centroid_fraction": 0.5, "summary_energy": 1.0, "max_fraction": 1.5}
    every_term = {"query_cut": "all"}
    return [(pruned, every_term | {"heap_factor": 0.6}), (exact_summaries, every_term | {"heap_factor": 0.6}),
            (whole, every_term | {"heap_factor": 0.6}), (whole, every_term | {"heap_factor": 0.4})]


# ----------------------------------------------------------------------------------------- evaluation
def evaluation_sets(evaluation, root: Path) -> dict[str, tuple[str, str]]:
    """Set name -> (folder, split) that the evaluator reads: one NanoBEIR-en folder, a split per set."""
    from sentence_transformers.evaluation.NanoBEIREvaluator import DATASET_NAME_TO_HUMAN_READABLE

    unknown = [n for n in evaluation.datasets if n.lower() not in DATASET_NAME_TO_HUMAN_READABLE]
    if unknown:
        raise FileNotFoundError(f"{root}: unknown NanoBEIR set(s) {unknown}; use names of "
                                f"{sorted(DATASET_NAME_TO_HUMAN_READABLE)}")
    return {n: (str(root), f"Nano{DATASET_NAME_TO_HUMAN_READABLE[n.lower()]}") for n in evaluation.datasets}


def nanobeir_evaluator(root: Path, datasets: list[str], batch_size: int, dataset_id: str | None = None):
    """sentence-transformers' ``SparseNanoBEIREvaluator`` over the local NanoBEIR-en copy at ``root``, fed through
    its ``_load_dataset_subset_split`` hook from the parquet files (``retrievers.data.local.LocalNanoBEIRData``).
    ``dataset_id`` is only its label (the model card of a model trained with it shows it; default: the folder's
    name)."""
    from sentence_transformers.sparse_encoder.evaluation import SparseNanoBEIREvaluator

    from retrievers.data.local import LocalNanoBEIRData

    class LocalSparseNanoBEIREvaluator(LocalNanoBEIRData, SparseNanoBEIREvaluator):
        local_root = root

    return LocalSparseNanoBEIREvaluator(
        dataset_names=datasets, dataset_id=dataset_id or root.name, batch_size=batch_size, show_progress_bar=False
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
