"""Checks of every table and model folder a stage reads, before anything trains or is written.

Each check is vectorised with ``pyarrow.compute`` (the published KD set has ~800k queries and 8.8M documents) and
raises :class:`~retrievers.faults.InputError` with one line: the file or config, the row and id, what is wrong and
how to fix it. Row numbers count from 0 across the config's parquet shards, in the order ``datasets`` reads them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retrievers.faults import InputError

SHORT_TEXT_BYTES = 64  # only texts this short can be blank; longer ones are not read at all

FIX_SOURCE = "fix or drop it in the source and re-run its download stage"


def _kind(dtype: pa.DataType) -> str | None:
    if pa.types.is_integer(dtype):
        return "integer"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "string"
    return None


def _first(mask) -> int | None:
    """Index of the first true value of a boolean (chunked) array, or None."""
    if not pc.any(mask).as_py():
        return None
    return int(pc.index(mask, True).as_py())


def require_columns(table: pa.Table, where: str, columns: dict[str, str]) -> None:
    """``columns``: name -> 'id' (integer or string), 'text' (string), 'ids' (list of ids), 'scores' (list of
    floats)."""
    missing = [name for name in columns if name not in table.column_names]
    if missing:
        raise InputError(f"{where}: missing column(s) {missing} (has {table.column_names}); {FIX_SOURCE}")
    for name, role in columns.items():
        dtype = table.schema.field(name).type
        if pa.types.is_null(dtype) and len(table) and role in ("id", "text"):
            continue  # every value null: the null checks that follow name the first row (and its id)
        if role == "id":
            ok = _kind(dtype) is not None
        elif role == "text":
            ok = _kind(dtype) == "string"
        else:
            ok = pa.types.is_list(dtype) or pa.types.is_large_list(dtype)
            value = dtype.value_type if ok else None
            ok = ok and (_kind(value) is not None if role == "ids" else pa.types.is_floating(value))
        if not ok:
            want = {"id": "integers or strings", "text": "strings", "ids": "lists of integer or string ids",
                    "scores": "lists of floats"}[role]
            raise InputError(f"{where}: column {name!r} has type {dtype}, expected {want}; {FIX_SOURCE}")


def _describe_row(table: pa.Table, row: int, id_column: str | None) -> str:
    if id_column is None:
        return f"row {row}"
    return f"row {row} ({id_column} {table.column(id_column)[row].as_py()!r})"


def check_no_nulls(table: pa.Table, where: str, column: str, id_column: str | None = None) -> None:
    row = _first(pc.is_null(table.column(column)))
    if row is not None:
        raise InputError(f"{where}: {_describe_row(table, row, id_column)}: {column} is null; {FIX_SOURCE}")


def check_texts(table: pa.Table, where: str, column: str = "text", id_column: str | None = None,
                allow_empty: bool = False) -> None:
    """No null text, and (unless ``allow_empty``) none empty or only whitespace."""
    check_no_nulls(table, where, column, id_column)
    if allow_empty:
        return
    texts = table.column(column)
    short = pc.indices_nonzero(pc.less_equal(pc.binary_length(texts), SHORT_TEXT_BYTES))
    if len(short) == 0:
        return
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(pc.take(texts, short))), 0)
    first = _first(blank)
    if first is not None:
        row = int(short[first].as_py())
        raise InputError(f"{where}: {_describe_row(table, row, id_column)}: {column} is empty; {FIX_SOURCE}")


def check_unique(table: pa.Table, where: str, column: str) -> None:
    """No id appears twice (a lookup by id would silently take one of them)."""
    ids = table.column(column)
    if pc.count_distinct(ids).as_py() == len(ids) - ids.null_count:
        return
    counts = pc.value_counts(ids)
    value = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))[0]
    rows = pc.indices_nonzero(pc.equal(ids, value)).to_pylist()[:2]
    raise InputError(f"{where}: {column} {value.as_py()!r} appears more than once (rows {rows[0]} and {rows[1]}); "
                     f"drop the duplicates in the source and re-run its download stage")


def row_of_flat(lists, flat_index: int) -> tuple[int, int]:
    """(row, position in the row) of element ``flat_index`` of the flattened list column."""
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    ends = np.cumsum(lengths)
    row = int(np.searchsorted(ends, flat_index, side="right"))
    return row, flat_index - (int(ends[row - 1]) if row else 0)


def check_scores(train: pa.Table, where: str) -> None:
    """document_ids and scores of equal length per row, no null lists, no NaN, infinite or null score."""
    for column in ("document_ids", "scores"):
        check_no_nulls(train, where, column, "query_id")
    ids_len = pc.list_value_length(train.column("document_ids"))
    scores_len = pc.list_value_length(train.column("scores"))
    row = _first(pc.not_equal(ids_len, scores_len))
    if row is not None:
        raise InputError(
            f"{where}: {_describe_row(train, row, 'query_id')}: {ids_len[row].as_py()} document_ids but "
            f"{scores_len[row].as_py()} scores (they must pair up); {FIX_SOURCE}"
        )
    row = _first(pc.equal(ids_len, 0))
    if row is not None:
        raise InputError(f"{where}: {_describe_row(train, row, 'query_id')}: no scored documents; {FIX_SOURCE}")
    flat = pc.list_flatten(train.column("scores"))
    bad = pc.or_kleene(pc.is_null(flat), pc.invert(pc.is_finite(flat)))
    index = _first(pc.fill_null(bad, True))
    if index is not None:
        row, position = row_of_flat(train.column("scores"), index)
        value = flat[index].as_py()
        raise InputError(
            f"{where}: {_describe_row(train, row, 'query_id')}: score {position} is {value!r} (teacher scores must "
            f"be finite); {FIX_SOURCE}"
        )
    for column in ("document_ids",):
        index = _first(pc.is_null(pc.list_flatten(train.column(column))))
        if index is not None:
            row, position = row_of_flat(train.column(column), index)
            raise InputError(f"{where}: {_describe_row(train, row, 'query_id')}: {column}[{position}] is null; "
                             f"{FIX_SOURCE}")


def check_same_id_kind(a: pa.DataType, b: pa.DataType, what: str) -> None:
    if _kind(a) != _kind(b):
        raise InputError(f"{what}: ids are {a} in one table and {b} in the other; {FIX_SOURCE}")


def check_kd_tables(root: Path, scores_config: str, queries: pa.Table, documents: pa.Table, train: pa.Table) -> None:
    """Every structural check of a KD set (ms-marco-en-bge-gemma layout) that does not need the id join.

    Missing references are found by the join itself (``retrievers.data.kd``), which reports them the same way."""
    q_where, d_where, t_where = (f"{root} config {name!r}" for name in ("queries", "documents", scores_config))
    require_columns(queries, q_where, {"query_id": "id", "text": "text"})
    require_columns(documents, d_where, {"document_id": "id", "text": "text"})
    require_columns(train, t_where, {"query_id": "id", "document_ids": "ids", "scores": "scores"})
    check_same_id_kind(train.schema.field("query_id").type, queries.schema.field("query_id").type,
                       f"{t_where} query_id vs {q_where}")
    check_same_id_kind(train.schema.field("document_ids").type.value_type, documents.schema.field("document_id").type,
                       f"{t_where} document_ids vs {d_where}")
    check_no_nulls(queries, q_where, "query_id")
    check_no_nulls(documents, d_where, "document_id")
    check_no_nulls(train, t_where, "query_id")
    check_unique(queries, q_where, "query_id")
    check_unique(documents, d_where, "document_id")
    check_unique(train, t_where, "query_id")
    check_texts(queries, q_where, id_column="query_id")
    check_texts(documents, d_where, id_column="document_id")
    check_scores(train, t_where)


def check_triplets(table: pa.Table, where: str) -> None:
    require_columns(table, where, {"query": "text", "positive": "text", "negative": "text"})
    for column in ("query", "positive", "negative"):
        check_texts(table, where, column)


def check_evaluation_set(corpus: pa.Table, queries: pa.Table, qrels: pa.Table, where: str) -> None:
    """One NanoBEIR set: corpus and queries (_id, text), qrels (query-id, corpus-id) referring to both.

    Empty texts are allowed, as the evaluators drop them; null texts, duplicate ids and dangling qrels are not."""
    c_where, q_where, r_where = (f"{where} {name}" for name in ("corpus", "queries", "qrels"))
    require_columns(corpus, c_where, {"_id": "id", "text": "text"})
    require_columns(queries, q_where, {"_id": "id", "text": "text"})
    require_columns(qrels, r_where, {"query-id": "id", "corpus-id": "id"})
    for table, name in ((corpus, c_where), (queries, q_where)):
        check_no_nulls(table, name, "_id")
        check_unique(table, name, "_id")
        check_texts(table, name, id_column="_id", allow_empty=True)
    for column, target, target_where in (("query-id", queries, q_where), ("corpus-id", corpus, c_where)):
        check_no_nulls(qrels, r_where, column)
        ids = pc.cast(qrels.column(column), pa.string())
        known = pc.cast(target.column("_id"), pa.string()).combine_chunks()
        row = _first(pc.invert(pc.is_in(ids, value_set=known)))
        if row is not None:
            raise InputError(f"{r_where}: row {row}: {column} {ids[row].as_py()!r} is not in {target_where}; "
                             f"{FIX_SOURCE}")
    if qrels.num_rows == 0:
        raise InputError(f"{r_where}: no relevance judgements; {FIX_SOURCE}")


def check_model_folder(folder: Path, fix: str) -> None:
    """A model folder whose weights load: every safetensors file has a whole header and covers its tensors, every
    JSON config parses. ``fix``: what to do about a bad one (re-download, re-train)."""
    from safetensors import SafetensorError, safe_open

    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; {fix}")
    weights = sorted(folder.rglob("*.safetensors"))
    if not weights and not any(folder.rglob("pytorch_model*.bin")):
        raise InputError(f"{folder}: no model weights (*.safetensors); {fix}")
    for path in weights:
        try:
            with safe_open(str(path), framework="np") as handle:
                handle.keys()
        except (SafetensorError, OSError) as error:
            raise InputError(f"{path}: unreadable weights ({str(error).splitlines()[0]}); {fix}") from None
    for path in sorted(folder.rglob("*.json")):
        try:
            json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: not valid JSON ({error}); {fix}") from None
