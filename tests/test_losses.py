"""The XTR losses with a learnable temperature equal a direct computation from the XTR definition
(Lee et al. 2023): each query token keeps its top-k document tokens over ALL tokens of ALL documents in
the batch; unretrieved similarities count 0; a document's score is the sum over query tokens of the best
retrieved similarity, divided by Z = the number of query tokens that retrieved any token of it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pylate import scores

from retrievers.losses import LearnableTemperatureContrastive, LearnableTemperatureDistillation

from .conftest import REPO


def xtr_reference(q: torch.Tensor, docs: torch.Tensor, q_mask: torch.Tensor, d_mask: torch.Tensor, k: int):
    """q: [Q, Lq, D]; docs: [M, Ld, D] (all documents of the batch); masks 1 = real token.
    Returns [Q, M] XTR scores, written loop by loop from the definition."""
    n_q, n_docs = q.shape[0], docs.shape[0]
    out = torch.zeros(n_q, n_docs, dtype=q.dtype)
    pool = [(m, t) for m in range(n_docs) for t in range(docs.shape[1]) if d_mask[m, t]]
    for i in range(n_q):
        total = torch.zeros(n_docs, dtype=q.dtype)
        hit = torch.zeros(n_docs)
        for a in range(q.shape[1]):
            if not q_mask[i, a]:
                continue
            sims = torch.stack([q[i, a] @ docs[m, t] for m, t in pool])
            keep = set(torch.topk(sims, min(k, len(pool))).indices.tolist())
            best = {}
            for idx in keep:
                m = pool[idx][0]
                best[m] = torch.maximum(best[m], sims[idx]) if m in best else sims[idx]
            for m, value in best.items():
                total[m] = total[m] + value
                hit[m] += 1
        out[i] = total / hit.clamp(min=1)
    return out


def test_xtr_scores_on_a_hand_checkable_batch():
    # 1 query of 2 tokens; 2 documents of 2 tokens; 2-d unit vectors so similarities are easy to read.
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    d0 = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # sims to q-token0: 1.0, 0.6; to q-token1: 0.0, 0.8
    d1 = torch.tensor([[0.8, 0.6], [0.0, -1.0]])  # sims to q-token0: 0.8, 0.0; to q-token1: 0.6, -1.0
    docs = torch.stack([d0, d1])[None]  # [Q=1, N=2, Ld, D]
    mask = torch.ones(1, 2, 2)
    # k = 2: q-token0 retrieves d0t0 (1.0), d1t0 (0.8); q-token1 retrieves d0t1 (0.8), d1t0 (0.6).
    # d0: (1.0 + 0.8) / 2 = 0.9; d1: (0.8 + 0.6) / 2 = 0.7.
    got = scores.XTRScores(k=2)(q, docs, queries_mask=torch.ones(1, 2), documents_mask=mask)
    assert got.flatten().tolist() == pytest.approx([0.9, 0.7])
    # k = 1: q-token0 retrieves only d0t0 (1.0); q-token1 only d0t1 (0.8): d0 = 1.8 / 2, d1 = 0 (Z clamped).
    got = scores.XTRScores(k=1)(q, docs, queries_mask=torch.ones(1, 2), documents_mask=mask)
    assert got.flatten().tolist() == pytest.approx([0.9, 0.0])
    reference = xtr_reference(q[0:1], torch.stack([d0, d1]), torch.ones(1, 2), torch.ones(2, 2), k=2)
    assert reference.flatten().tolist() == pytest.approx([0.9, 0.7])


@pytest.fixture(scope="module")
def tiny_colbert():
    from retrievers.config import ColBERTConfig
    from retrievers.train.xtr import build_colbert

    torch.manual_seed(0)
    return build_colbert(
        REPO / "fixtures" / "models" / "tiny-modernbert",
        ColBERTConfig(embedding_size=16, query_length=8, document_length=12),
    )


def test_contrastive_loss_with_learnable_temperature_matches_the_definition(tiny_colbert):
    from pylate.losses.contrastive import extract_skiplist_mask

    queries = ["which how neda bodabe", "what about tina rizi"]
    positives = ["nanese tarese neda the of bodabe", "rizi roda tina lokite"]
    negatives = ["misimi somo notene", "vetoni the about over"]
    k, temperature = 6, 0.05
    loss = LearnableTemperatureContrastive(
        model=tiny_colbert, score_metric=scores.XTRScores(k=k), temperature=temperature
    )
    features = [
        tiny_colbert.tokenize(queries, is_query=True, pad=True),
        tiny_colbert.tokenize(positives, is_query=False, pad=True),
        tiny_colbert.tokenize(negatives, is_query=False, pad=True),
    ]
    value = loss(features)

    with torch.no_grad():
        embeddings = [F.normalize(tiny_colbert(f)["token_embeddings"], p=2, dim=-1) for f in features]
        masks = extract_skiplist_mask(sentence_features=features, skiplist=tiny_colbert.skiplist)
        # Query-major document order: doc j*N + n is the n-th document (0 = positive) of query j.
        docs = torch.stack([embeddings[1], embeddings[2]], dim=1).flatten(0, 1)
        doc_mask = torch.stack([masks[1], masks[2]], dim=1).flatten(0, 1)
        q_mask = torch.ones(embeddings[0].shape[:2])  # query expansion: every query position scores
        reference_scores = xtr_reference(embeddings[0], docs, q_mask, doc_mask, k)
        expected = F.cross_entropy(reference_scores / temperature, torch.arange(2) * 2)
    assert value.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-5)

    value.backward()
    assert loss.log_temperature.grad is not None and loss.log_temperature.grad.abs() > 0
    assert loss.temperature.item() == pytest.approx(temperature)


def test_distillation_loss_with_learnable_temperature_matches_the_definition(tiny_colbert):
    from pylate.losses.contrastive import extract_skiplist_mask

    queries = ["which how neda bodabe", "what about tina rizi"]
    documents = ["nanese tarese neda", "misimi somo notene", "rizi roda tina", "vetoni the about"]
    teacher = torch.tensor([[3.0, 1.0], [2.5, 0.5]])
    k, temperature = 5, 0.5
    loss = LearnableTemperatureDistillation(
        model=tiny_colbert, score_metric=scores.XTRKDScores(k=k), temperature=temperature
    )
    features = [
        tiny_colbert.tokenize(queries, is_query=True, pad=True),
        tiny_colbert.tokenize(documents, is_query=False, pad=True),
    ]
    value = loss(features, teacher)

    with torch.no_grad():
        q = F.normalize(tiny_colbert(features[0])["token_embeddings"], p=2, dim=-1)
        d = F.normalize(tiny_colbert(features[1])["token_embeddings"], p=2, dim=-1)
        masks = extract_skiplist_mask(sentence_features=features, skiplist=tiny_colbert.skiplist)
        # XTR KD scores are in-batch: every query retrieves over all 4 documents' tokens, and keeps its own 2.
        full = xtr_reference(q, d, torch.ones(q.shape[:2]), masks[1], k)
        own = torch.stack([full[0, 0:2], full[1, 2:4]])
        expected = F.kl_div(
            F.log_softmax(own / temperature, dim=-1),
            F.log_softmax(teacher, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
    assert value.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    value.backward()
    assert loss.log_temperature.grad is not None and loss.log_temperature.grad.abs() > 0


def test_temperature_is_a_parameter_the_trainer_optimises(tiny_colbert):
    loss = LearnableTemperatureContrastive(model=tiny_colbert, score_metric=scores.XTRScores(k=4), temperature=0.05)
    names = [n for n, p in loss.named_parameters() if p.requires_grad]
    assert "log_temperature" in names
    assert math.isclose(float(loss.temperature), 0.05, rel_tol=1e-6)
    frozen = LearnableTemperatureContrastive(
        model=tiny_colbert, score_metric=scores.XTRScores(k=4), temperature=0.05, learnable=False
    )
    assert not frozen.log_temperature.requires_grad
