"""The XTR losses with a learnable temperature equal a direct computation from the XTR definition
(Lee et al. 2023): each query token keeps its top-k document tokens over ALL tokens of ALL documents in
the batch; unretrieved similarities count 0; a document's score is the sum over query tokens of the best
retrieved similarity, divided by Z = the number of query tokens that retrieved any token of it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pylate import scores

from retrievers.losses import TEMPERATURE_NAME, TemperatureDistillation, register_temperature

from .conftest import REPO, published


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


TINY_COLBERT = published("phases", "modernbert-xtr", "colbert", embedding_size=16, query_length=8, document_length=12)


@pytest.fixture
def tiny_colbert():
    """A fresh tiny ColBERT per test: register_temperature adds a parameter to the model it is given."""
    from retrievers.config import ColBERTConfig
    from retrievers.models.colbert import build_colbert

    torch.manual_seed(0)
    return build_colbert(REPO / "fixtures" / "models" / "tiny-modernbert", ColBERTConfig(**TINY_COLBERT))


class FixedScores:
    """A score function that returns given student scores whatever the embeddings: the loss arithmetic on
    numbers small enough to check by hand."""

    def __init__(self, values):
        self.values = torch.tensor(values)

    def __call__(self, *args, **kwargs):
        return self.values.clone()


def fork_kd_reference(student, teacher, temperature, minmax: bool):
    """robro612/pylate pylate/losses/distillation.py (@5e5db09, @a837958, @f142d23): optional min-max of student
    and teacher ("both"), then KL(log_softmax(teacher) || log_softmax(student / T)), batchmean."""
    def minmax_of(x):
        return (x - x.min(dim=1, keepdim=True).values) / (
            x.max(dim=1, keepdim=True).values - x.min(dim=1, keepdim=True).values + 1e-8)

    teacher = teacher.float()
    if minmax:
        student, teacher = minmax_of(student), minmax_of(teacher)
    return F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher, dim=-1),
                    reduction="batchmean", log_target=True)


def _features(model, queries, *documents):
    return [model.tokenize(queries, is_query=True, pad=True)] + [
        model.tokenize(list(group), is_query=False, pad=True) for group in documents
    ]


def test_contrastive_temperature_on_a_hand_checkable_batch(tiny_colbert):
    from pylate import losses

    temperature = register_temperature(tiny_colbert, 0.05, learnable=True)
    # One query, its positive scored 0.9 and its negative 0.7: CE = log(1 + e^((0.7 - 0.9) / 0.05)) = log(1 + e^-4).
    loss = losses.Contrastive(model=tiny_colbert, score_metric=FixedScores([[0.9, 0.7]]),
                              temperature=temperature)  # type: ignore[arg-type]
    value = loss(_features(tiny_colbert, ["q"], ["positive"], ["negative"]))
    assert value.item() == pytest.approx(0.0181499, abs=1e-6)
    value.backward()
    # dCE/dT = -(1/T^2) * sum_j (softmax_j - onehot_j) * s_j; softmax = (0.982014, 0.017986):
    # -400 * (-0.017986 * 0.9 + 0.017986 * 0.7) = 1.43888.
    assert temperature.grad.item() == pytest.approx(1.43888, rel=1e-4)


def test_kd_temperature_without_minmax_on_a_hand_checkable_batch(tiny_colbert):
    """kd_xtr.yaml@5e5db09: temperature 0.5, no min-max normalisation."""
    temperature = register_temperature(tiny_colbert, 0.5, learnable=True)
    loss = TemperatureDistillation(model=tiny_colbert, score_metric=FixedScores([[0.9, 0.7]]),
                                   temperature=temperature, minmax_normalize_scores=False)
    teacher = torch.tensor([[1.0986123, 0.0]])  # log 3, 0: the teacher's distribution is (0.75, 0.25)
    value = loss(_features(tiny_colbert, ["q"], ["d1", "d2"]), teacher)
    # Student: softmax((1.8, 1.4)) = (0.598688, 0.401312).
    # KL = 0.75 ln(0.75 / 0.598688) + 0.25 ln(0.25 / 0.401312) = 0.75 * 0.225333 - 0.25 * 0.473279 = 0.050680.
    assert value.item() == pytest.approx(0.050680, abs=2e-6)
    assert value.item() == pytest.approx(fork_kd_reference(torch.tensor([[0.9, 0.7]]), teacher, 0.5, False).item())
    value.backward()
    # dKL/dT = -(1/T^2) * sum_j (q_j - p_j) * s_j = -4 * ((0.598688 - 0.75) * 0.9 + (0.401312 - 0.25) * 0.7) = 0.121050.
    assert temperature.grad.item() == pytest.approx(0.121050, rel=1e-4)


def test_kd_temperature_with_minmax_on_a_hand_checkable_batch(tiny_colbert):
    """kd_xtr.yaml@b7388df: temperature 1.0; student and teacher min-max normalised, then student / T."""
    temperature = register_temperature(tiny_colbert, 1.0, learnable=True)
    student = [[0.9, 0.7, 0.5]]  # min-max: (1, 0.5, 0)
    teacher = torch.tensor([[3.0, 2.0, 0.0]])  # min-max: (1, 2/3, 0)
    loss = TemperatureDistillation(model=tiny_colbert, score_metric=FixedScores(student), temperature=temperature,
                                   minmax_normalize_scores=True)
    value = loss(_features(tiny_colbert, ["q"], ["d1", "d2", "d3"]), teacher)
    # p = softmax(1, 2/3, 0) = (0.479752, 0.343757, 0.176491); q = softmax(1, 0.5, 0) = (0.506480, 0.307196, 0.186324)
    # KL = sum p ln(p / q) = -0.026010 + 0.038656 - 0.009569 = 0.003076.
    assert value.item() == pytest.approx(0.003076, abs=2e-6)
    assert value.item() == pytest.approx(fork_kd_reference(torch.tensor(student), teacher, 1.0, True).item())
    # pylate 1.6's own normalize_scores=True normalises the student only: a different value (0.131), not the fork's.
    student_only = fork_kd_reference(torch.tensor([[1.0, 0.5, 0.0]]), teacher, 1.0, False)
    assert abs(value.item() - student_only.item()) > 0.01
    value.backward()
    # dKL/dT = -(1/T^2) * sum_j (q_j - p_j) * s'_j with s' = (1, 0.5, 0): -(0.026728 - 0.018281) = -0.008448.
    assert temperature.grad.item() == pytest.approx(-0.008448, rel=1e-3)


@pytest.mark.parametrize("temperature, minmax", [(0.5, False), (1.0, True)])
def test_kd_loss_with_xtr_scores_matches_the_definitions(tiny_colbert, temperature, minmax):
    from pylate.losses.contrastive import extract_skiplist_mask

    queries = ["which how neda bodabe", "what about tina rizi"]
    documents = ["nanese tarese neda", "misimi somo notene", "rizi roda tina", "vetoni the about"]
    teacher = torch.tensor([[3.0, 1.0], [2.5, 0.5]])
    k = 5
    parameter = register_temperature(tiny_colbert, temperature, learnable=True)
    loss = TemperatureDistillation(model=tiny_colbert, score_metric=scores.XTRKDScores(k=k), temperature=parameter,
                                   minmax_normalize_scores=minmax)
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
        expected = fork_kd_reference(own, teacher, temperature, minmax)
    assert value.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    value.backward()
    assert parameter.grad is not None and parameter.grad.abs() > 0


def test_contrastive_loss_with_xtr_scores_matches_the_definition(tiny_colbert):
    from pylate import losses
    from pylate.losses.contrastive import extract_skiplist_mask

    queries = ["which how neda bodabe", "what about tina rizi"]
    positives = ["nanese tarese neda the of bodabe", "rizi roda tina lokite"]
    negatives = ["misimi somo notene", "vetoni the about over"]
    k, temperature = 6, 0.05
    parameter = register_temperature(tiny_colbert, temperature, learnable=True)
    loss = losses.Contrastive(model=tiny_colbert, score_metric=scores.XTRScores(k=k),
                              temperature=parameter)  # type: ignore[arg-type]
    features = _features(tiny_colbert, queries, positives, negatives)
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
    assert parameter.grad is not None and parameter.grad.abs() > 0


def test_temperature_is_registered_and_optimised_as_the_fork_does(tiny_colbert, tmp_path):
    """On the model as `learnable_temperature` (a plain value, not a log), in the optimizer group of the model's
    weight matrices: the phase's learning rate and weight decay."""
    from datasets import Dataset
    from pylate import losses, utils
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    temperature = register_temperature(tiny_colbert, 0.05, learnable=True)
    assert dict(tiny_colbert.named_parameters())[TEMPERATURE_NAME] is temperature
    assert temperature.item() == pytest.approx(0.05)
    assert register_temperature(tiny_colbert, 0.5, learnable=True) is temperature  # the fork's hasattr reuse
    loss = losses.Contrastive(model=tiny_colbert, score_metric=scores.XTRScores(k=4),
                              temperature=temperature)  # type: ignore[arg-type]
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path), learning_rate=3e-5, weight_decay=0.01,
                                                report_to=[], use_cpu=True)
    data = Dataset.from_dict({"query": ["a"], "positive": ["b"], "negative": ["c"]})
    trainer = SentenceTransformerTrainer(model=tiny_colbert, args=args, train_dataset=data, loss=loss,
                                         data_collator=utils.ColBERTCollator(tiny_colbert.tokenize))
    optimizer = trainer.create_optimizer()
    [group] = [g for g in optimizer.param_groups if any(p is temperature for p in g["params"])]
    dense_weight = tiny_colbert[1].linear.weight
    assert any(p is dense_weight for p in group["params"])  # the same group as the model's weight matrices
    assert (group["lr"], group["weight_decay"]) == (3e-5, 0.01)
    assert sum(p is temperature for g in optimizer.param_groups for p in g["params"]) == 1
    # The smoke profile gives the temperature its published rate with sentence-transformers' learning_rate_mapping.
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path), learning_rate=3e-3, report_to=[],
                                                use_cpu=True, learning_rate_mapping={"temperature": 3e-5})
    trainer = SentenceTransformerTrainer(model=tiny_colbert, args=args, train_dataset=data, loss=loss,
                                         data_collator=utils.ColBERTCollator(tiny_colbert.tokenize))
    groups = trainer.create_optimizer().param_groups
    assert [g["lr"] for g in groups if any(p is temperature for p in g["params"])] == [3e-5]
    assert all(g["lr"] == 3e-3 for g in groups if any(p is dense_weight for p in g["params"]))
    assert register_temperature(tiny_colbert, 0.05, learnable=False) == 0.05


