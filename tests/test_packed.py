"""The training fast paths (retrievers.packed) compute what the stock paths compute.

Per recipe, on the same batch and weights (float32, CPU): the loss equals the stock path's within 1e-5 (relative
for losses above 1: float32 resolves 1.5e-5 at 144, the untrained contrastive loss at temperature 0.05) and
every parameter's gradient is within 1e-4 of the stock one, relative to the stock gradient's norm
(||g_fast - g_stock|| <= 1e-4 ||g_stock||, per parameter tensor; element-wise ratios are meaningless for
entries that are zero up to rounding). The micro-forwards are forced to be many and small here (a budget
of 64 token positions), so the batches really are split, reordered and reassembled. The XTR losses are PyLate's
own (the fast paths live in the model and collator; the recipe's temperature sits on top of the same scores)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from retrievers.config import ColBERTConfig, SpeedConfig, SpladeConfig, SpladePhase, parse_params
from retrievers.packed import PackedColBERT, PackedColBERTCollator, PackedSparseEncoder, length_buckets, splade_max_pool

from .conftest import REPO, published

FAST = SpeedConfig(length_buckets=True, bucket_tokens=64, pad_multiple=4, min_bucket_efficiency=0.9,
                   documents_to_longest=True, fused_splade_pooling=True, splade_chunk_tokens=40,
                   packed_splade_pooling=False, pretokenized=False, scan_free_no_duplicates=False)
TINY_MODERNBERT = REPO / "fixtures" / "models" / "tiny-modernbert"
TINY_NEOBERT = REPO / "fixtures" / "models" / "tiny-neobert"


def _texts(n: int, low: int, high: int, seed: int) -> list[str]:
    from transformers import AutoTokenizer

    words = [w for w in AutoTokenizer.from_pretrained(TINY_MODERNBERT).get_vocab() if w.isalpha()]
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(low, high))) for _ in range(n)]


def _features(batch: dict) -> tuple[list[dict], torch.Tensor | None]:
    """A collated batch -> per-column features and labels, as the sentence-transformers trainer splits it."""
    prefixes = [key[: -len("input_ids")] for key in batch if key.endswith("_input_ids")]
    return [{k[len(p):]: v for k, v in batch.items() if k.startswith(p)} for p in prefixes], batch.get("label")


def _total(loss) -> torch.Tensor:
    """SpladeLoss returns its parts as a dict (the trainer sums them)."""
    return sum(loss.values()) if isinstance(loss, dict) else loss  # type: ignore[return-value]


def _assert_same_loss_and_gradients(stock_model, fast_model, stock_loss, fast_loss, stock_batch, fast_batch):
    features, labels = _features(stock_batch)
    expected = _total(stock_loss(features, labels))
    expected.backward()
    features, labels = _features(fast_batch)
    got = _total(fast_loss(features, labels))
    got.backward()
    assert abs(float(got) - float(expected)) <= 1e-5 * max(1.0, abs(float(expected))), (float(got), float(expected))
    stock_params = dict(stock_model.named_parameters())
    checked = 0
    for name, param in fast_model.named_parameters():
        reference = stock_params[name].grad
        if reference is None:
            assert param.grad is None or not param.grad.any(), name
            continue
        difference = float((param.grad - reference).norm())
        assert difference <= 1e-4 * float(reference.norm()) + 1e-12, (name, difference, float(reference.norm()))
        checked += 1
    assert checked >= len(stock_params) // 2  # the encoder's weights really received gradients


def _colbert_pair():
    from pylate import models

    colbert = ColBERTConfig(**published("phases", "modernbert-xtr", "colbert", embedding_size=16, query_length=8,
                                      document_length=96))
    kwargs = dict(model_name_or_path=str(TINY_MODERNBERT), embedding_size=16, query_length=8, document_length=96,
                  query_prefix="", document_prefix="", device="cpu")
    torch.manual_seed(0)
    stock = models.ColBERT(**kwargs)
    fast = PackedColBERT(**kwargs)
    fast.load_state_dict(stock.state_dict())
    fast.speed = FAST
    assert colbert.document_length == stock.document_length
    return stock, fast


def test_length_buckets_cover_every_row_once_and_keep_to_the_budget():
    rng = random.Random(1)
    lengths = [rng.randint(1, 90) for _ in range(200)]
    plan = length_buckets(lengths, token_budget=256, pad_multiple=8, min_efficiency=0.9, cap=96)
    assert sorted(i for rows, _ in plan for i in rows) == list(range(200))
    for rows, width in plan:
        assert width % 8 == 0 or width == 96
        assert max(lengths[i] for i in rows) <= width
        assert len(rows) == 1 or len(rows) * width <= 256
    real = sum(lengths)
    assert real / sum(len(rows) * width for rows, width in plan) >= 0.85


def _groupings(n: int):
    """Every split of sorted rows 0..n-1 into consecutive groups, as group boundaries."""
    for cuts in itertools.product([False, True], repeat=n - 1):
        yield [0, *(i + 1 for i, cut in enumerate(cuts) if cut), n]


@pytest.mark.parametrize("seed", range(40))
def test_length_buckets_are_the_fewest_micro_forwards_that_keep_the_efficiency(seed):
    """Against every grouping of the sorted rows (brute force): no grouping within the budget and the efficiency
    has fewer micro-forwards, none with as few has fewer positions; where none reaches the efficiency, the plan
    has the fewest positions there are, in the fewest micro-forwards."""
    rng = random.Random(seed)
    lengths = [rng.randint(0, 40) for _ in range(rng.randint(1, 9))]
    budget, pad, cap = rng.choice([24, 48, 96, 1000]), rng.choice([1, 4, 8]), 48
    efficiency = rng.choice([0.5, 0.8, 0.95])
    plan = length_buckets(lengths, token_budget=budget, pad_multiple=pad, min_efficiency=efficiency, cap=cap)
    assert sorted(i for rows, _ in plan for i in rows) == list(range(len(lengths)))
    def rounded(length: int) -> int:  # a row's width: its length rounded up to pad, at most cap
        return min(cap, -(-max(length, 1) // pad) * pad)

    width = [rounded(n) for n in sorted(lengths)]
    feasible = []
    for bounds in _groupings(len(lengths)):
        groups = list(itertools.pairwise(bounds))
        if all(b - a == 1 or (b - a) * width[b - 1] <= budget for a, b in groups):
            feasible.append((len(groups), sum((b - a) * width[b - 1] for a, b in groups)))
    got = (len(plan), sum(len(rows) * w for rows, w in plan))
    for rows, w in plan:
        assert w == max(rounded(lengths[i]) for i in rows)
        assert len(rows) == 1 or len(rows) * w <= budget
    allowed = sum(lengths) / efficiency
    meeting = [f for f in feasible if f[1] <= allowed + 1e-9]
    if meeting:
        assert got == min(meeting)
    else:
        fewest_positions = min(p for _, p in feasible)
        assert got == min(f for f in feasible if f[1] == fewest_positions)


@pytest.mark.parametrize("recipe", ["xtr-contrastive", "xtr-distillation"])
def test_xtr_fast_path_loss_and_gradients_equal_the_stock_path(recipe):
    from pylate import losses, scores, utils

    stock, fast = _colbert_pair()
    if recipe == "xtr-contrastive":
        rows = [{"query": q, "positive": p, "negative": n}
                for q, p, n in zip(_texts(6, 2, 6, 0), _texts(6, 3, 80, 1), _texts(6, 3, 40, 2), strict=True)]

        def make(model):
            return losses.Contrastive(model=model, score_metric=scores.XTRScores(k=24), temperature=0.05)
    else:
        docs = _texts(24, 3, 80, 3)
        rows = [{"query": q, "documents": docs[4 * i: 4 * i + 4],
                 "scores": [random.Random(i).random() for _ in range(4)]} for i, q in enumerate(_texts(6, 2, 6, 4))]

        def make(model):
            return losses.Distillation(model=model, score_metric=scores.XTRKDScores(k=24))
    stock_batch = utils.ColBERTCollator(stock.tokenize)(rows)
    fast_batch = PackedColBERTCollator(fast.tokenize, document_length=96, k_train=24)(rows)
    doc_key = "positive_input_ids" if recipe == "xtr-contrastive" else "documents_input_ids"
    assert stock_batch[doc_key].shape[1] == 96 > fast_batch[doc_key].shape[1]  # documents padded to the longest
    _assert_same_loss_and_gradients(stock, fast, make(stock), make(fast), stock_batch, fast_batch)


def test_xtr_fast_path_with_fewer_document_tokens_than_k_train_keeps_the_stock_width():
    """XTR's top-k over a batch with fewer scored document tokens than k_train also takes padding positions (and
    torch.topk needs k_train positions): such batches keep PyLate's document_length, so the loss is the stock one."""
    from pylate import losses, scores, utils

    stock, fast = _colbert_pair()
    rows = [{"query": q, "positive": p, "negative": n}
            for q, p, n in zip(_texts(3, 2, 4, 10), _texts(3, 1, 3, 11), _texts(3, 1, 3, 12), strict=True)]
    stock_batch = utils.ColBERTCollator(stock.tokenize)(rows)
    collator = PackedColBERTCollator(fast.tokenize, document_length=96, k_train=64, skiplist=list(fast.skiplist))
    fast_batch = collator(rows)
    assert int(fast_batch["positive_attention_mask"].sum() + fast_batch["negative_attention_mask"].sum()) < 64
    assert fast_batch["positive_input_ids"].shape[1] == 96
    _assert_same_loss_and_gradients(stock, fast, *(losses.Contrastive(model=m, score_metric=scores.XTRScores(k=64),
                                                                      temperature=0.05) for m in (stock, fast)),
                                    stock_batch, fast_batch)
    # With enough tokens the documents are padded to one past the longest.
    long_rows = [{"query": r["query"], "positive": p, "negative": p} for r, p in zip(rows, _texts(3, 30, 40, 13),
                                                                                     strict=True)]
    batch = collator(long_rows)
    assert batch["positive_input_ids"].shape[1] == int(batch["positive_attention_mask"].sum(1).max()) + 1


