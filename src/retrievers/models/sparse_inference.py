"""SPLADE encoding without the tokens x vocabulary tensor: what `retrievers index`, `encode`, `search`, `serve`
and evaluation compute with this package's SPLADE models (``retrievers.models.splade.load``).

The stock path (``MLMTransformer`` then ``SpladePooling("max")``) materialises the MLM logits of every token,
[batch x length x vocabulary] floats (32 x 256 x 30,522 x 4 bytes = 1 GB for one batch of long passages), then
passes over them four more times (mask, relu, log1p, max). Because log1p and relu are monotone,

    max_l log1p(relu(mask_l * (h_l W^T + b)))  =  log1p(relu(max_l mask_l * (h_l W^T + b)))

so only the per-(row, term) maximum of the logits is needed. ``splade_max_logits`` computes it a few rows and a
block of the vocabulary at a time (1 MiB of logits, which stays in cache: on this CPU the blocked products run
about 3x faster than the one [batch*length x vocabulary] product of the stock decoder, before any pooling pass),
each block with the same ``F.linear`` as the stock decoder; the activation is then applied to the [batch x
vocabulary] maxima only. Every logit is the same dot product over the hidden size as on the stock path, but BLAS
may block a differently shaped product differently, so results agree to float32 rounding (the equality test says
how close), not necessarily bit for bit.

``InferenceSparseEncoder`` is sentence-transformers' ``SparseEncoder`` with that forward when no gradient is
wanted (``encode`` runs under ``torch.inference_mode``), the model is MLMTransformer(NeoBERT) +
SpladePooling("max") and its vocabulary is larger than one block (so not the fixture's 381 tokens). Anything else
(training, sum pooling, other architectures) runs the stock forward. It saves and loads exactly as
``SparseEncoder``. Training has its own fused pooling with a backward pass (``retrievers.packed.splade_max_pool``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SparseEncoder

from retrievers.models import SavesAsStock

INFERENCE_CHUNK_TOKENS = 256  # token positions x ...
VOCABULARY_BLOCK = 1024  # ... vocabulary terms of logits at once: 256 x 1024 float32 = 1 MiB, cache-sized


@torch.no_grad()
def splade_max_logits(hidden: torch.Tensor, mask: torch.Tensor, decoder: torch.nn.Linear,
                      chunk_tokens: int = INFERENCE_CHUNK_TOKENS, vocabulary_block: int = VOCABULARY_BLOCK
                      ) -> torch.Tensor:
    """``max(0, max_l mask_l * (hidden_l W^T + b))`` [rows, vocabulary] for ``hidden`` [rows, length, dim], with
    at most ``chunk_tokens`` x ``vocabulary_block`` logits in memory (whole rows, at least one; more rows when the
    vocabulary is smaller than a block). A padding position takes a copy of its row's first attended hidden state
    instead of being masked afterwards: its logits then repeat ones the row has, so the maximum over the row is its
    attended tokens' maximum, as on the stock path (where padding adds zeros, which the clamp at 0 stands for)."""
    keep = mask.bool()
    rows = hidden.shape[0]
    attended = keep.any(1)
    if not bool(attended.any()):
        return hidden.new_zeros(rows, decoder.out_features)
    first = hidden[torch.arange(rows, device=hidden.device), keep.int().argmax(1)]
    width = int(keep.any(0).nonzero().max()) + 1  # columns that are padding in every row add only zeros
    hidden = torch.where(keep[:, :width, None], hidden[:, :width], first[:, None, :])
    weight, bias = decoder.weight, decoder.bias
    vocabulary = decoder.out_features
    out = hidden.new_empty(rows, vocabulary)
    step = max(1, chunk_tokens * vocabulary_block // (width * min(vocabulary_block, vocabulary)))  # small vocabularies
    for start in range(0, rows, step):
        chunk = hidden[start : start + step]
        for term in range(0, vocabulary, vocabulary_block):
            stop = term + vocabulary_block
            logits = F.linear(chunk, weight[term:stop], None if bias is None else bias[term:stop])
            out[start : start + step, term:stop] = logits.amax(dim=1)
    out.clamp_(min=0)
    out[~attended] = 0.0
    return out


def splade_activation(z: torch.Tensor, twice: bool) -> torch.Tensor:
    """SpladePooling's activation of per-(row, term) maximum logits: log1p(relu(z)), log1p applied twice for
    ``log1p_relu``. Shared with training's fused pooling (``retrievers.packed``); not in place (autograd keeps z)."""
    out = z.clamp(min=0).log1p()
    return out.log1p() if twice else out


class InferenceSparseEncoder(SavesAsStock, SparseEncoder):
    """``SparseEncoder`` whose inference forward skips the [batch x length x vocabulary] logits (module docstring)."""

    stock_name = "SparseEncoder"
    chunk_tokens, vocabulary_block = INFERENCE_CHUNK_TOKENS, VOCABULARY_BLOCK

    def _fusable(self) -> bool:
        from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

        from retrievers.models.neobert import NeoBERTLMHead

        modules = list(self.children())
        return (len(modules) == 2 and isinstance(modules[0], MLMTransformer) and isinstance(modules[1], SpladePooling)
                and modules[1].pooling_strategy == "max" and isinstance(modules[0].auto_model, NeoBERTLMHead))

    def _pays(self) -> bool:
        """Whether the vocabulary is larger than a block: with a small one (the fixture's 381 tokens) the stock
        logits are a few MiB and the stock forward was faster (benchmarks/splade_inference.py: 0.7-0.8x)."""
        lm: Any = self[0].auto_model
        return int(lm.config.vocab_size) > self.vocabulary_block

    def forward(self, input: dict, **kwargs) -> dict:  # noqa: A002 - the parent's parameter name
        if torch.is_grad_enabled() or "input_ids" not in input or not (self._fusable() and self._pays()):
            return super().forward(input, **kwargs)
        from retrievers.models.neobert import NeoBERTLMHead

        mlm, pooling = self[0], self[1]
        lm = mlm.auto_model
        assert isinstance(lm, NeoBERTLMHead)  # _fusable checked it
        mask = input["attention_mask"]
        hidden = lm.model(input["input_ids"], attention_mask=mask).last_hidden_state
        maxima = splade_max_logits(hidden, mask, lm.decoder, self.chunk_tokens, self.vocabulary_block)
        input["sentence_embedding"] = splade_activation(maxima, pooling.activation_function == "log1p_relu")
        return input
