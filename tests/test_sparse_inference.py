"""SPLADE inference without the tokens x vocabulary logits (retrievers.models.sparse_inference) gives stock
``SparseEncoder``'s vectors.

Tolerance: rtol 1e-5 / atol 1e-6 (float32). Each logit is the same dot product over the hidden size as on the stock
path, and relu/log1p are applied to the same maximum, but BLAS may block a [chunk x block] product differently
from the stock [batch*length x vocabulary] one, so the last bits may differ (summation order). On this machine
the vectors were equal bit for bit (max abs diff 0.0, benchmarks/splade_inference.py).
"""

from __future__ import annotations

import pytest
import torch

import retrievers  # noqa: F401  (native NeoBERT)

TEXTS = ["", "a", "the first document about retrieval", "short",
         " ".join(["a much longer passage that the model truncates at its maximum length"] * 12),
         "what is a sparse encoder", "two words"]
CLOSE = {"rtol": 1e-5, "atol": 1e-6}


def test_blocked_maximum_equals_stock_pooling_for_any_mask():
    """Several row chunks and vocabulary blocks (and a partial last block), right and left padding, a row that is
    all padding, both activations: the same as MLM logits through the stock SpladePooling."""
    from sentence_transformers.sparse_encoder.models import SpladePooling

    from retrievers.models.sparse_inference import splade_activation, splade_max_logits

    torch.manual_seed(0)
    decoder = torch.nn.Linear(16, 1000)
    hidden = torch.randn(6, 11, 16)
    mask = torch.zeros(6, 11, dtype=torch.long)
    for row, (start, stop) in enumerate([(0, 11), (0, 3), (0, 1), (4, 11), (0, 7), (0, 0)]):
        mask[row, start:stop] = 1
    for activation in ("relu", "log1p_relu"):
        pooling = SpladePooling("max", activation_function=activation).eval()
        with torch.inference_mode():
            stock = pooling({"token_embeddings": decoder(hidden), "attention_mask": mask})["sentence_embedding"]
            ours = splade_activation(splade_max_logits(hidden, mask, decoder, chunk_tokens=20, vocabulary_block=300),
                                     twice=activation == "log1p_relu")
        torch.testing.assert_close(ours, stock, **CLOSE)
        assert (stock[5] == 0).all() and (stock > 0).any()  # the padding row, and something to compare


@pytest.mark.parametrize("block", [64, 380])  # the tiny 381-token vocabulary in 6 blocks, or 2 (one of 1 term)
def test_encode_equals_stock_encode(tiny_splade, block):
    from sentence_transformers import SparseEncoder

    from retrievers.models import splade
    from retrievers.models.sparse_inference import InferenceSparseEncoder

    stock = SparseEncoder(str(tiny_splade), device="cpu")
    ours = splade.load(tiny_splade)
    assert isinstance(ours, InferenceSparseEncoder) and not ours._pays()  # 381 tokens: the stock forward...
    ours.vocabulary_block, ours.chunk_tokens = block, 16  # ... unless the blocks are smaller
    assert ours._pays()
    for method in ("encode_query", "encode_document"):
        kwargs = {"batch_size": 3, "convert_to_tensor": True, "convert_to_sparse_tensor": False,
                  "show_progress_bar": False}
        expected = getattr(stock, method)(TEXTS, **kwargs)
        got = getattr(ours, method)(TEXTS, **kwargs)
        torch.testing.assert_close(got, expected, **CLOSE)
        assert (expected > 0).sum() > 100


def test_saves_and_trains_as_the_stock_class(tiny_splade, tmp_path):
    """What it saves loads with the stock class as a SparseEncoder; with gradients on it runs the stock forward."""
    import json

    from sentence_transformers import SparseEncoder

    from retrievers.models.sparse_inference import InferenceSparseEncoder

    ours = InferenceSparseEncoder(str(tiny_splade), device="cpu")
    ours.vocabulary_block = 64
    ours.save(str(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / "config_sentence_transformers.json").read_text())["model_type"] == \
        "SparseEncoder"
    again = SparseEncoder(str(tmp_path / "saved"), device="cpu")
    torch.testing.assert_close(again.encode_document(TEXTS, convert_to_tensor=True, convert_to_sparse_tensor=False),
                               ours.encode_document(TEXTS, convert_to_tensor=True, convert_to_sparse_tensor=False),
                               **CLOSE)
    features = ours.tokenize(TEXTS[:3])
    output = ours(features)
    assert "token_embeddings" in output and output["sentence_embedding"].requires_grad  # the stock path, trainable
