"""Encoding, indexing and search over a corpus with a released model, for the ``retrievers`` command.

The kind of the model picks the index: PLAID (PyLate) for ColBERT models, Seismic (pyseismic-lsr) for SPLADE
models (both in :mod:`retrievers.models`). Corpora and query files are jsonl or parquet with an ``id`` (or
``_id``) and a ``text`` field (``title``, when present, is prepended to the text).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import ModuleType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from retrievers import models
from retrievers.errors import CLIError

console = Console(stderr=True)
INDEX_RECORD = "retrievers-index.json"
BATCH = 32


def load(folder: Path) -> tuple[ModuleType, object]:
    """(kind module, model) of a model folder."""
    kind = models.for_folder(folder)
    with console.status(f"loading {kind.KIND} model from {folder}"):
        return kind, kind.load(folder)


def read_records(path: Path) -> list[dict]:
    """[{'id', 'text'}] from a jsonl or parquet file."""
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    if path.suffix in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise CLIError(f"{path}:{number}: not a JSON object; each line must be one") from None
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        raise CLIError(f"{path}: unknown format {path.suffix!r}; give a .jsonl or .parquet file")
    records = []
    for number, row in enumerate(rows, 1):
        key = "id" if isinstance(row, dict) and "id" in row else "_id"
        if not isinstance(row, dict) or key not in row or "text" not in row:
            raise CLIError(f"{path}: row {number} needs an 'id' (or '_id') and a 'text' field")
        text = f"{row['title']} {row['text']}" if row.get("title") else row["text"]
        records.append({"id": str(row[key]), "text": text})
    if not records:
        raise CLIError(f"{path}: no records")
    return records


def encode(kind: ModuleType, model, texts: list[str], is_query: bool, what: str):
    """ColBERT: a list of [tokens, dim] arrays; SPLADE: a scipy CSR matrix [texts, vocabulary]."""
    parts = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"encoding {what}", total=len(texts))
        for start in range(0, len(texts), BATCH):
            batch = texts[start : start + BATCH]
            parts.append(kind.encode_batch(model, batch, is_query, BATCH))
            progress.advance(task, len(batch))
    return kind.stack(parts)


def build_index(folder: Path, records: list[dict], corpus: Path, index_dir: Path) -> int:
    """Encode the ``records`` of ``corpus`` with the model in ``folder``; write their index into ``index_dir``
    (replaced)."""
    kind, loaded = load(folder)
    embeddings = encode(kind, loaded, [r["text"] for r in records], False, "documents")
    if index_dir.exists():
        shutil.rmtree(index_dir)
    index_dir.mkdir(parents=True)
    ids = [r["id"] for r in records]
    with console.status(f"building the {kind.INDEX_NAME} index"):
        kind.build_index(index_dir, ids, embeddings)
    record = {"kind": kind.KIND, "model": str(folder.resolve()), "documents": len(ids), "corpus": str(corpus)}
    (index_dir / INDEX_RECORD).write_text(json.dumps(record, indent=2))
    console.print(f"indexed {len(ids)} documents with {kind.KIND} into {index_dir}")
    return len(ids)


def search_index(index_dir: Path, queries: list[dict], k: int) -> list[dict]:
    """[{'query_id', 'query', 'results': [{'id', 'score'}]}] best first."""
    record_file = index_dir / INDEX_RECORD
    if not record_file.exists():
        raise CLIError(f"{index_dir} is not an index (no {INDEX_RECORD}); build one with `retrievers index`")
    record = json.loads(record_file.read_text())
    kind, loaded = load(Path(record["model"]))
    encoded = encode(kind, loaded, [q["text"] for q in queries], True, "queries")
    results = kind.search(index_dir, queries, encoded, k)
    return [{"query_id": q["id"], "query": q["text"], "results": r} for q, r in zip(queries, results, strict=True)]
