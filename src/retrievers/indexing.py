"""`retrievers index` / `search` underneath: stream a corpus into encoded shards, build the index, search it.

An index folder holds
- ``shards/NNNNN.npz``: the corpus encoded in fixed slices of ``shard_size`` rows (document ids and vectors:
  SPLADE as CSR arrays, ColBERT as concatenated token vectors with per-document lengths). A shard is written
  whole (temporary file, then rename), so an interrupted run resumes after its last completed shard, and the
  encoding of a shard does not depend on how many processes encoded the corpus;
- the approximate index built from the shards (Seismic for SPLADE, PLAID for ColBERT), unless ``exact``;
- ``retrievers-index.json``: the model, the mode, the parameters chosen and the recall they measured.

Exact search scores every document (sparse dot product; MaxSim over the stored token vectors), shard by shard,
so its memory does not grow with the corpus. Approximate parameters are chosen per corpus: the index is built
with them and checked against exact search on pseudo-queries drawn from the corpus (the first words of sampled
documents, encoded as queries); the first setting with top-10 recall >= ``target_recall`` is kept.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_RECORD = "retrievers-index.json"
SHARDS = "shards"
ENCODE_BATCH = 32
CALIBRATION_QUERIES = 64
TARGET_RECALL = 0.99


class IndexInputError(Exception):
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
    if kind == "colbert":
        out = model.encode(texts, is_query=is_query, batch_size=ENCODE_BATCH, show_progress_bar=False)
        return [np.asarray(e, dtype=np.float32) for e in out]
    from scipy import sparse

    method = model.encode_query if is_query else model.encode_document
    coo = method(texts, batch_size=ENCODE_BATCH, convert_to_sparse_tensor=True, show_progress_bar=False)
    coo = coo.coalesce().cpu()
    rows, cols = coo.indices().numpy()
    return sparse.csr_matrix((coo.values().float().numpy(), (rows, cols)), shape=tuple(coo.shape))


def _shard_path(index_dir: Path, number: int) -> Path:
    return index_dir / SHARDS / f"{number:05d}.npz"


def write_shard(path: Path, kind: str, ids: list[str], encoded) -> None:
    """One shard, whole or not at all."""
    arrays: dict[str, np.ndarray] = {"ids": np.array(ids, dtype=str)}
    if kind == "colbert":
        arrays["tokens"] = np.concatenate(encoded) if encoded else np.zeros((0, 0), np.float32)
        arrays["lengths"] = np.array([len(e) for e in encoded], dtype=np.int64)
    else:
        arrays |= {"data": encoded.data.astype(np.float32), "indices": encoded.indices.astype(np.int32),
                   "indptr": encoded.indptr.astype(np.int64), "shape": np.array(encoded.shape, dtype=np.int64)}
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


@dataclass
class Shard:
    ids: np.ndarray
    vectors: object  # CSR matrix (SPLADE) or (tokens [n, dim], lengths [docs]) (ColBERT)


def read_shard(path: Path, kind: str) -> Shard:
    with np.load(path) as arrays:
        if kind == "colbert":
            return Shard(arrays["ids"], (arrays["tokens"], arrays["lengths"]))
        from scipy import sparse

        matrix = sparse.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]),
                                   shape=tuple(arrays["shape"]))
        return Shard(arrays["ids"], matrix)


def shard_paths(index_dir: Path) -> list[Path]:
    return sorted((index_dir / SHARDS).glob("[0-9]*.npz"))


def colbert_documents(shard: Shard) -> list[np.ndarray]:
    tokens, lengths = shard.vectors  # type: ignore[misc]
    return np.split(tokens, np.cumsum(lengths)[:-1]) if len(lengths) else []


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


def exact_search(index_dir: Path, kind: str, encoded_queries, k: int) -> list[list[tuple[str, float]]]:
    """Top-k by exhaustive scoring of every shard."""
    n_queries = encoded_queries.shape[0] if kind == "splade" else len(encoded_queries)
    best = None
    for path in shard_paths(index_dir):
        shard = read_shard(path, kind)
        if kind == "splade":
            scores = (encoded_queries @ shard.vectors.T).toarray().astype(np.float32)  # type: ignore[attr-defined]
        else:
            tokens, lengths = shard.vectors  # type: ignore[misc]
            scores = maxsim_scores(encoded_queries, tokens, lengths)
        best = _merge_top(best, scores, shard.ids, k)
    if best is None:
        return [[] for _ in range(n_queries)]
    results = []
    for scores, ids in zip(*best, strict=True):
        order = np.lexsort((ids, -scores))  # best first; ties by id, so runs agree
        results.append([(str(ids[i]), float(scores[i])) for i in order])
    return results


# ------------------------------------------------------------------------------ approximate indexes
def _seismic_terms(matrix):
    from seismic import get_seismic_string

    text = get_seismic_string()
    for i in range(matrix.shape[0]):
        row = matrix.getrow(i)
        yield row.indices.astype(str).astype(text), row.data.astype(np.float32)


def build_seismic(index_dir: Path, build: dict) -> None:
    from seismic import SeismicDataset, SeismicIndex

    dataset = SeismicDataset()
    for path in shard_paths(index_dir):
        shard = read_shard(path, "splade")
        for doc_id, (terms, weights) in zip(shard.ids, _seismic_terms(shard.vectors), strict=True):
            dataset.add_document(str(doc_id), terms, weights)
    SeismicIndex.build_from_dataset(dataset, **build).save(str(index_dir / "seismic"))


def load_seismic(index_dir: Path):
    from seismic import SeismicIndex

    return SeismicIndex.load(str(index_dir / "seismic.index.seismic"))


def search_seismic(index, encoded, query_ids: list[str], k: int, search: dict) -> list[list[tuple[str, float]]]:
    results = []
    for query_id, (terms, weights) in zip(query_ids, _seismic_terms(encoded), strict=True):
        cut = max(len(terms), 1) if search["query_cut"] == "all" else int(search["query_cut"])
        hits = index.search(str(query_id), terms, weights, k=k, query_cut=cut, heap_factor=float(search["heap_factor"]))
        results.append([(doc_id, float(score)) for _, score, doc_id in hits])
    return results


PLAID_ADD_TOKENS = 1 << 22  # token vectors per add_documents call: bounds the memory of a build


def _plaid(index_dir: Path, build: dict, search: dict, override: bool):
    from pylate import indexes

    return indexes.PLAID(index_folder=str(index_dir), index_name="plaid", override=override, show_progress=False,
                         device="cpu", use_triton=False, **build, **search)


def build_plaid(index_dir: Path, build: dict, search: dict) -> None:
    plaid = _plaid(index_dir, build, search, override=True)
    ids: list[str] = []
    documents: list[np.ndarray] = []
    for path in shard_paths(index_dir):
        shard = read_shard(path, "colbert")
        ids += [str(i) for i in shard.ids]
        documents += colbert_documents(shard)
        if sum(len(d) for d in documents) >= PLAID_ADD_TOKENS:
            plaid.add_documents(documents_ids=ids, documents_embeddings=documents)
            ids, documents = [], []
    if ids:
        plaid.add_documents(documents_ids=ids, documents_embeddings=documents)


def load_plaid(index_dir: Path, build: dict, search: dict):
    from pylate import retrieve

    return retrieve.ColBERT(index=_plaid(index_dir, build, search, override=False))


def search_plaid(retriever, encoded, k: int) -> list[list[tuple[str, float]]]:
    hits = retriever.retrieve(queries_embeddings=encoded, k=k)
    return [[(str(h["id"]), float(h["score"])) for h in row] for row in hits]


def candidate_settings(kind: str, documents: int) -> list[tuple[dict, dict]]:
    """(build, search) parameter settings, cheapest first, for a corpus of ``documents``.

    Seismic's defaults (n_postings 3500, summary_energy 0.4, centroid_fraction 0.1, query_cut 10, heap_factor
    0.7) are tuned for MS MARCO's 8.8M passages of real SPLADE vectors. Here the posting lists keep at least a
    tenth of the corpus, every query term is used, and the later settings keep whole posting lists and exact
    block summaries. PLAID: 8-bit residuals (PyLate's default 4 bits alone cost ~8 points of top-10 recall on the
    fixture), more probed centroids than PyLate's 8, more rescored candidates as the corpus grows."""
    if kind == "splade":
        pruned = {"n_postings": max(3500, documents // 10), "centroid_fraction": 0.1, "summary_energy": 0.4,
                  "max_fraction": 1.5}
        whole = {"n_postings": max(3500, documents), "centroid_fraction": 0.5, "summary_energy": 1.0,
                 "max_fraction": 1.5}
        return [(pruned, {"query_cut": "all", "heap_factor": 0.8}), (pruned, {"query_cut": "all", "heap_factor": 0.6}),
                (whole, {"query_cut": "all", "heap_factor": 1.0}), (whole, {"query_cut": "all", "heap_factor": 0.8})]
    build = {"nbits": 8, "kmeans_niters": 4}
    full_scores = max(8192, documents // 10)
    return [(build, {"n_ivf_probe": probes, "n_full_scores": full_scores}) for probes in (32, 64)] + [
        (build, {"n_ivf_probe": 256, "n_full_scores": max(full_scores, documents)})]


def recall_at(approx: list[list[tuple[str, float]]], exact: list[list[tuple[str, float]]], k: int) -> float:
    """Mean share of exact search's top-k that the approximate top-k found."""
    shares = [len({d for d, _ in a[:k]} & {d for d, _ in e[:k]}) / max(len(e[:k]), 1)
              for a, e in zip(approx, exact, strict=True)]
    return float(np.mean(shares)) if shares else 1.0


def build_approximate(index_dir: Path, kind: str, calibration, query_ids: list[str], documents: int,
                      target: float = TARGET_RECALL, log: Callable[[str], None] = print) -> dict:
    """Build with the cheapest setting whose top-10 recall against exact search on the calibration queries
    reaches ``target``; the record of what was chosen and measured."""
    exact = exact_search(index_dir, kind, calibration, 10)
    built: dict | None = None
    tried = []
    for build, search in candidate_settings(kind, documents):
        start = time.perf_counter()
        if build != built:
            (build_seismic(index_dir, build) if kind == "splade" else build_plaid(index_dir, build, search))
            built = build
        build_seconds = time.perf_counter() - start
        approx = (search_seismic(load_seismic(index_dir), calibration, query_ids, 10, search) if kind == "splade"
                  else search_plaid(load_plaid(index_dir, build, search), calibration, 10))
        recall = recall_at(approx, exact, 10)
        tried.append({"build": build, "search": search, "recall@10": round(recall, 4),
                      "build_seconds": round(build_seconds, 2)})
        log(f"  {json.dumps(build)} {json.dumps(search)}: top-10 recall vs exact {recall:.4f}")
        if recall >= target:
            break
    return {"build": tried[-1]["build"], "search": tried[-1]["search"], "calibration_recall@10": tried[-1]["recall@10"],
            "calibration_queries": len(query_ids), "target_recall@10": target, "tried": tried}


def remove_approximate(index_dir: Path) -> None:
    for path in [index_dir / "plaid", *index_dir.glob("seismic*")]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def pseudo_query(text: str, words: int = 8) -> str:
    return " ".join(text.split()[:words])


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


def _encode_worker(folder: str, kind: str, device: str, threads: int, index_dir: str, tasks, done) -> None:
    import torch

    torch.set_num_threads(threads)
    from retrievers.evaluate import load_kind

    model = load_kind(kind, folder) if device == "cpu" else load_kind(kind, folder).to(device)
    while (task := tasks.get()) is not None:
        number, ids, texts = task
        write_shard(_shard_path(Path(index_dir), number), kind, ids, encode_texts(kind, model, texts, False))
        done.put((number, len(ids)))


def resume_state(index_dir: Path, expected: dict) -> bool:
    """Whether ``index_dir`` holds an interrupted run of the same model, corpus and shard size."""
    progress = index_dir / PROGRESS
    return progress.exists() and json.loads(progress.read_text()) == expected


def encode_corpus(index_dir: Path, folder: Path, kind: str, corpus: Path, shard_size: int, devices: list[str],
                  report: Callable[[int, int, int], None], sample: int = CALIBRATION_QUERIES,
                  model=None) -> tuple[int, list[str]]:
    """Encode ``corpus`` into shards of ``shard_size`` rows, skipping the shards already written; ``report(done,
    resumed, total)`` after each. Returns (documents, texts of ~``sample`` evenly spaced documents)."""
    total = count_rows(corpus)
    step = max(1, total // sample)
    (index_dir / SHARDS).mkdir(parents=True, exist_ok=True)
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
                               args=(str(folder), kind, device, threads, str(index_dir), tasks, done))
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
        from retrievers.evaluate import load_kind

        self.index_dir, self.record = index_dir, json.loads(record_file.read_text())
        self.kind = self.record["kind"]
        self.model = model if model is not None else load_kind(self.kind, self.record["model"])
        self.exact_only = self.record.get("mode") == "exact"
        self._index = None

    def search(self, queries: list[dict], k: int, exact: bool = False) -> list[list[tuple[str, float]]]:
        """[(document id, score)] best first, for each {'id', 'text'} query."""
        encoded = encode_texts(self.kind, self.model, [q["text"] for q in queries], True)
        if exact or self.exact_only:
            return exact_search(self.index_dir, self.kind, encoded, k)
        if self._index is None:
            self._index = (load_plaid(self.index_dir, self.record["build"], self.record["search"])
                           if self.kind == "colbert" else load_seismic(self.index_dir))
        if self.kind == "colbert":
            return search_plaid(self._index, encoded, k)
        return search_seismic(self._index, encoded, [q["id"] for q in queries], k, self.record["search"])
