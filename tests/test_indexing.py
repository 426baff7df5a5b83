"""`retrievers index` / `search`: exact scoring, the approximate index against it, streaming input, several
encoding processes, and resuming an interrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from retrievers import indexing

from .conftest import OFFLINE_ENV, REPO

FIXTURE = REPO / "fixtures" / "datasets" / "tiny-NanoMSMARCO"
CORPUS = next((FIXTURE / "corpus").glob("*.parquet"))
QUERIES = [{"id": q["_id"], "text": q["text"]} for q in pq.read_table(next((FIXTURE / "queries").glob("*.parquet"))
                                                                       ).to_pylist()]
CLI = str(Path(sys.executable).parent / "retrievers")


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([CLI, *args], capture_output=True, text=True, env=env)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_exact_maxsim_equals_pylate_colbert_scores():
    """Equal to PyLate's scores on documents of one length; with lengths that differ, the max runs over each
    document's own tokens (PyLate multiplies padding by 0, so there a negative max would read as 0)."""
    from pylate.scores import colbert_scores

    from retrievers.models.colbert import maxsim_scores

    rng = np.random.default_rng(0)
    queries = [rng.standard_normal((4, 16)).astype(np.float32) for _ in range(3)]
    same = rng.standard_normal((5, 6, 16)).astype(np.float32)
    expected = colbert_scores(torch.from_numpy(np.stack(queries)), torch.from_numpy(same)).numpy()
    got = maxsim_scores(queries, same.reshape(-1, 16), np.full(5, 6))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    documents = [rng.standard_normal((n, 16)).astype(np.float32) for n in (3, 7, 1, 0, 5)]
    naive = [[sum((q @ d.T).max(axis=1)) if len(d) else 0.0 for d in documents] for q in queries]
    got = maxsim_scores(queries, np.concatenate(documents), np.array([len(d) for d in documents]))
    np.testing.assert_allclose(got, naive, rtol=1e-5, atol=1e-5)


def test_exact_search_merges_shards_into_the_overall_top_k(tmp_path):
    from scipy import sparse

    rng = np.random.default_rng(1)
    matrix = sparse.random(230, 50, density=0.2, random_state=2, format="csr", dtype=np.float32)
    ids = [f"d{i}" for i in range(230)]
    (tmp_path / indexing.SHARDS).mkdir()
    for number, start in enumerate(range(0, 230, 64)):
        indexing.write_shard(indexing._shard_path(tmp_path, number), "splade", ids[start : start + 64],
                             matrix[start : start + 64])
    queries = sparse.csr_matrix(rng.random((5, 50)).astype(np.float32))
    scores = (queries @ matrix.T).toarray()
    found = indexing.exact_search(tmp_path, "splade", queries, 10)
    for row, hits in zip(scores, found, strict=True):
        assert [d for d, _ in hits] == [ids[i] for i in np.argsort(-row, kind="stable")[:10]]


