"""Training fast paths that compute exactly what the stock models compute, on fewer token positions.

Three separable layers, each behind a switch in ``phases.<phase>.speed`` (``SpeedConfig``):

* ``length_buckets``: a batch's rows are sorted by length and encoded in micro-forwards, each trimmed to its
  own longest row (rounded up to ``pad_multiple``), so the encoder computes almost only real tokens. The outputs
  are put back in the batch's order and shape (padding positions hold zeros), so the unchanged losses and
  scores (XTR's global top-k, SPLADE's in-batch ranking) see the same tensors as on the stock path.
* ``documents_to_longest`` (ColBERT): documents are padded to the batch's longest instead of PyLate's
  ``document_length`` (512). Padded positions are masked out of every score, so only their cost changes.
* ``fused_splade_pooling`` (SPLADE on NeoBERT): ``max_l log(1 + relu(h_l W^T + b))`` is computed by a custom
  autograd function that holds at most ``splade_chunk_tokens`` x vocabulary logits at a time and keeps only the
  per-(row, term) maximum and its position for the backward pass. The backward touches only those positions
  (rows x vocabulary x hidden work instead of tokens x vocabulary x hidden).

The subclasses change ``forward`` (and ``tokenize`` for ColBERT) only; what they save is what the stock classes
save, so a model trained with the fast paths loads with ``pylate.models.ColBERT`` / ``SparseEncoder``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from pylate import models as pylate_models
from pylate.utils import ColBERTCollator
from sentence_transformers import SparseEncoder

from retrievers.config import SpeedConfig

logger = logging.getLogger(__name__)
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
DOCUMENT_LENGTHS = "document_lengths"


def length_buckets(
    lengths: list[int], token_budget: int, pad_multiple: int, min_efficiency: float, cap: int
) -> list[tuple[list[int], int]]:
    """Rows grouped for micro-forwards: ``[(row indices, width)]`` in ascending length.

    A bucket closes before the row that would push it past ``token_budget`` positions or below
    ``min_efficiency`` (real tokens / positions); its width is its longest row rounded up to ``pad_multiple``
    (at most ``cap``, the batch's padded length)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    buckets: list[tuple[list[int], int]] = []
    rows: list[int] = []
    real = width = 0
    for i in order:
        w = min(cap, -(-max(lengths[i], 1) // pad_multiple) * pad_multiple)
        positions = (len(rows) + 1) * w
        if rows and (positions > token_budget or (real + lengths[i]) / positions < min_efficiency):
            buckets.append((rows, width))
            rows, real = [], 0
        rows.append(i)
        real += lengths[i]
        width = w
    if rows:
        buckets.append((rows, width))
    return buckets


def _bucketed(features: dict, lengths: torch.Tensor, speed: SpeedConfig, encode) -> torch.Tensor:
    """``encode(sub_features)`` over length buckets of ``features``; rows back in their original order."""
    cap = features["input_ids"].shape[1]
    plan = length_buckets(lengths.tolist(), speed.bucket_tokens, speed.pad_multiple, speed.min_bucket_efficiency, cap)
    pieces, order = [], []
    for rows, width in plan:
        index = torch.tensor(rows, device=features["input_ids"].device)
        sub = {key: features[key].index_select(0, index)[:, :width] for key in TEXT_KEYS if key in features}
        pieces.append(encode(sub, width))
        order.extend(rows)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(pieces).index_select(0, inverse.to(pieces[0].device))


def padding_positions(features: dict, speed: SpeedConfig | None, bucketed: bool) -> tuple[int, int]:
    """(real tokens, positions the encoder computes) for one feature batch: a benchmark's padding efficiency."""
    mask = features["attention_mask"]
    real = int(mask.sum())
    if not (speed and speed.length_buckets and bucketed):
        return real, mask.numel()
    lengths = mask.sum(1).tolist()
    plan = length_buckets(lengths, speed.bucket_tokens, speed.pad_multiple, speed.min_bucket_efficiency, mask.shape[1])
    return real, sum(len(rows) * width for rows, width in plan)


class PackedColBERT(pylate_models.ColBERT):
    """PyLate's ColBERT whose document batches are encoded in length-sorted micro-forwards.

    ``tokenize`` marks document batches (a ``document_lengths`` entry) so ``forward`` buckets them; queries,
    padded to ``query_length`` with expansion tokens whose outputs the scores use, are encoded as they are."""

    speed: SpeedConfig = SpeedConfig()

    def tokenize(self, texts, is_query: bool = True, pad: bool = False, task: str | None = None):  # type: ignore[override]  # PyLate's own signature
        if not is_query and self.speed.documents_to_longest:
            pad = False  # pylate pads to document_length when asked to pad; the tokenizer then pads to the longest
        features = super().tokenize(texts, is_query=is_query, pad=pad, task=task)
        if not is_query and (self.speed.length_buckets or self.speed.documents_to_longest):
            features[DOCUMENT_LENGTHS] = features["attention_mask"].sum(1)
        return features

    def forward(self, input: dict, **kwargs) -> dict:  # noqa: A002 - the parent's parameter name
        lengths = input.pop(DOCUMENT_LENGTHS, None)
        if lengths is None or not self.speed.length_buckets:
            return super().forward(input, **kwargs)
        full = input["input_ids"].shape[1]

        def encode(sub: dict, width: int) -> torch.Tensor:
            embeddings = super(PackedColBERT, self).forward(sub, **kwargs)["token_embeddings"]
            return F.pad(embeddings, (0, 0, 0, full - width))

        input["token_embeddings"] = _bucketed(input, lengths, self.speed, encode)
        return input


class PackedColBERTCollator(ColBERTCollator):
    """PyLate's ColBERTCollator for a ``PackedColBERT``: document columns tokenized to their own longest row are
    padded to the longest of all document columns, since the contrastive loss stacks positives and negatives."""

    def __call__(self, features: list[dict]) -> dict:
        batch = super().__call__(features)
        columns = [key[: -len("_input_ids")] for key in batch
                   if key.endswith("_input_ids") and f"{key[: -len('_input_ids')]}_{DOCUMENT_LENGTHS}" in batch]
        width = max((batch[f"{c}_input_ids"].shape[1] for c in columns), default=0)
        for column in columns:
            for key in TEXT_KEYS:
                name = f"{column}_{key}"
                if name in batch and batch[name].shape[1] < width:
                    batch[name] = F.pad(batch[name], (0, width - batch[name].shape[1]), value=0)
        return batch


class _SpladeMaxPool(torch.autograd.Function):
    """``max_l act(mask * (hidden @ W^T + b))`` with act = log1p(relu) (applied twice for ``log1p_relu``)."""

    @staticmethod
    def forward(ctx, hidden, mask, weight, bias, twice: bool, chunk_tokens: int, chunk_elements: int):
        batch, length, _ = hidden.shape
        rows = max(1, chunk_tokens // max(length, 1))
        maxima, argmax = [], []
        for start in range(0, batch, rows):
            logits = F.linear(hidden[start : start + rows], weight, bias)
            logits = logits.masked_fill(~mask[start : start + rows, :, None].bool(), 0.0)  # stock: logits * mask
            values, where = logits.max(dim=1)
            maxima.append(values)
            argmax.append(where)
        z = torch.cat(maxima)
        ctx.save_for_backward(hidden, weight, z, torch.cat(argmax))
        ctx.twice, ctx.chunk_elements, ctx.bias_dtype = twice, chunk_elements, bias.dtype
        out = z.clamp(min=0).log1p()
        return out.log1p() if twice else out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, z, argmax = ctx.saved_tensors
        batch, length, dim = hidden.shape
        vocab = weight.shape[0]
        zf = z.float().clamp(min=0)
        slope = 1.0 / (1.0 + zf)
        if ctx.twice:
            slope = slope / (1.0 + zf.log1p())
        g = grad_out.float() * slope * (z > 0)  # relu'(0) = 0, as autograd has it
        flat_hidden = hidden.reshape(batch * length, dim)
        # (batch, vocab): the row of flat_hidden where each term's maximum is
        where = argmax + torch.arange(batch, device=argmax.device)[:, None] * length
        grad_hidden = torch.zeros(batch * length, dim, dtype=torch.float32, device=hidden.device)
        grad_weight = torch.empty(vocab, dim, dtype=torch.float32, device=weight.device)
        step = max(1, ctx.chunk_elements // max(batch * dim, 1))
        for start in range(0, vocab, step):
            g_chunk = g[:, start : start + step]
            w_chunk = weight[start : start + step].float()
            rows = where[:, start : start + step]
            grad_hidden.index_add_(0, rows.reshape(-1), (g_chunk[:, :, None] * w_chunk[None]).reshape(-1, dim))
            grad_weight[start : start + step] = torch.einsum("bv,bvd->vd", g_chunk, flat_hidden[rows].float())
        grad_bias = g.sum(0)
        return (grad_hidden.view(batch, length, dim).to(hidden.dtype), None, grad_weight.to(weight.dtype),
                grad_bias.to(ctx.bias_dtype), None, None, None)


def splade_max_pool(hidden: torch.Tensor, mask: torch.Tensor, decoder: torch.nn.Linear, twice: bool,
                    chunk_tokens: int = 2048, chunk_elements: int = 1 << 24) -> torch.Tensor:
    """SPLADE max pooling of a linear MLM decoder's activations without the tokens x vocabulary tensor."""
    bias = decoder.bias if decoder.bias is not None else hidden.new_zeros(decoder.out_features)
    return _SpladeMaxPool.apply(hidden, mask, decoder.weight, bias, twice, chunk_tokens, chunk_elements)


class PackedSparseEncoder(SparseEncoder):
    """sentence-transformers' SparseEncoder (MLMTransformer + SpladePooling) with the SPLADE fast paths."""

    speed: SpeedConfig = SpeedConfig()

    def _fusable(self) -> bool:
        from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

        from retrievers.neobert import NeoBERTLMHead

        modules = list(self.children())
        return (len(modules) == 2 and isinstance(modules[0], MLMTransformer) and isinstance(modules[1], SpladePooling)
                and modules[1].pooling_strategy == "max" and isinstance(modules[0].auto_model, NeoBERTLMHead))

    def forward(self, input: dict, **kwargs) -> dict:  # noqa: A002 - the parent's parameter name
        speed = self.speed
        fused = speed.fused_splade_pooling and self._fusable()
        if not (fused or speed.length_buckets) or "input_ids" not in input:
            return super().forward(input, **kwargs)
        from retrievers.neobert import NeoBERTLMHead

        mlm, pooling = self[0], self[1]

        def encode(sub: dict, width: int) -> torch.Tensor:
            if not fused:
                return super(PackedSparseEncoder, self).forward(sub, **kwargs)["sentence_embedding"]
            lm = mlm.auto_model
            assert isinstance(lm, NeoBERTLMHead)  # _fusable checked it
            hidden = lm.model(sub["input_ids"], attention_mask=sub["attention_mask"]).last_hidden_state
            twice = pooling.activation_function == "log1p_relu"
            return splade_max_pool(hidden, sub["attention_mask"], lm.decoder, twice, speed.splade_chunk_tokens)

        if speed.length_buckets:
            embedding = _bucketed(input, input["attention_mask"].sum(1), speed, encode)
        else:
            embedding = encode({key: input[key] for key in TEXT_KEYS if key in input}, input["input_ids"].shape[1])
        input["sentence_embedding"] = embedding
        return input


def with_speed(model, speed: SpeedConfig):
    """Give a Packed* model its phase's switches (an instance attribute; the class default is all off)."""
    model.speed = speed
    return model