def test_phase_two_starts_afresh_and_a_checkpoint_loads_back(tiny_colbert, tmp_path):
    """The fork's phase 2 loads phase 1's saved folder: the temperature is not in it, so phase 2 registers a new
    one at its own initial value. Loading a checkpoint back into a model with a temperature (the trainer's
    resume, strict) keeps the temperature and raises nothing."""
    from retrievers.config import ColBERTConfig
    from retrievers.models.colbert import build_colbert

    temperature = register_temperature(tiny_colbert, 0.05, learnable=True)
    with torch.no_grad():
        temperature.fill_(0.0731)  # as if phase 1 had learnt it
    tiny_colbert.save_pretrained(str(tmp_path / "final"))
    phase_two = build_colbert(tmp_path / "final", ColBERTConfig(**TINY_COLBERT))
    assert not hasattr(phase_two, TEMPERATURE_NAME)
    assert register_temperature(phase_two, 1.0, learnable=True).item() == pytest.approx(1.0)
    phase_two.load_state_dict(build_colbert(tmp_path / "final", ColBERTConfig(**TINY_COLBERT)).state_dict())
    assert getattr(phase_two, TEMPERATURE_NAME).item() == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="Missing key"):  # other missing keys still fail loudly
        state = phase_two.state_dict()
        state.pop(next(k for k in state if k.endswith("weight")))
        phase_two.load_state_dict(state)
