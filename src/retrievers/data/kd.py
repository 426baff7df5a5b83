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

from retrievers.data.validate import check_kd_tables, row_of_flat
from retrievers.errors import KDDataError


@dataclass
class KDTables:
    queries: object  # datasets.Dataset with a `text` column (memory-mapped)
    documents: object  # datasets.Dataset with a `text` column (memory-mapped)
    train: pa.Table  # query_id, document_ids, scores, query_pos, document_pos
    fingerprint: str = ""  # of the three configs' files (their sha256s)


def _load_config(root: Path, config: str, columns: list[str]):
    """One config of the KD folder, read from its parquet files (``retrievers.data.local``: no name-keyed cache)."""
    from retrievers.data.local import LocalDataError, load_split

    try:
        return load_split(root, config, "train", columns)
    except LocalDataError as error:
        raise KDDataError(str(error)) from None


def _positions(ids, universe: pa.ChunkedArray, what: str, where: str, lists=None) -> pa.Array:
    """Row positions of ``ids`` in ``universe``; a missing id is named with its row (``lists``: the list column
    that ``ids`` is the flattening of)."""
    positions = pc.index_in(ids, value_set=universe.combine_chunks())
    if positions.null_count:
        first = pc.index(pc.is_null(positions), True).as_py()
        row = row_of_flat(lists, first)[0] if lists is not None else first
        raise KDDataError(
            f"{where}: row {row}: {what} {ids[first].as_py()!r} is referenced by the scores but missing from its "
            "table; fix or drop it in the source and re-run its download stage"
        )
    return positions


def attach_positions(queries: pa.Table, documents: pa.Table, train: pa.Table, where: str) -> pa.Table:
    """``train`` with ``query_pos`` and ``document_pos``: the rows of its ids in the queries and documents tables."""
    lengths_ids = pc.list_value_length(train.column("document_ids"))
    query_pos = _positions(train.column("query_id"), queries.column("query_id"), "query_id", where)
    flat_ids = pc.list_flatten(train.column("document_ids"))
    doc_pos_flat = _positions(flat_ids, documents.column("document_id"), "document_id", where,
                              lists=train.column("document_ids"))
    offsets = np.concatenate([[0], np.cumsum(lengths_ids.to_numpy(zero_copy_only=False))]).astype(np.int32)
    document_pos = pa.ListArray.from_arrays(
        pa.array(offsets), doc_pos_flat.combine_chunks() if isinstance(doc_pos_flat, pa.ChunkedArray) else doc_pos_flat
    )
    return train.append_column("query_pos", query_pos).append_column("document_pos", document_pos)


def load_kd_tables(root: Path, scores_config: str) -> KDTables:
    """Load the three configs, check them (``data.validate``) and attach row positions of every referenced query
    and document."""
    queries = _load_config(root, "queries", ["query_id", "text"])
    documents = _load_config(root, "documents", ["document_id", "text"])
    train = _load_config(root, scores_config, ["query_id", "document_ids", "scores"])
    q, d, t = queries.data.table, documents.data.table, train.data.table
    check_kd_tables(root, scores_config, q, d, t)
    train_table = attach_positions(q, d, t, f"{root} config {scores_config!r}")
    fingerprint = "-".join(ds._fingerprint[:12] for ds in (queries, documents, train))
    return KDTables(queries=queries.select_columns(["text"]), documents=documents.select_columns(["text"]),
                    train=train_table, fingerprint=fingerprint)


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


class KDPositionsTransform:
    """``datasets`` transform: rows -> {query, documents, scores} with row positions where ``KDTransform`` puts
    texts (for a collator that pads pre-tokenised ids, ``retrievers.packed.PretokenizedKDCollator``)."""

    def __init__(self, n_ways: int):
        self.n_ways = n_ways

    def __call__(self, batch: dict) -> dict:
        return {"query": batch["query_pos"], "documents": [row[: self.n_ways] for row in batch["document_pos"]],
                "scores": [row[: self.n_ways] for row in batch["scores"]]}


def kd_training_dataset(tables: KDTables, n_ways: int, max_samples: int | None = None, texts: bool = True):
    """A ``datasets.Dataset`` of position rows with a lazy text-fetching transform (``texts=False``: positions)."""
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
    dataset = Dataset(train, fingerprint=f"kd-positions-{tables.fingerprint}-{train.num_rows}-{n_ways}")
    dataset.set_transform(KDTransform(tables, n_ways) if texts else KDPositionsTransform(n_ways))
    return dataset


def kd_rows(tables: KDTables, kept_documents: int, seed: int, max_rows: int | None = None, eval_rows: int = 0):
    """The SPLADE recipe's KD rows, split as st_splade_train.py@b80f2b8 splits them: the first ``max_rows`` rows,
    then ``train_test_split(test_size=eval_rows, seed=seed, shuffle=True)``; (train, eval or None).

    Each row keeps the first ``kept_documents`` scored documents (the script's ``KDProcessing`` n_ways default,
    32) as ``document_ids`` and ``scores``, plus ``positions`` {query, documents}: where the texts are, for
    ``KDTripletCollator``, which draws the positive and the negatives. The columns the no-duplicates batch sampler
    compares are ``query_id``, ``document_ids`` and ``positions`` (``scores`` is a label column it skips): two
    rows clash when they share a query or their whole document list, as the script's rows did."""
    from datasets import Dataset

    train = tables.train if max_rows is None else tables.train.slice(0, max_rows)
    short = pc.less(pc.list_value_length(train.column("document_pos")), 2)
    if pc.any(short).as_py():
        row = pc.index(short, True).as_py()
        raise KDDataError(f"row {row} has fewer than 2 scored documents: no positive and negative to draw")
    positions = pa.StructArray.from_arrays(
        [train.column("query_pos").combine_chunks(),
         pc.list_slice(train.column("document_pos"), 0, kept_documents).combine_chunks()],
        names=["query", "documents"],
    )
    rows = pa.table({
        "query_id": train.column("query_id"),
        "document_ids": pc.list_slice(train.column("document_ids"), 0, kept_documents),
        "scores": pc.list_slice(train.column("scores"), 0, kept_documents),
        "positions": positions,
    })
    # An explicit fingerprint: without one, datasets hashes the table by pickling it (reads it all into RAM).
    dataset = Dataset(rows, fingerprint=f"kd-rows-{tables.fingerprint}-{rows.num_rows}-{kept_documents}")
    if not eval_rows:
        return dataset, None
    split = dataset.train_test_split(test_size=eval_rows, seed=seed, shuffle=True)
    return split["train"], split["test"]