def test_fast_models_save_what_the_stock_loaders_load_and_encode_alike(tmp_path):
    from pylate import models
    from sentence_transformers import SparseEncoder

    stock, fast = _colbert_pair()
    fast.train()  # the micro-forwards run in training mode
    docs = _texts(9, 2, 70, 5)
    features = PackedColBERTCollator(fast.tokenize)([{"query": "a", "positive": d} for d in docs])
    doc_features = {k[len("positive_"):]: v for k, v in features.items() if k.startswith("positive_")}
    with torch.no_grad():
        got = fast(dict(doc_features))["token_embeddings"]
        stock_features = {k: v for k, v in doc_features.items() if k != "document_lengths"}
        expected = stock.train()(stock_features)["token_embeddings"]
    mask = doc_features["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], rtol=1e-5, atol=1e-5)
    fast.save_pretrained(str(tmp_path / "colbert"))
    reloaded = models.ColBERT(str(tmp_path / "colbert"))
    for a, b in zip(reloaded.encode(docs, is_query=False), stock.eval().encode(docs, is_query=False), strict=True):
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-5, atol=1e-5)
    stock_splade, fast_splade = _splade_pair()
    fast_splade.save_pretrained(str(tmp_path / "splade"))
    expected = stock_splade.encode(docs, convert_to_tensor=True).to_dense()
    torch.testing.assert_close(fast_splade.encode(docs, convert_to_tensor=True).to_dense(), expected)
    torch.testing.assert_close(SparseEncoder(str(tmp_path / "splade")).encode(docs, convert_to_tensor=True).to_dense(),
                               expected)
    # And the other way round: a phase starting from a folder the stock class saved (XTR phase 2 from phase 1).
    stock.save_pretrained(str(tmp_path / "stock-colbert"))
    again = PackedColBERT(str(tmp_path / "stock-colbert"))
    assert len(again) == len(stock)  # the Dense head came back, not a bare encoder with mean pooling
    for a, b in zip(again.encode(docs, is_query=False), stock.encode(docs, is_query=False), strict=True):
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-5, atol=1e-5)
    stock_splade.save_pretrained(str(tmp_path / "stock-splade"))
    torch.testing.assert_close(PackedSparseEncoder(str(tmp_path / "stock-splade")).encode(
        docs, convert_to_tensor=True).to_dense(), expected)


