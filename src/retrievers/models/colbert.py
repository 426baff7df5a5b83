"""ColBERT models (ModernBERT-XTR): PyLate's ``ColBERT``, token vectors scored by MaxSim, a PLAID index.

The one place that knows how this kind is built, loaded, encoded, evaluated, indexed and described on its card.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrievers.errors import MissingInputError

if TYPE_CHECKING:  # the config models (pydantic) are loaded by the pipeline, not by inference
    from retrievers.config import ColBERTConfig, SpeedConfig

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


def colbert_collator(model, k_train: int | None = None):
    """PyLate's collator, or its packed variant (documents padded to the batch's longest, ``k_train`` for XTR's
    top-k) for a PackedColBERT."""
    from pylate import utils

    from retrievers.packed import PackedColBERT, PackedColBERTCollator

    if isinstance(model, PackedColBERT) and model.speed.documents_to_longest:
        return PackedColBERTCollator(model.tokenize, document_length=model.document_length or 512, k_train=k_train,
                                     skiplist=list(model.skiplist), pad_id=model.tokenizer.pad_token_id)
    return utils.ColBERTCollator(model.tokenize)


def pretokenized_kd_collator(model, tables, cache: Path, k_train: int | None = None):
    """The KD collator that pads token ids from caches of the KD tables' texts (built on first use); the same batch
    as ``colbert_collator(model, k_train)`` makes of the texts. ``cache``: the caches' folder."""
    from retrievers.data.tokens import plan_for, token_cache
    from retrievers.packed import PretokenizedKDCollator

    module, tokenizer = model._first_module(), model.tokenizer
    queries = token_cache(tables.queries, tokenizer,
                          plan_for(module, tokenizer, model.query_length, model.query_prefix_id),
                          tables.queries._fingerprint, cache)
    documents = token_cache(tables.documents, tokenizer,
                            plan_for(module, tokenizer, model.document_length, model.document_prefix_id),
                            tables.documents._fingerprint, cache)
    return PretokenizedKDCollator(model, queries, documents, k_train)


def build(phase, init: Path):
    """The phase's model before training (its ``init`` folder with the phase's ColBERT head)."""
    return build_colbert(init, phase.colbert)


def load(path: Path | str):
    """A trained or released model folder, with the stock loader."""
    from pylate.models import ColBERT

    return ColBERT(str(path))


def settle_for_save(model) -> None:
    """Put the model in the state an uninterrupted run saves it in. PyLate's ``tokenize`` leaves the encoder's
    ``max_seq_length`` and the fast tokenizer's truncation and padding at its last call's (documents, at the end of
    training), and the saved folder records them (sentence_bert_config.json, tokenizer.json); a run resumed from
    its last checkpoint tokenizes nothing before saving. One document tokenized here, as PyLate's collator calls
    it (``pad=True``; a ``PackedColBERT`` padding documents to the longest turns that off, as in training), leaves
    what the last training batch leaves."""
    model.tokenize(["a document"], is_query=False, pad=True)

# ------------------------------------------------------------------------------------------- training
def training_arguments_class() -> type:
    from sentence_transformers import SentenceTransformerTrainingArguments

    return SentenceTransformerTrainingArguments


def trainer(phase, init: Path, data: Path, output: Path, seed: int, eval_data: Path | None = None):
    """(model, trainer) for an XTR phase: contrastive on triplets or distillation from teacher scores (no
    in-training evaluation: ``eval_data`` is unused)."""
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


PYFUNC_OUTPUT = "embedding"


def pyfunc_output_spec():
    """The MLflow signature's output column: token vectors [tokens, dim] per text."""
    from mlflow.types import ColSpec, DataType
    from mlflow.types.schema import Array

    return ColSpec(Array(Array(DataType.float)), PYFUNC_OUTPUT)


# ------------------------------------------------------------------------------------------- indexing
# A shard of the corpus (retrievers.indexing): the documents' token vectors, concatenated, and their lengths.
def shard_arrays(encoded: list[np.ndarray]) -> dict[str, np.ndarray]:
    tokens = np.concatenate(encoded).astype(np.float32) if encoded else np.zeros((0, 0), np.float32)
    return {"tokens": tokens, "lengths": np.array([len(e) for e in encoded], dtype=np.int64)}


