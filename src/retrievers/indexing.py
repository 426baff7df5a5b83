"""`retrievers index` / `search` underneath: stream a corpus into encoded shards, build the index, search it.

An index folder holds
- ``shards/NNNNN.npz``: the corpus encoded in fixed slices of ``shard_size`` rows (document ids and vectors:
  SPLADE as CSR arrays, ColBERT as concatenated token vectors with per-document lengths). A shard is written
  whole (temporary file, then rename), so an interrupted run resumes after its last completed shard, and the
  encoding of a shard does not depend on how many processes encoded the corpus;
- the approximate index built from the shards (Seismic for SPLADE, PLAID for ColBERT), unless ``exact``;
- ``retrievers-index.json``: the model, the mode, the parameters chosen and the recall they measured.

Exact search scores every document (sparse dot product; MaxSim over the stored token vectors), shard by shard,
so its memory does not grow with the corpus. Approximate parameters are chosen per corpus: settings are tried
cheapest first, each built and checked against exact search on calibration queries (pseudo-queries drawn from
evenly spaced documents, or the user's own queries); the first whose top-10 recall reaches ``TARGET_RECALL``
plus a margin, and ``TARGET_RECALL`` on held-out pseudo-queries from other documents, is kept.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from retrievers import models
from retrievers.errors import DataError

INDEX_RECORD = "retrievers-index.json"
SHARDS = "shards"
ENCODE_BATCH = 32
CALIBRATION_QUERIES = 128  # pseudo-queries in each of the calibration and held-out sets
TARGET_RECALL = 0.99
CALIBRATION_MARGIN = 0.005  # the calibration queries must reach TARGET_RECALL + this


class IndexInputError(DataError):
    """Bad input (file, row, index folder): reported as one line by the command line."""


# ------------------------------------------------------------------------------------------- reading
def _check_input(path: Path) -> None:
    if not path.exists():
        raise IndexInputError(f"{path}: no such file")
    if path.suffix not in (".jsonl", ".json", ".parquet"):
        raise IndexInputError(f"{path}: unknown format {path.suffix!r}; give a .jsonl or .parquet file")


def _record(path: Path, number: int, row) -> dict:
    key = "id" if isinstance(row, dict) and "id" in row else "_id"
    if not isinstance(row, dict) or key not in row or "text" not in row:
        raise IndexInputError(f"{path}: row {number} needs an 'id' (or '_id') and a 'text' field")
    if not isinstance(row["text"], str):
        raise IndexInputError(f"{path}: row {number} ({key} {row[key]!r}): 'text' is {type(row['text']).__name__}, "
                              "not a string; fix or drop the row")
    text = f"{row['title']} {row['text']}" if row.get("title") else row["text"]
    return {"id": str(row[key]), "text": text}


def iter_batches(path: Path, size: int) -> Iterator[list[dict]]:
    """[{'id', 'text'}] in batches of ``size`` rows from a jsonl or parquet file, never reading it whole."""
    _check_input(path)
    number, batch = 0, []
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        wanted = [c for c in ("id", "_id", "title", "text") if c in parquet.schema_arrow.names]
        for arrow_batch in parquet.iter_batches(batch_size=size, columns=wanted or None):
            for row in arrow_batch.to_pylist():
                number += 1
                batch.append(_record(path, number, row))
            while len(batch) >= size:
                yield batch[:size]
                batch = batch[size:]
    else:
        with path.open() as lines:
            for line in lines:
                number += 1
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise IndexInputError(f"{path}:{number}: not a JSON object; each line must be one") from None
                batch.append(_record(path, number, row))
                if len(batch) == size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def count_rows(path: Path) -> int:
    """Rows of a corpus, checked before anything is encoded (one pass, a row at a time): every jsonl line is a
    JSON object with an id and a text; a parquet file has the columns."""
    _check_input(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        if "text" not in names or not ({"id", "_id"} & set(names)):
            raise IndexInputError(f"{path}: needs an 'id' (or '_id') and a 'text' column; it has {names}")
        return parquet.metadata.num_rows
    count = sum(len(batch) for batch in iter_batches(path, 4096))
    if not count:
        raise IndexInputError(f"{path}: no records")
    return count


# ------------------------------------------------------------------------------------------ encoding
def encode_texts(kind: str, model, texts: list[str], is_query: bool):
    """ColBERT: a list of [tokens, dim] float32 arrays; SPLADE: a scipy CSR matrix [texts, vocabulary]."""
    module = models.kind_module(kind)
    return module.stack([module.encode_batch(model, texts, is_query, ENCODE_BATCH)])


def _shard_path(index_dir: Path, number: int) -> Path:
    return index_dir / SHARDS / f"{number:05d}.npz"


def write_shard(path: Path, kind: str, ids: list[str], encoded) -> None:
    """One shard, whole or not at all."""
    arrays = {"ids": np.array(ids, dtype=str)} | models.kind_module(kind).shard_arrays(encoded)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def read_shard(path: Path, kind: str) -> tuple[np.ndarray, object]:
    """(document ids, vectors in the kind's form) of a shard."""
    with np.load(path) as arrays:
        return arrays["ids"], models.kind_module(kind).shard_vectors(arrays)


def shard_paths(index_dir: Path) -> list[Path]:
    return sorted((index_dir / SHARDS).glob("[0-9]*.npz"))


def shards(index_dir: Path, kind: str) -> Iterator[tuple[np.ndarray, object]]:
    for path in shard_paths(index_dir):
        yield read_shard(path, kind)


# ------------------------------------------------------------------------------------- exact search
def _merge_top(best: tuple[np.ndarray, np.ndarray] | None, scores: np.ndarray, ids: np.ndarray, k: int):
    """Running top-k per query: scores [queries, n] with ids [n] merged into (scores, ids) [queries, <=k]."""
    if best is not None:
        scores = np.concatenate([best[0], scores], axis=1)
        ids = np.concatenate([np.broadcast_to(best[1], best[0].shape) if best[1].ndim == 1 else best[1],
                              np.broadcast_to(ids, (scores.shape[0], len(ids)))], axis=1)
    else:
        ids = np.broadcast_to(ids, scores.shape)
    take = min(k, scores.shape[1])
    part = np.argpartition(-scores, take - 1, axis=1)[:, :take] if take < scores.shape[1] else \
        np.broadcast_to(np.arange(scores.shape[1]), (scores.shape[0], scores.shape[1]))
    top_scores = np.take_along_axis(scores, part, axis=1)
    return top_scores, np.take_along_axis(ids, part, axis=1)


def exact_search(index_dir: Path, kind: str, encoded_queries, k: int) -> list[list[tuple[str, float]]]:
    """Top-k by exhaustive scoring of every shard, one shard in memory at a time."""
    module = models.kind_module(kind)
    best = None
    for ids, vectors in shards(index_dir, kind):
        best = _merge_top(best, module.exact_scores(encoded_queries, vectors), ids, k)
    if best is None:
        return [[] for _ in range(module.count(encoded_queries))]
    results = []
    for scores, ids in zip(*best, strict=True):
        order = np.lexsort((ids, -scores))  # best first; ties by id, so runs agree
        results.append([(str(ids[i]), float(scores[i])) for i in order])
    return results


# ------------------------------------------------------------------------------ approximate indexes
def document_locations(index_dir: Path) -> dict[str, tuple[int, int]]:
    """Document id -> (shard number, row), from the shards' id arrays only."""
    locations: dict[str, tuple[int, int]] = {}
    for number, path in enumerate(shard_paths(index_dir)):
        with np.load(path) as arrays:
            locations.update((str(doc_id), (number, row)) for row, doc_id in enumerate(arrays["ids"]))
    return locations


def rescore(index_dir: Path, kind: str, encoded_queries, candidates: list[list[tuple[str, float]]], k: int,
            locations: dict[str, tuple[int, int]]) -> list[list[tuple[str, float]]]:
    """The candidates of each query scored exactly from the stored vectors, best k first."""
    module = models.kind_module(kind)
    wanted: dict[int, list[tuple[int, str, int]]] = {}
    for query, hits in enumerate(candidates):
        for doc_id, _ in hits:
            shard, row = locations[doc_id]
            wanted.setdefault(shard, []).append((query, doc_id, row))
    scores: list[dict[str, float]] = [{} for _ in candidates]
    paths = shard_paths(index_dir)
    for shard, items in wanted.items():
        _, vectors = read_shard(paths[shard], kind)
        for query in sorted({q for q, _, _ in items}):
            mine = [(doc_id, row) for q, doc_id, row in items if q == query]
            exact = module.exact_scores(module.query_vectors(encoded_queries, query),
                                        module.select(vectors, [row for _, row in mine]))[0]
            scores[query].update(zip([d for d, _ in mine], exact.tolist(), strict=True))
    return [sorted(found.items(), key=lambda item: (-item[1], item[0]))[:k] for found in scores]


def approximate_search(index_dir: Path, kind: str, index, encoded, query_ids: list[str], k: int, search: dict,
                       locations: dict | None) -> list[list[tuple[str, float]]]:
    """The approximate index's top k (for ColBERT: its top RERANK_DEPTH rescored exactly, then the best k)."""
    module = models.kind_module(kind)
    if not module.RERANK_DEPTH:
        return module.search_index(index, encoded, query_ids, k, search)
    candidates = module.search_index(index, encoded, query_ids, max(k, module.RERANK_DEPTH), search)
    return rescore(index_dir, kind, encoded, candidates, k, locations or document_locations(index_dir))


def recall_at(approx: list[list[tuple[str, float]]], exact: list[list[tuple[str, float]]], k: int) -> float:
    """Mean share of exact search's top-k that the approximate top-k found."""
    shares = [len({d for d, _ in a[:k]} & {d for d, _ in e[:k]}) / max(len(e[:k]), 1)
              for a, e in zip(approx, exact, strict=True)]
    return float(np.mean(shares)) if shares else 1.0


def build_approximate(index_dir: Path, kind: str, calibration, heldout, documents: int,
                      target: float = TARGET_RECALL, margin: float = CALIBRATION_MARGIN,
                      log: Callable[[str], None] = print) -> dict:
    """Build with the cheapest setting whose top-10 recall against exact search reaches ``target + margin`` on
    the ``calibration`` queries, then check it on the ``heldout`` queries (other documents, not used to choose):
    a setting whose held-out recall is below ``target`` is passed over too. The record of what was chosen and
    measured; ``met_target`` is false when no setting passed (the last, most exact one is kept)."""
    module = models.kind_module(kind)
    sets = {"calibration": calibration, "held-out": heldout}
    counts = {name: module.count(queries) for name, queries in sets.items()}
    exact = {name: exact_search(index_dir, kind, queries, 10) for name, queries in sets.items()}
    locations = document_locations(index_dir) if module.RERANK_DEPTH else None
    built: dict | None = None
    tried: list[dict] = []
    for build, search in module.candidate_settings(documents):
        start = time.perf_counter()
        if build != built:
            module.build_index(index_dir, shards(index_dir, kind), build, search)
            built = build
        build_seconds = time.perf_counter() - start
        index = module.load_index(index_dir, build, search)

        def recall(name: str, index=index, search=search) -> float:
            ids = [f"{name}-{i}" for i in range(counts[name])]
            found = approximate_search(index_dir, kind, index, sets[name], ids, 10, search, locations)
            return recall_at(found, exact[name], 10)

        start = time.perf_counter()
        entry = {"build": build, "search": search, "recall@10": round(recall("calibration"), 4),
                 "build_seconds": round(build_seconds, 2),
                 "search_ms_per_query": round((time.perf_counter() - start) * 1000 / counts["calibration"], 2)}
        line = f"  {json.dumps(build)} {json.dumps(search)}: top-10 recall vs exact {entry['recall@10']:.4f}"
        passed = entry["recall@10"] >= target + margin
        if passed:
            entry["heldout_recall@10"] = round(recall("held-out"), 4)
            passed = entry["heldout_recall@10"] >= target
            line += f", held-out {entry['heldout_recall@10']:.4f}" + ("" if passed else f" (below {target}: next)")
        tried.append(entry)
        log(line)
        if passed:
            break
    chosen = tried[-1]
    if "heldout_recall@10" not in chosen:  # the last setting failed on the calibration queries: still report it
        chosen["heldout_recall@10"] = round(recall("held-out"), 4)
    met = chosen["recall@10"] >= target + margin and chosen["heldout_recall@10"] >= target
    if not met:
        log(f"  no setting reached {target} (+{margin} on the calibration queries): kept the last; "
            "`retrievers index --exact` scores every document")
    return {"build": chosen["build"], "search": chosen["search"], "calibration_recall@10": chosen["recall@10"],
            "heldout_recall@10": chosen["heldout_recall@10"], "calibration_queries": counts["calibration"],
            "heldout_queries": counts["held-out"], "target_recall@10": target, "calibration_margin": margin,
            "met_target": met, "tried": tried}


def remove_approximate(index_dir: Path, kind: str) -> None:
    for path in models.kind_module(kind).index_files(index_dir):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def pseudo_queries(texts: list[str], seed: int) -> list[str]:
    """Short queries shaped like real ones, one per text: 2 to 6 words of the text, each replaced with
    probability 1/4 by a word of another sampled text (a real query has words its answer lacks: "what", "does",
    a synonym). Seeded: the same texts give the same queries."""
    import random

    rng = random.Random(seed)
    pool = [w for t in texts for w in t.split()]
    queries = []
    for text in texts:
        words = text.split() or [""]
        chosen = rng.sample(words, min(rng.randint(2, 6), len(words)))
        queries.append(" ".join(rng.choice(pool) if rng.random() < 0.25 else w for w in chosen))
    return queries


def eta_text(done: int, total: int, seconds: float) -> str:
    rate = done / seconds if seconds > 0 else 0.0
    left = (total - done) / rate if rate > 0 else math.inf
    return f"{rate:,.0f}/s, ETA {left:,.0f} s" if math.isfinite(left) else f"{rate:,.0f}/s"


# ------------------------------------------------------------------------------- encoding a corpus
PROGRESS = "progress.json"


def default_devices() -> list[str]:
    """Every GPU; without one, several CPU processes (two cores each)."""
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"] * max(1, (os.cpu_count() or 1) // 2)


def _exit_when_orphaned(parent: int) -> None:
    """End this process as soon as ``parent`` is gone (checked each second by a daemon thread). A killed parent can
    leave a task half-written in the queue's pipe, where a blocking read would wait forever. ``os._exit`` skips the
    queues' exit handlers, which would wait on the parent too; a shard being written is only ever a hidden temporary
    file until it is renamed (the next run removes it)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-when-orphaned", daemon=True).start()


def _encode_worker(folder: str, kind: str, device: str, threads: int, index_dir: str, tasks, done,
                   parent: int) -> None:
    """Encode the shards ``tasks`` names until told to stop, or until ``parent`` (the indexing process) is gone."""
    _exit_when_orphaned(parent)
    import torch

    torch.set_num_threads(threads)
    model = models.kind_module(kind).load(folder)
    if device != "cpu":
        model = model.to(device)
    while (task := tasks.get()) is not None:
        number, ids, texts = task
        write_shard(_shard_path(Path(index_dir), number), kind, ids, encode_texts(kind, model, texts, False))
        done.put((number, len(ids)))


def resume_state(index_dir: Path, expected: dict) -> bool:
    """Whether ``index_dir`` holds an interrupted run of the same model, corpus and shard size."""
    progress = index_dir / PROGRESS
    return progress.exists() and json.loads(progress.read_text()) == expected


def encode_corpus(index_dir: Path, folder: Path, kind: str, corpus: Path, shard_size: int, devices: list[str],
                  report: Callable[[int, int, int], None], sample: int = 2 * CALIBRATION_QUERIES,
                  model=None) -> tuple[int, list[str]]:
    """Encode ``corpus`` into shards of ``shard_size`` rows, skipping the shards already written; ``report(done,
    resumed, total)`` after each. Returns (documents, texts of ~``sample`` evenly spaced documents)."""
    total = count_rows(corpus)
    step = max(1, total // sample)
    (index_dir / SHARDS).mkdir(parents=True, exist_ok=True)
    for partial in (index_dir / SHARDS).glob(".*.tmp.npz"):  # shards a killed run was still writing
        partial.unlink()
    sampled: list[str] = []
    documents = resumed = finished = 0

    def batches():
        nonlocal documents
        for number, batch in enumerate(iter_batches(corpus, shard_size)):
            sampled.extend(r["text"] for i, r in enumerate(batch, documents) if i % step == 0 and len(sampled) < sample)
            documents += len(batch)
            yield number, batch

    if len(devices) == 1 and model is not None:
        for number, batch in batches():
            path = _shard_path(index_dir, number)
            if path.exists():
                resumed += len(batch)
            else:
                write_shard(path, kind, [r["id"] for r in batch],
                            encode_texts(kind, model, [r["text"] for r in batch], False))
                finished += len(batch)
            report(finished, resumed, total)
        return documents, sampled

    import multiprocessing
    import queue

    context = multiprocessing.get_context("spawn")
    tasks, done = context.Queue(maxsize=2 * len(devices)), context.Queue()  # bounded: memory stays flat
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    workers = [context.Process(target=_encode_worker, daemon=True,
                               args=(str(folder), kind, device, threads, str(index_dir), tasks, done, os.getpid()))
               for device in devices]
    for worker in workers:
        worker.start()
    submitted = 0

    def collect(block: bool) -> None:
        nonlocal finished
        while True:
            try:
                _, n = done.get(timeout=1.0) if block else done.get_nowait()
            except queue.Empty:
                if block and any(w.exitcode not in (None, 0) for w in workers):
                    raise RuntimeError("an encoding process failed; see its error above") from None
                if not block:
                    return
                continue
            finished += n
            report(finished, resumed, total)
            if block:
                return

    try:
        for number, batch in batches():
            if _shard_path(index_dir, number).exists():
                resumed += len(batch)
                report(finished, resumed, total)
                continue
            while True:
                try:
                    tasks.put((number, [r["id"] for r in batch], [r["text"] for r in batch]), timeout=1.0)
                    break
                except queue.Full:
                    if any(w.exitcode not in (None, 0) for w in workers):
                        raise RuntimeError("an encoding process failed; see its error above") from None
                    collect(block=False)
            submitted += len(batch)
            collect(block=False)
        while finished < submitted:
            collect(block=True)
        for _ in workers:
            tasks.put(None)
        for worker in workers:
            worker.join()
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
    return documents, sampled


# --------------------------------------------------------------------------------------------- searching
class Searcher:
    """An index with its model, loaded once: what `search` and `serve` query."""

    def __init__(self, index_dir: Path, model=None):
        record_file = index_dir / INDEX_RECORD
        if not record_file.exists():
            raise IndexInputError(f"{index_dir} is not an index (no {INDEX_RECORD}); build one with "
                                  "`retrievers index`")
        self.index_dir, self.record = index_dir, json.loads(record_file.read_text())
        self.kind = self.record["kind"]
        self.model = model if model is not None else models.kind_module(self.kind).load(self.record["model"])
        self.exact_only = self.record.get("mode") == "exact"
        self._index = None
        self._locations: dict | None = None

    def search(self, queries: list[dict], k: int, exact: bool = False) -> list[list[tuple[str, float]]]:
        """[(document id, score)] best first, for each {'id', 'text'} query."""
        encoded = encode_texts(self.kind, self.model, [q["text"] for q in queries], True)
        if exact or self.exact_only:
            return exact_search(self.index_dir, self.kind, encoded, k)
        module = models.kind_module(self.kind)
        if self._index is None:
            self._index = module.load_index(self.index_dir, self.record["build"], self.record["search"])
            self._locations = document_locations(self.index_dir) if module.RERANK_DEPTH else None
        return approximate_search(self.index_dir, self.kind, self._index, encoded, [str(q["id"]) for q in queries],
                                  k, self.record["search"], self._locations)