def _splade_pair(packed: bool = False):
    from retrievers.models.splade import build_splade

    torch.manual_seed(0)
    splade = SpladeConfig(**published("phases", "neobert-splade", "splade", max_seq_length=96))
    stock = build_splade(TINY_NEOBERT, splade)
    fast = build_splade(TINY_NEOBERT, splade, FAST.model_copy(update={"packed_splade_pooling": packed}))
    fast.load_state_dict(stock.state_dict())
    assert isinstance(fast, PackedSparseEncoder) and fast._fusable()
    return stock, fast


@pytest.mark.parametrize("packed", [False, True])
def test_splade_fast_path_loss_and_gradients_equal_the_stock_path(packed):
    from sentence_transformers.sparse_encoder.data_collator import SparseEncoderDataCollator

    from retrievers.train.splade import build_loss

    params = parse_params(__import__("yaml").safe_load((REPO / "params.yaml").read_text()))
    phase = params.phases["neobert-splade"]
    assert isinstance(phase, SpladePhase)
    stock, fast = _splade_pair(packed)
    rows = [{"query": q, "positive": p, "negative": n}
            for q, p, n in zip(_texts(8, 2, 8, 6), _texts(8, 3, 90, 7), _texts(8, 3, 60, 8), strict=True)]
    stock_batch = SparseEncoderDataCollator(tokenize_fn=stock.tokenize)(rows)
    fast_batch = SparseEncoderDataCollator(tokenize_fn=fast.tokenize)(rows)
    _assert_same_loss_and_gradients(stock, fast, build_loss(stock, phase), build_loss(fast, phase),
                                    stock_batch, fast_batch)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("activation", ["relu", "log1p_relu"])
