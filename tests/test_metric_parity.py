"""The retrieval metrics the repository reports equal trec_eval's (pytrec_eval) on the same run, to 1e-6.

Both evaluators the pipeline uses (PyLate's ``NanoBEIREvaluator`` for XTR, sentence-transformers'
``SparseNanoBEIREvaluator`` for SPLADE) score a run with ``InformationRetrievalEvaluator.compute_metrics``;
these tests feed that function and trec_eval the same run and qrels (binary relevance).

Where the definitions differ, and how the tests compare like with like:
- MAP@k: sentence-transformers divides the sum of precisions at the relevant hits within the top k by
  ``min(k, R)`` (R = number of relevant documents); trec_eval's ``map_cut_k`` divides by R. They agree when
  R <= k; otherwise sentence-transformers' value is trec_eval's times ``R / k``. The property test checks
  that exact relation, so a change on either side shows.
- MRR@10: trec_eval's ``recip_rank`` has no cut-off, so the run given to it is cut to its top 10.
- Ties: sentence-transformers keeps equal scores in the order it was given them (a stable sort);
  trec_eval orders them by document id, descending. The fixture run gives trec_eval scores that encode
  sentence-transformers' order; the random runs have distinct scores.
- A query with an empty run: sentence-transformers scores it 0, pytrec_eval leaves it out of its output;
  the means below count it as 0 on both sides.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

pytrec_eval = pytest.importorskip("pytrec_eval")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "datasets" / "tiny-NanoBEIR-en"
KS = (1, 3, 5, 10)
TOLERANCE = 1e-6


def st_evaluator(queries: dict[str, str], corpus: dict[str, str], relevant: dict[str, set[str]]):
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(queries, corpus, relevant, show_progress_bar=False)


def st_metrics(evaluator, run: dict[str, dict[str, float]]) -> dict[str, float]:
    """The repository's numbers: the evaluator's own ``compute_metrics`` on the run, in its query order."""
    results = [[{"corpus_id": d, "score": s} for d, s in run.get(q, {}).items()] for q in evaluator.queries_ids]
    scores = evaluator.compute_metrics(results)
    flat = {"ndcg@10": scores["ndcg@k"][10], "mrr@10": scores["mrr@k"][10], "map@100": scores["map@k"][100]}
    flat |= {f"recall@{k}": scores["recall@k"][k] for k in KS}
    flat |= {f"precision@{k}": scores["precision@k"][k] for k in KS}
    return {name: float(value) for name, value in flat.items()}


def top(scores: dict[str, float], k: int) -> dict[str, float]:
    return dict(sorted(scores.items(), key=lambda item: item[1], reverse=True)[:k])


def trec_metrics(relevant: dict[str, set[str]], run: dict[str, dict[str, float]], map_as_st: bool = False):
    """trec_eval's numbers for the same run: per query, then the mean over every judged query (missing = 0).

    With ``map_as_st`` MAP@100 is rescaled by R / min(100, R), sentence-transformers' normaliser."""
    qrels = {q: {d: 1 for d in docs} for q, docs in relevant.items()}
    cut = [f"recall_{k}" for k in KS] + [f"P_{k}" for k in KS] + ["ndcg_cut_10", "map_cut_100"]
    full = pytrec_eval.RelevanceEvaluator(qrels, set(cut)).evaluate({q: run[q] for q in run if run[q]})
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(
        {q: top(run[q], 10) for q in run if run[q]}
    )
    names = {f"recall_{k}": f"recall@{k}" for k in KS} | {f"P_{k}": f"precision@{k}" for k in KS}
    names |= {"ndcg_cut_10": "ndcg@10", "map_cut_100": "map@100"}
    per_query = {name: [] for name in [*names.values(), "mrr@10"]}
    for q, docs in relevant.items():
        for measure, name in names.items():
            value = full.get(q, {}).get(measure, 0.0)
            if name == "map@100" and map_as_st:
                value *= len(docs) / min(100, len(docs))
            per_query[name].append(value)
        per_query["mrr@10"].append(mrr.get(q, {}).get("recip_rank", 0.0))
    return {name: float(np.mean(values)) for name, values in per_query.items()}


def assert_same(ours: dict[str, float], trec: dict[str, float]) -> None:
    differing = {k: (ours[k], trec[k]) for k in trec if abs(ours[k] - trec[k]) > TOLERANCE}
    assert not differing, f"repository vs trec_eval: {differing}"


