"""Encoding, indexing and search over a corpus with a released model, for the ``retrievers`` command.

The kind of the model picks the index: PLAID (PyLate) for ColBERT models, Seismic (pyseismic-lsr) for SPLADE
models (both in :mod:`retrievers.models`). Corpora and query files are jsonl or parquet with an ``id`` (or
``_id``) and a ``text`` field (``title``, when present, is prepended to the text).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import ModuleType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from retrievers import models
from retrievers.errors import CLIError
from retrievers.io import write_json_atomic

console = Console(stderr=True, soft_wrap=True)  # log lines stay whole in files
INDEX_RECORD = "retrievers-index.json"  # = retrievers.indexing.INDEX_RECORD
BATCH = 32


def load(folder: Path) -> tuple[ModuleType, object]:
    """(kind module, model) of a model folder."""
    kind = models.for_folder(folder)
    with console.status(f"loading {kind.KIND} model from {folder}"):
        return kind, kind.load(folder)


def read_records(path: Path) -> list[dict]:
    """[{'id', 'text'}] from a jsonl or parquet file (a query or text file: small, read whole)."""
    from retrievers.indexing import iter_batches

    records = [r for batch in iter_batches(path, 1024) for r in batch]
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


def check_index_target(index_dir: Path, overwrite: bool) -> None:
    """Refuse to replace a folder that holds anything but an index this command wrote (a user's files would go)."""
    if overwrite or not index_dir.exists():
        return
    if not index_dir.is_dir():
        raise CLIError(f"{index_dir} exists and is not a folder; choose another index folder")
    from retrievers.indexing import PROGRESS

    ours = (index_dir / INDEX_RECORD).exists() or (index_dir / PROGRESS).exists()  # an index, or its interrupted run
    if any(index_dir.iterdir()) and not ours:
        raise CLIError(f"{index_dir} is not empty and is not an index (no {INDEX_RECORD}); choose another folder "
                       "or pass --overwrite to replace it and everything in it")


class _Progress:
    """Encoding progress with rate and ETA: a live bar on a terminal, a line every few seconds otherwise."""

    def __init__(self):
        self.start, self.last, self.bar = time.perf_counter(), 0.0, None

    def __enter__(self):
        if console.is_terminal:
            from rich.progress import TimeRemainingColumn

            self.bar = Progress(TextColumn("encoding passages"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console)
            self.bar.__enter__()
            self.task = self.bar.add_task("encoding", total=None, rate="")
        return self

    def __call__(self, done: int, resumed: int, total: int) -> None:
        from retrievers.indexing import eta_text

        seconds = time.perf_counter() - self.start
        if self.bar is not None:
            rate = f"{done / seconds:,.0f}/s" if seconds > 0 else ""
            self.bar.update(self.task, completed=done + resumed, total=total, rate=rate)
        elif seconds - self.last >= 5 or done + resumed == total:
            self.last = seconds
            note = f" ({resumed:,} from the interrupted run)" if resumed else ""
            rate = "nothing left to encode" if resumed == total else eta_text(done, total - resumed, seconds)
            console.print(f"encoded {done + resumed:,}/{total:,} passages{note}: {rate}")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


def build_index(folder: Path, corpus: Path, index_dir: Path, exact: bool = False, shard_size: int = 10_000,
                processes: int = 0, calibration_queries: list[str] | None = None) -> dict:
    """Encode ``corpus`` (streamed, in shards; an interrupted run of the same model, corpus and shard size
    resumes) with the model in ``folder`` and build its index in ``index_dir`` (another index there is
    replaced): the kind's approximate index with parameters checked against exact search (on
    ``calibration_queries`` when given), or none (``exact``)."""
    from retrievers import indexing

    indexing.count_rows(corpus)  # bad input fails before a model is loaded
    folder = folder.resolve()
    kind = models.for_folder(folder)
    expected = {"kind": kind.KIND, "model": str(folder), "corpus": str(corpus.resolve()), "shard_size": shard_size,
                "corpus_bytes": corpus.stat().st_size}
    if indexing.resume_state(index_dir, expected):
        console.print(f"resuming the interrupted run in {index_dir}")
    else:
        if index_dir.exists():
            shutil.rmtree(index_dir)
        index_dir.mkdir(parents=True)
        write_json_atomic(index_dir / indexing.PROGRESS, expected)
    (index_dir / INDEX_RECORD).unlink(missing_ok=True)
    devices = indexing.default_devices() if processes == 0 else ["cpu"] * processes
    loaded = load(folder)[1] if len(devices) == 1 else None
    start = time.perf_counter()
    with _Progress() as progress:
        documents, sample = indexing.encode_corpus(index_dir, folder, kind.KIND, corpus, shard_size, devices,
                                                   progress, model=loaded)
    record = {"kind": kind.KIND, "model": str(folder), "documents": documents, "corpus": str(corpus),
              "mode": "exact" if exact else "approximate", "encode_seconds": round(time.perf_counter() - start, 1),
              "encoding_processes": devices}
    indexing.remove_approximate(index_dir, kind.KIND)
    unsuitable = None if exact else kind.approximate_unsuitable(indexing.shards(index_dir, kind.KIND))
    if unsuitable:
        console.print(f"no {kind.INDEX_NAME} index: {unsuitable}", highlight=False)
        record |= {"mode": "exact", "exact_reason": unsuitable, "build_seconds": 0.0}
    elif not exact:
        loaded = loaded or load(folder)[1]
        record |= calibrate(index_dir, kind, loaded, sample, documents, calibration_queries)
    else:
        record["build_seconds"] = 0.0
    write_json_atomic(index_dir / INDEX_RECORD, record)
    (index_dir / indexing.PROGRESS).unlink()
    console.print(f"indexed {documents:,} documents with {kind.KIND} ({record['mode']}) into {index_dir}")
    return record


def calibrate(index_dir: Path, kind: ModuleType, model, sample: list[str], documents: int,
              calibration_queries: list[str] | None) -> dict:
    """Build the approximate index with the cheapest parameters that pass (retrievers.indexing.build_approximate):
    calibration on the user's queries, if given, or on pseudo-queries from half of the sampled documents;
    held-out pseudo-queries from the other half."""
    from retrievers import indexing

    pseudo = indexing.pseudo_queries(sample, seed=0)
    texts = calibration_queries or pseudo[0::2]
    calibration = indexing.encode_texts(kind.KIND, model, texts, True)
    heldout = indexing.encode_texts(kind.KIND, model, pseudo[1::2], True)
    source = f"{len(texts)} given queries" if calibration_queries else f"{len(texts)} pseudo-queries from the corpus"
    console.print(f"choosing the {kind.INDEX_NAME} index parameters (top-10 recall vs exact search on {source}, "
                  f"checked on {len(pseudo[1::2])} held-out pseudo-queries):")
    start = time.perf_counter()
    record = indexing.build_approximate(index_dir, kind.KIND, calibration, heldout, documents,
                                        log=lambda line: console.print(line, highlight=False))
    record["calibration_source"] = "given queries" if calibration_queries else "pseudo-queries"
    record["build_seconds"] = round(time.perf_counter() - start, 1)
    console.print(f"chose build {json.dumps(record['build'])}, search {json.dumps(record['search'])}: top-10 recall "
                  f"vs exact {record['calibration_recall@10']:.4f}, held-out {record['heldout_recall@10']:.4f}",
                  highlight=False)
    return record


def search_index(index_dir: Path, queries: list[dict], k: int, exact: bool = False) -> list[dict]:
    """[{'query_id', 'query', 'results': [{'id', 'score'}]}] best first."""
    from retrievers.indexing import Searcher

    with console.status(f"loading the index {index_dir} and its model"):
        searcher = Searcher(index_dir)
    results = searcher.search(queries, k, exact)
    return [{"query_id": q["id"], "query": q["text"], "results": [{"id": d, "score": s} for d, s in r]}
            for q, r in zip(queries, results, strict=True)]