def shard_vectors(arrays) -> tuple[np.ndarray, np.ndarray]:
    return arrays["tokens"], arrays["lengths"]


def shard_documents(vectors) -> list[np.ndarray]:
    tokens, lengths = vectors
    return np.split(tokens, np.cumsum(lengths)[:-1]) if len(lengths) else []


def count(encoded) -> int:
    return len(encoded)


def maxsim_scores(queries: list[np.ndarray], tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """ColBERT late interaction, exactly: [queries, documents], the sum over query tokens of the max over each
    document's tokens of the dot product (0 for a document without tokens)."""
    out = np.zeros((len(queries), len(lengths)), dtype=np.float32)
    nonempty = lengths > 0
    if not len(queries) or not nonempty.any():
        return out
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)[nonempty]
    longest = max(len(q) for q in queries)
    per_product = max(1, (1 << 24) // max(len(tokens) * longest, 1))  # ~64 MiB of similarities at a time
    for first in range(0, len(queries), per_product):
        chunk = queries[first : first + per_product]
        best = np.maximum.reduceat(tokens @ np.concatenate(chunk).T, starts, axis=0)  # [documents, query tokens]
        column = 0
        for i, query in enumerate(chunk):
            out[first + i, nonempty] = best[:, column : column + len(query)].sum(axis=1)
            column += len(query)
    return out


def exact_scores(queries: list[np.ndarray], vectors) -> np.ndarray:
    return maxsim_scores(queries, *vectors)


def select(vectors, rows: list[int]):
    """The shard vectors of the documents at ``rows``."""
    tokens, lengths = vectors
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    parts = [tokens[starts[r] : starts[r] + lengths[r]] for r in rows]
    return (np.concatenate(parts) if parts else tokens[:0]), lengths[rows]


def query_vectors(encoded, i: int):
    return [encoded[i]]


# PLAID's scores come from compressed residuals; its top candidates are rescored exactly from the stored vectors.
RERANK_DEPTH = 100


SAMPLED_KMEANS_DOCUMENTS = 10_000  # corpora above this get a first PLAID setting with a sampled k-means
KMEANS_SAMPLE = 8192  # documents whose token vectors train that setting's centroids
PLAID_ADD_TOKENS = 1 << 22  # token vectors per add_documents call: bounds the memory of a build


def _plaid(index_dir: Path, build: dict, search: dict, override: bool):
    from pylate import indexes

    return indexes.PLAID(index_folder=str(index_dir), index_name="plaid", override=override, show_progress=False,
                         device="cpu", use_triton=False, **build, **search)


def build_index(index_dir: Path, shards, build: dict, search: dict) -> None:
    """PLAID from the shards ((ids, vectors) pairs), fed PLAID_ADD_TOKENS token vectors at a time."""
    plaid = _plaid(index_dir, build, search, override=True)
    ids: list[str] = []
    documents: list[np.ndarray] = []
    for shard_ids, vectors in shards:
        ids += [str(i) for i in shard_ids]
        documents += shard_documents(vectors)
        if sum(len(d) for d in documents) >= PLAID_ADD_TOKENS:
            plaid.add_documents(documents_ids=ids, documents_embeddings=documents)
            ids, documents = [], []
    if ids:
        plaid.add_documents(documents_ids=ids, documents_embeddings=documents)


def load_index(index_dir: Path, build: dict, search: dict):
    from pylate import retrieve

    return retrieve.ColBERT(index=_plaid(index_dir, build, search, override=False))


def search_index(retriever, encoded, query_ids: list[str], k: int, search: dict) -> list[list[tuple[str, float]]]:
    hits = retriever.retrieve(queries_embeddings=encoded, k=k)
    return [[(str(h["id"]), float(h["score"])) for h in row] for row in hits]


def index_files(index_dir: Path) -> list[Path]:
    return [index_dir / "plaid"]


def approximate_unsuitable(shards) -> str | None:
    """Why PLAID cannot pay on these vectors, or None: the calibration decides for ColBERT."""
    return None


def candidate_settings(documents: int) -> list[tuple[dict, dict]]:
    """(build, search) PLAID settings, cheapest first: 8-bit residuals (PyLate's default 4 bits alone cost ~8
    points of top-10 recall against exact MaxSim on the fixture), more probed centroids than PyLate's 8, and more
    rescored candidates as the corpus grows. Above SAMPLED_KMEANS_DOCUMENTS documents the first setting trains
    fast-plaid's centroids on KMEANS_SAMPLE documents for 2 iterations instead of its default sample
    (1 + 16 sqrt(120 N) documents, 55,425 at N = 100,000) for 4: on a CPU that default k-means was estimated at
    about 2 hours at 100,000 passages on 2 cores, and the calibration measures what the smaller sample costs."""
    build = {"nbits": 8, "kmeans_niters": 4}
    full_scores = max(8192, documents // 10)
    settings = [(build, {"n_ivf_probe": probes, "n_full_scores": full_scores}) for probes in (32, 64)] + [
        (build, {"n_ivf_probe": 256, "n_full_scores": max(full_scores, documents)})]
    if documents > SAMPLED_KMEANS_DOCUMENTS:
        sampled = build | {"kmeans_niters": 2, "n_samples_kmeans": KMEANS_SAMPLE}
        settings.insert(0, (sampled, {"n_ivf_probe": 64, "n_full_scores": full_scores}))
    return settings


# ----------------------------------------------------------------------------------------- evaluation
def nanobeir_evaluator(root: Path, datasets: list[str], batch_size: int):
    """PyLate's ``NanoBEIREvaluator`` over the local zeta-alpha-ai Nano* copies in ``root`` (one folder per set).

    PyLate 1.6 overrides ``_load_dataset`` with a copy of sentence-transformers' that calls ``load_dataset`` on its
    module-level repository ids. This subclass uses sentence-transformers' own ``_load_dataset`` again (the same
    dicts, built the same way) with PyLate's ``PyLateInformationRetrievalEvaluator`` as its
    ``information_retrieval_class``, so the data arrives through ``_load_dataset_subset_split``, which reads the
    parquet files (``retrievers.data.local.LocalNanoBEIRData``)."""
    from pylate.evaluation import NanoBEIREvaluator
    from pylate.evaluation.pylate_information_retrieval_evaluator import PyLateInformationRetrievalEvaluator
    from sentence_transformers.evaluation import NanoBEIREvaluator as STNanoBEIREvaluator

    from retrievers.data.local import LocalNanoBEIRData

    class LocalPyLateNanoBEIREvaluator(LocalNanoBEIRData, NanoBEIREvaluator):
        local_root = root
        per_set_folders = True
        information_retrieval_class = PyLateInformationRetrievalEvaluator
        _load_dataset = STNanoBEIREvaluator._load_dataset

    _set_folders(root, datasets)
    return LocalPyLateNanoBEIREvaluator(dataset_names=datasets, batch_size=batch_size, show_progress_bar=False)


def _set_folders(root: Path, datasets: list[str]) -> dict[str, Path]:
    """Set name -> its local copy of the zeta-alpha-ai repository (``<root>/Nano<Name>``); all must exist."""
    from sentence_transformers.evaluation.NanoBEIREvaluator import DATASET_NAME_TO_HUMAN_READABLE

    folders = {n: root / f"Nano{DATASET_NAME_TO_HUMAN_READABLE.get(n.lower(), n)}" for n in datasets}
    missing = [n for n, folder in folders.items() if not folder.exists()]
    if missing:
        raise MissingInputError(
            f"{root}: no local copy of NanoBEIR set(s) {missing}; add them to the source's "
            "members in params.yaml or drop them from evaluation.datasets"
        )
    return folders


def evaluation_sets(evaluation, root: Path) -> dict[str, tuple[str, str]]:
    """Set name -> (folder, split) that the evaluator reads: one zeta-alpha-ai repository per set, split train."""
    return {name: (str(folder), "train") for name, folder in _set_folders(root, evaluation.datasets).items()}


def evaluate(model, evaluation, root: Path) -> dict:
    """PyLate's NanoBEIREvaluator on the local copies of the sets under ``root``."""
    return nanobeir_evaluator(root, evaluation.datasets, evaluation.batch_size)(model)


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