def test_the_pipelines_evaluators_use_the_checked_metric_code():
    from pylate.evaluation import PyLateInformationRetrievalEvaluator
    from sentence_transformers.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.sparse_encoder.evaluation import SparseInformationRetrievalEvaluator

    for cls in (PyLateInformationRetrievalEvaluator, SparseInformationRetrievalEvaluator):
        assert cls.compute_metrics is InformationRetrievalEvaluator.compute_metrics, cls


def test_fixture_bm25_run_matches_trec_eval():
    """A fixed run: BM25 (bm25s) over the committed NanoSciFact fixture, top 100 per query."""
    import bm25s
    import pandas as pd

    corpus_df = pd.read_parquet(FIXTURE / "corpus" / "NanoSciFact.parquet")
    queries_df = pd.read_parquet(FIXTURE / "queries" / "NanoSciFact.parquet")
    qrels_df = pd.read_parquet(FIXTURE / "qrels" / "NanoSciFact.parquet")
    corpus = dict(zip(corpus_df["_id"], corpus_df["text"], strict=True))
    queries = dict(zip(queries_df["_id"], queries_df["text"], strict=True))
    relevant: dict[str, set[str]] = {}
    for q, d in zip(qrels_df["query-id"], qrels_df["corpus-id"], strict=True):
        relevant.setdefault(q, set()).add(d)

    ids = list(corpus)
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(corpus.values()), show_progress=False), show_progress=False)
    docs, scores = retriever.retrieve(
        bm25s.tokenize(list(queries.values()), show_progress=False), k=100, show_progress=False
    )
    run = {q: {ids[d]: float(s) for d, s in zip(docs[i], scores[i], strict=True)} for i, q in enumerate(queries)}

    evaluator = st_evaluator(queries, corpus, relevant)
    ours = st_metrics(evaluator, run)
    # trec_eval breaks ties by document id: give it the order sentence-transformers ranks in (stable sort).
    ranked = {q: top(scores_, len(scores_)) for q, scores_ in run.items()}
    trec_run = {q: {d: float(len(r) - i) for i, d in enumerate(r)} for q, r in ranked.items()}
    assert_same(ours, trec_metrics(relevant, trec_run))
    assert 0.0 < ours["ndcg@10"] < 1.0  # a real ranking: neither empty nor perfect


def test_random_runs_match_trec_eval():
    """Seeded random runs: up to 160 relevant documents per query (so R > 100 for MAP@100), empty runs,
    runs shorter and longer than every cut-off, distinct scores."""
    rng = random.Random(20261122)
    for trial in range(150):
        corpus = {f"d{i}": "" for i in range(rng.randint(1, 400))}
        doc_ids = list(corpus)
        queries = {f"q{i}": "" for i in range(rng.randint(1, 6))}
        relevant = {q: set(rng.sample(doc_ids, rng.randint(1, min(160, len(doc_ids))))) for q in queries}
        run = {}
        for q in queries:
            retrieved = rng.sample(doc_ids, rng.randint(0, min(150, len(doc_ids))))
            scores = rng.sample(range(10**9), len(retrieved))  # distinct
            run[q] = {d: s / 10**6 for d, s in zip(retrieved, scores, strict=True)}
        ours = st_metrics(st_evaluator(queries, corpus, relevant), run)
        trec = trec_metrics(relevant, run, map_as_st=True)
        try:
            assert_same(ours, trec)
        except AssertionError as error:
            raise AssertionError(f"trial {trial}: {error}") from None


def test_map_normaliser_differs_from_trec_eval_when_more_than_100_relevant():
    """The documented difference is real: with 150 relevant documents all retrieved on top, trec_eval's
    MAP@100 is 100/150 and sentence-transformers' is 1."""
    docs = [f"d{i}" for i in range(200)]
    relevant = {"q": set(docs[:150])}
    run = {"q": {d: float(200 - i) for i, d in enumerate(docs)}}
    ours = st_metrics(st_evaluator({"q": ""}, dict.fromkeys(docs, ""), relevant), run)
    assert ours["map@100"] == pytest.approx(1.0)
    assert trec_metrics(relevant, run)["map@100"] == pytest.approx(100 / 150)
