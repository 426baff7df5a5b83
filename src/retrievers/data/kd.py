"""The knowledge-distillation dataset (ms-marco-en-bge-gemma layout) prepared with Arrow, not Python dicts.

PyLate's ``KDProcessing`` builds ``{id: row}`` dicts of every query and document (about 9.6M entries on
the published set). Here ids are resolved to row positions once, with ``pyarrow.compute.index_in`` (a
C++ hash join), and texts are fetched per batch by position from the memory-mapped datasets that
``datasets`` keeps on disk (``Dataset[positions]`` gathers chunk by chunk; ``ChunkedArray.take`` would
first concatenate the whole multi-GB text column, which is what ran a full-size run out of memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retrievers.errors import KDDataError


@dataclass
class KDTables:
    queries: object  # datasets.Dataset with a `text` column (memory-mapped)
    documents: object  # datasets.Dataset with a `text` column (memory-mapped)
    train: pa.Table  # query_id, document_ids, scores, query_pos, document_pos


def _load_config(root: Path, config: str, columns: list[str]):
    from datasets import load_dataset

    try:
        dataset = load_dataset(str(root), config, split="train")
    except ValueError as error:
        raise KDDataError(f"{root}: config {config!r} not found ({error})") from None
    missing = set(columns) - set(dataset.column_names)
    if missing:
        raise KDDataError(f"{root}: config {config!r} lacks column(s) {sorted(missing)}")
    return dataset


def _positions(ids: pa.ChunkedArray | pa.Array, universe: pa.ChunkedArray, what: str, root: Path) -> pa.Array:
    positions = pc.index_in(ids, value_set=universe.combine_chunks())
    if positions.null_count:
        first = pc.filter(ids, pc.is_null(positions))[0]
        raise KDDataError(f"{root}: {what} {first} is referenced by the scores but missing from its table")
    return positions


def load_kd_tables(root: Path, scores_config: str) -> KDTables:
    """Load the three configs and attach row positions of every referenced query and document."""
    queries = _load_config(root, "queries", ["query_id", "text"])
    documents = _load_config(root, "documents", ["document_id", "text"])
    train = _load_config(root, scores_config, ["query_id", "document_ids", "scores"])
    q, d, t = queries.data.table, documents.data.table, train.data.table
    lengths_ids = pc.list_value_length(t.column("document_ids"))
    lengths_scores = pc.list_value_length(t.column("scores"))
    if not pc.all(pc.equal(lengths_ids, lengths_scores)).as_py():
        row = pc.index(pc.equal(lengths_ids, lengths_scores), False).as_py()
        raise KDDataError(f"{root}: {scores_config} row {row}: document_ids and scores differ in length")
    query_pos = _positions(t.column("query_id"), q.column("query_id"), "query_id", root)
    flat_ids = pc.list_flatten(t.column("document_ids"))
    doc_pos_flat = _positions(flat_ids, d.column("document_id"), "document_id", root)
    offsets = np.concatenate([[0], np.cumsum(lengths_ids.to_numpy(zero_copy_only=False))]).astype(np.int32)
    document_pos = pa.ListArray.from_arrays(
        pa.array(offsets), doc_pos_flat.combine_chunks() if isinstance(doc_pos_flat, pa.ChunkedArray) else doc_pos_flat
    )
    train_table = t.append_column("query_pos", query_pos).append_column("document_pos", document_pos)
    return KDTables(queries=queries.select_columns(["text"]), documents=documents.select_columns(["text"]),
                    train=train_table)


def texts_at(texts, positions: list[int]) -> list[str]:
    """Texts at row ``positions`` of a memory-mapped ``datasets.Dataset`` with a ``text`` column."""
    return texts[positions]["text"] if positions else []


class KDTransform:
    """``datasets`` transform: rows of positions -> {query, documents, scores} as PyLate's Distillation wants."""

    def __init__(self, tables: KDTables, n_ways: int):
        self.tables, self.n_ways = tables, n_ways

    def __call__(self, batch: dict) -> dict:
        doc_pos = [row[: self.n_ways] for row in batch["document_pos"]]
        flat = texts_at(self.tables.documents, [p for row in doc_pos for p in row])
        documents, start = [], 0
        for row in doc_pos:
            documents.append(flat[start : start + len(row)])
            start += len(row)
        return {
            "query": texts_at(self.tables.queries, batch["query_pos"]),
            "documents": documents,
            "scores": [row[: self.n_ways] for row in batch["scores"]],
        }