def test_fused_splade_pooling_equals_the_stock_pooling(activation, packed):
    """Also a row with no attended position (the stock maximum is then the masked 0) and chunks of whole rows
    (packed: 22 tokens hold rows of 11 + 3 + 7, then 1 + 0 + 9)."""
    from sentence_transformers.sparse_encoder.models import SpladePooling

    torch.manual_seed(0)
    hidden = torch.randn(6, 11, 16, requires_grad=True)
    mask = torch.ones(6, 11, dtype=torch.long)
    for row, length in enumerate([11, 3, 7, 1, 0, 9]):
        mask[row, length:] = 0
    decoder = torch.nn.Linear(16, 50)
    pooling = SpladePooling("max", activation_function=activation).train()
    expected = pooling({"token_embeddings": decoder(hidden), "attention_mask": mask})["sentence_embedding"]
    weights = torch.rand(6, 50)
    grads_expected = torch.autograd.grad((expected * weights).sum(), [hidden, decoder.weight, decoder.bias])
    # Two micro-forwards (rows 0-2 at full width, rows 3-5 trimmed to 9 positions), rows chunked by 22 tokens.
    got = splade_max_pool([hidden[:3], hidden[3:, :9]], [mask[:3], mask[3:, :9]], decoder, activation == "log1p_relu",
                          chunk_tokens=22, packed=packed)
    grads_got = torch.autograd.grad((got * weights).sum(), [hidden, decoder.weight, decoder.bias])
    torch.testing.assert_close(got, expected)
    for a, b in zip(grads_got, grads_expected, strict=True):
        torch.testing.assert_close(a, b)