def test_batches_stream_jsonl_and_parquet_alike(tmp_path):
    rows = [{"_id": f"d{i}", "text": f"text {i}"} for i in range(25)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet", row_group_size=7)
    for name in ("c.jsonl", "c.parquet"):
        batches = list(indexing.iter_batches(tmp_path / name, 10))
        assert [len(b) for b in batches] == [10, 10, 5] and indexing.count_rows(tmp_path / name) == 25
        assert [r["id"] for b in batches for r in b] == [r["_id"] for r in rows]


@pytest.mark.slow
def test_approximate_index_finds_the_exact_top_10_on_the_fixture(smoke_run, tmp_path):
    """Both kinds on the fixture's NanoMSMARCO set (the trained smoke models): the parameters `index` chose
    keep top-10 recall against exhaustive scoring >= 0.99 on the set's real queries."""
    from retrievers.cli import search_index

    for model in ("neobert-splade", "modernbert-xtr"):
        index_dir = tmp_path / model
        out = _cli("index", str(smoke_run.workspace / "models" / model), str(CORPUS), str(index_dir))
        assert "chose build" in out.stderr
        approx = [[(h["id"], h["score"]) for h in r["results"]] for r in search_index(index_dir, QUERIES, 10)]
        exact = [[(h["id"], h["score"]) for h in r["results"]]
                 for r in search_index(index_dir, QUERIES, 10, exact=True)]
        recall = indexing.recall_at(approx, exact, 10)
        record = json.loads((index_dir / indexing.INDEX_RECORD).read_text())
        print(f"{model}: top-10 recall vs exact {recall:.4f} on {len(QUERIES)} queries with {record['build']} "
              f"{record['search']}")
        assert recall >= 0.99


def _shards(index_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    return {p.name: dict(np.load(p)) for p in indexing.shard_paths(index_dir)}


def test_killed_index_run_resumes_to_the_same_index(tiny_splade, tmp_path):
    """Kill `retrievers index` after some shards, run it again: it resumes (skips the finished shards) and ends
    with the shards and search results of an uninterrupted run."""
    args = ["--shard-size", "10", "--processes", "1", "--exact"]  # the approximate build has its own test
    whole = tmp_path / "whole"
    _cli("index", str(tiny_splade), str(CORPUS), str(whole), *args)

    killed = tmp_path / "killed"
    env = {**__import__("os").environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([CLI, "index", str(tiny_splade), str(CORPUS), str(killed), *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while len(indexing.shard_paths(killed)) < 5 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(indexing.shard_paths(killed))
    assert 5 <= done < 30 and not (killed / indexing.INDEX_RECORD).exists()

    out = _cli("index", str(tiny_splade), str(CORPUS), str(killed), *args)
    assert "resuming the interrupted run" in out.stderr and f"{10 * done:,} from the interrupted run" in out.stderr
    first, second = _shards(whole), _shards(killed)
    assert first.keys() == second.keys()
    for name in first:
        for key in first[name]:
            np.testing.assert_array_equal(first[name][key], second[name][key])
    from retrievers.cli import search_index

    assert search_index(whole, QUERIES, 10) == search_index(killed, QUERIES, 10)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status  # a zombie has exited


def test_encoding_processes_do_not_outlive_a_killed_index_run(tiny_splade, tmp_path):
    """SIGKILL of `retrievers index` alone (not its process group): its encoding processes notice and exit, instead
    of living on as orphans that hold the model in memory and the caller's stderr pipe open (one blocked for ever
    reading a task its killed parent had half-written)."""
    env = {**__import__("os").environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([CLI, "index", str(tiny_splade), str(CORPUS), str(tmp_path / "index"), "--exact",
                                "--shard-size", "10", "--processes", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while not indexing.shard_paths(tmp_path / "index") and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    children = [int(c) for c in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()]
    assert len(children) >= 2, children  # the two encoders (and multiprocessing's resource tracker)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 60
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [c for c in children if _alive(c)]
    # The same command resumes and leaves no hidden temporary shard of the killed run behind.
    _cli("index", str(tiny_splade), str(CORPUS), str(tmp_path / "index"), "--exact", "--shard-size", "10",
         "--processes", "2")
    assert not list((tmp_path / "index" / indexing.SHARDS).glob(".*"))


def test_two_encoding_processes_write_the_shards_one_writes(tiny_splade, tmp_path):
    for processes in (1, 2):
        _cli("index", str(tiny_splade), str(CORPUS), str(tmp_path / str(processes)), "--exact", "--shard-size", "64",
             "--processes", str(processes))
    one, two = _shards(tmp_path / "1"), _shards(tmp_path / "2")
    assert one.keys() == two.keys() and len(one) == 5
    for name in one:
        np.testing.assert_array_equal(one[name]["ids"], two[name]["ids"])
        np.testing.assert_array_equal(one[name]["indices"], two[name]["indices"])
        np.testing.assert_allclose(one[name]["data"], two[name]["data"], atol=1e-6)


def test_pseudo_queries_are_short_seeded_and_mostly_from_their_document():
    texts = [" ".join(f"d{d}w{i}" for i in range(30)) for d in range(200)]
    queries = indexing.pseudo_queries(texts, seed=0)
    assert queries == indexing.pseudo_queries(texts, seed=0) != indexing.pseudo_queries(texts, seed=1)
    assert all(2 <= len(q.split()) <= 6 for q in queries)
    own = [sum(w.startswith(f"d{d}w") for w in q.split()) / len(q.split()) for d, q in enumerate(queries)]
    assert 0.6 < float(np.mean(own)) < 0.9  # a quarter of the words come from other documents


def test_index_calibrates_on_given_queries_and_checks_held_out_pseudo_queries(tiny_splade, tmp_path):
    """`--calibration-queries`: the parameters are chosen on the user's queries (the fixture's real ones), then
    checked on held-out pseudo-queries; the record says so, and the real queries reach the target."""
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    index_dir = tmp_path / "index"
    out = _cli("index", str(tiny_splade), str(CORPUS), str(index_dir), "--processes", "1",
               "--calibration-queries", str(queries))
    said = " ".join(out.stderr.split())
    assert f"on {len(QUERIES)} given queries" in said and "held-out" in said
    record = json.loads((index_dir / indexing.INDEX_RECORD).read_text())
    assert record["calibration_source"] == "given queries" and record["calibration_queries"] == len(QUERIES)
    assert record["heldout_queries"] == indexing.CALIBRATION_QUERIES and record["met_target"]
    assert record["calibration_recall@10"] >= indexing.TARGET_RECALL + indexing.CALIBRATION_MARGIN
    assert record["heldout_recall@10"] >= indexing.TARGET_RECALL
    from retrievers.cli import search_index

    approx = [[(h["id"], h["score"]) for h in r["results"]] for r in search_index(index_dir, QUERIES, 10)]
    exact = [[(h["id"], h["score"]) for h in r["results"]] for r in search_index(index_dir, QUERIES, 10, exact=True)]
    assert indexing.recall_at(approx, exact, 10) == record["calibration_recall@10"]


def test_splade_vectors_too_dense_for_an_inverted_index_are_searched_exactly():
    """Posting lists averaging most of a large corpus (a tiny vocabulary) get no Seismic index, with the reason;
    SPLADE-like sparse vectors and small corpora go to the calibration."""
    from scipy import sparse

    from retrievers.models import splade

    rng = np.random.default_rng(0)

    def vectors(documents: int, vocabulary: int, per_document: int):
        columns = np.stack([rng.choice(vocabulary, per_document, replace=False) for _ in range(documents)])
        rows = np.repeat(np.arange(documents), per_document)
        return sparse.csr_matrix((np.ones(rows.size, np.float32), (rows, columns.ravel())),
                                 shape=(documents, vocabulary))

    dense, sparse_like = vectors(12_000, 400, 160), vectors(12_000, 30_522, 150)
    reason = splade.approximate_unsuitable([(None, dense[:6000]), (None, dense[6000:])])
    assert reason is not None and "40% of the 12,000 documents" in reason
    assert splade.approximate_unsuitable([(None, sparse_like)]) is None
    assert splade.approximate_unsuitable([(None, dense[:300])]) is None