def kd_training_dataset(tables: KDTables, n_ways: int, max_samples: int | None = None):
    """A ``datasets.Dataset`` of position rows with a lazy text-fetching transform."""
    from datasets import Dataset

    train = tables.train.select(["query_pos", "document_pos", "scores"])
    too_short = pc.less(pc.list_value_length(train.column("document_pos")), n_ways)
    if pc.any(too_short).as_py():
        row = pc.index(too_short, True).as_py()
        raise KDDataError(f"row {row} has fewer than n_ways={n_ways} scored documents; lower n_ways in params.yaml")
    if max_samples is not None:
        train = train.slice(0, max_samples)
    # An explicit fingerprint: without one, datasets hashes the table by pickling it, which reads the whole
    # memory-mapped table into RAM (2.5 GiB at a tenth of the published size).
    dataset = Dataset(train, fingerprint=f"kd-positions-{train.num_rows}-{n_ways}")
    dataset.set_transform(KDTransform(tables, n_ways))
    return dataset


class SpladeTripletTransform:
    """``datasets`` transform: rows of positions -> {query, positive, negative_1..n[, label]} texts.

    The document with the highest teacher score is the positive; the negatives are drawn without replacement
    from the query's other scored documents by a generator seeded with (seed, epoch, row), so every epoch sees
    fresh negatives, the same seed gives the same ones, and the draw does not depend on the order in which the
    sampler or the dataloader workers read rows. ``epoch`` is advanced by ``TripletEpochCallback``.
    ``label`` (with ``with_scores``): the teacher scores of the positive and the negatives, for the
    soft-distillation losses (SparseMarginMSELoss, SparseDistillKLDivLoss)."""

    def __init__(self, tables: KDTables, n_negatives: int, seed: int, with_scores: bool = False):
        self.tables, self.n_negatives, self.seed, self.with_scores = tables, n_negatives, seed, with_scores
        self.epoch = 0

    def draw(self, row: int, scores: list[float]) -> tuple[int, list[int]]:
        """(index of the positive, indices of the negatives) among one row's scored documents."""
        best = int(np.argmax(scores))
        rest = [i for i in range(len(scores)) if i != best]
        rng = np.random.default_rng((self.seed, self.epoch, row))
        return best, [rest[int(c)] for c in rng.choice(len(rest), size=self.n_negatives, replace=False)]

    def __call__(self, batch: dict) -> dict:
        positives: list[int] = []
        negatives: list[list[int]] = [[] for _ in range(self.n_negatives)]
        labels: list[list[float]] = []
        for row, documents, scores in zip(batch["row"], batch["document_pos"], batch["teacher"], strict=True):
            best, drawn = self.draw(row, scores)
            positives.append(documents[best])
            for slot, index in zip(negatives, drawn, strict=True):
                slot.append(documents[index])
            labels.append([scores[best]] + [scores[i] for i in drawn])
        columns: dict[str, list] = {
            "query": texts_at(self.tables.queries, batch["query_pos"]),
            "positive": texts_at(self.tables.documents, positives),
        }
        for i, slot in enumerate(negatives, start=1):
            columns[f"negative_{i}"] = texts_at(self.tables.documents, slot)
        if self.with_scores:
            columns["label"] = labels
        return columns


def splade_triplets(
    tables: KDTables, n_negatives: int, seed: int, max_samples: int | None = None, with_scores: bool = False
):
    """A ``datasets.Dataset`` of (query, positive, negative_1..n) triplets drawn lazily by
    ``SpladeTripletTransform``, and that transform (set its ``epoch`` to draw another epoch's negatives)."""
    from datasets import Dataset

    train = tables.train if max_samples is None else tables.train.slice(0, max_samples)
    short = pc.less_equal(pc.list_value_length(train.column("document_pos")), n_negatives)
    if pc.any(short).as_py():
        row = pc.index(short, True).as_py()
        raise KDDataError(
            f"row {row} has too few scored documents for a positive and n_negatives={n_negatives}; "
            "lower n_negatives in params.yaml"
        )
    # Named `teacher`, not `scores`: the no-duplicates sampler drops columns named like labels.
    positions = train.select(["query_pos", "document_pos"]).append_column("teacher", train.column("scores"))
    positions = positions.append_column("row", pa.array(np.arange(positions.num_rows), pa.int64()))
    dataset = Dataset(positions, fingerprint=f"splade-positions-{positions.num_rows}")
    transform = SpladeTripletTransform(tables, n_negatives, seed, with_scores)
    dataset.set_transform(transform)
    return dataset, transform
