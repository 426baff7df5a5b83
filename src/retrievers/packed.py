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
  per-(row, term) maximum and its position for the backward pass. The backward is two sparse x dense products
  over those positions (active terms x hidden work instead of tokens x vocabulary x hidden).

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


class _SavesAsStock:
    """Saved folders name the stock class (``model_type`` in config_sentence_transformers.json), so the stock
    loaders load them as themselves; folders the stock class saved load into the subclass the same way."""

    stock_name: str

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._model_config["model_type"] = self.stock_name

    def _get_model_type(self, *args, **kwargs) -> str:
        found = super()._get_model_type(*args, **kwargs)  # type: ignore[misc]  # a SentenceTransformer method
        return type(self).__name__ if found == self.stock_name else found


class PackedColBERT(_SavesAsStock, pylate_models.ColBERT):
    """PyLate's ColBERT whose document batches are encoded in length-sorted micro-forwards.

    ``tokenize`` marks document batches (a ``document_lengths`` entry) so ``forward`` buckets them; queries,
    padded to ``query_length`` with expansion tokens whose outputs the scores use, are encoded as they are."""

    speed: SpeedConfig = SpeedConfig.stock()
    stock_name = "ColBERT"

    def tokenize(self, texts, is_query: bool = True, pad: bool = False, task: str | None = None):  # type: ignore[override]  # PyLate's own signature
        if not is_query and self.speed.documents_to_longest:
            pad = False  # pylate pads to document_length when asked to pad; the tokenizer then pads to the longest
        features = super().tokenize(texts, is_query=is_query, pad=pad, task=task)
        if not is_query and (self.speed.length_buckets or self.speed.documents_to_longest):
            features[DOCUMENT_LENGTHS] = features["attention_mask"].sum(1)
        return features

    def forward(self, input: dict, **kwargs) -> dict:  # noqa: A002 - the parent's parameter name
        lengths = input.pop(DOCUMENT_LENGTHS, None)
        # Training only: encode() already batches documents sorted by length, and splitting its batches again
        # measured slower (benchmarks/train_throughput.py --encode).
        if lengths is None or not self.speed.length_buckets or not self.training:
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
    """``max_l act(mask * (hidden @ W^T + b))`` per row, act = log1p(relu) (twice for ``log1p_relu``), over the
    micro-forwards of one batch at once: ``hiddens[k]`` (rows_k, width_k, dim) with ``masks[k]``; output rows in
    bucket order. One call per batch gives one vocabulary x hidden weight gradient, not one per micro-forward."""

    @staticmethod
    def forward(ctx, weight, bias, twice: bool, chunk_tokens: int, n: int, *tensors):
        hiddens, masks = tensors[:n], tensors[n:]
        maxima, where, offset = [], [], 0
        for hidden, mask in zip(hiddens, masks, strict=True):
            batch, length, _ = hidden.shape
            rows = max(1, chunk_tokens // max(length, 1))
            for start in range(0, batch, rows):
                logits = F.linear(hidden[start : start + rows], weight, bias)
                logits = logits.masked_fill(~mask[start : start + rows, :, None].bool(), 0.0)  # stock: logits * mask
                values, position = logits.max(dim=1)
                first_row = torch.arange(start, start + values.shape[0], device=position.device)[:, None]
                maxima.append(values)
                where.append(position + first_row * length + offset)  # row of the flattened, concatenated hiddens
            offset += batch * length
        z = torch.cat(maxima)
        ctx.save_for_backward(weight, z, torch.cat(where), *hiddens)
        ctx.twice, ctx.n, ctx.bias_dtype = twice, n, bias.dtype
        out = z.clamp(min=0).log1p()
        return out.log1p() if twice else out

    @staticmethod
    def backward(ctx, grad_out):
        weight, z, where, *hiddens = ctx.saved_tensors
        zf = z.float().clamp(min=0)
        slope = 1.0 / (1.0 + zf)
        if ctx.twice:
            slope = slope / (1.0 + zf.log1p())
        g = grad_out.float() * slope * (z > 0)  # relu'(0) = 0, as autograd has it
        dim = weight.shape[1]
        flat = torch.cat([h.reshape(-1, dim) for h in hiddens]).float()
        # One nonzero per (row, term) with a positive maximum, at the token of that maximum: the gradient of the
        # pooled activations w.r.t. the logits, as a tokens x vocabulary sparse matrix.
        rows, terms = (g != 0).nonzero(as_tuple=True)
        sparse = torch.sparse_coo_tensor(torch.stack([where[rows, terms], terms]), g[rows, terms],
                                         (flat.shape[0], weight.shape[0]), check_invariants=False).coalesce()
        grad_flat = torch.sparse.mm(sparse, weight.float())
        grad_weight = torch.sparse.mm(sparse.t(), flat)
        grad_hiddens = [piece.view(h.shape).to(h.dtype)
                        for piece, h in zip(grad_flat.split([h.shape[0] * h.shape[1] for h in hiddens]), hiddens,
                                            strict=True)]
        return (grad_weight.to(weight.dtype), g.sum(0).to(ctx.bias_dtype), None, None, None,
                *grad_hiddens, *([None] * ctx.n))


def splade_max_pool(hiddens: list[torch.Tensor], masks: list[torch.Tensor], decoder: torch.nn.Linear, twice: bool,
                    chunk_tokens: int = 2048) -> torch.Tensor:
    """SPLADE max pooling of a linear MLM decoder's activations without the tokens x vocabulary tensor, over the
    micro-forwards ``hiddens`` (with their ``masks``) of one batch; rows in the order of the micro-forwards."""
    bias = decoder.bias if decoder.bias is not None else hiddens[0].new_zeros(decoder.out_features)
    return _SpladeMaxPool.apply(decoder.weight, bias, twice, chunk_tokens, len(hiddens), *hiddens, *masks)


class PackedSparseEncoder(_SavesAsStock, SparseEncoder):
    """sentence-transformers' SparseEncoder (MLMTransformer + SpladePooling) with the SPLADE fast paths."""

    speed: SpeedConfig = SpeedConfig.stock()
    stock_name = "SparseEncoder"

    def _fusable(self) -> bool:
        from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

        from retrievers.models.neobert import NeoBERTLMHead

        modules = list(self.children())
        return (len(modules) == 2 and isinstance(modules[0], MLMTransformer) and isinstance(modules[1], SpladePooling)
                and modules[1].pooling_strategy == "max" and isinstance(modules[0].auto_model, NeoBERTLMHead))

    def forward(self, input: dict, **kwargs) -> dict:  # noqa: A002 - the parent's parameter name
        speed = self.speed
        fused = speed.fused_splade_pooling and self._fusable()
        if not (fused or speed.length_buckets) or "input_ids" not in input:
            return super().forward(input, **kwargs)
        from retrievers.models.neobert import NeoBERTLMHead

        mlm, pooling = self[0], self[1]
        if not fused:
            def encode(sub: dict, width: int) -> torch.Tensor:
                return super(PackedSparseEncoder, self).forward(sub, **kwargs)["sentence_embedding"]

            input["sentence_embedding"] = _bucketed(input, input["attention_mask"].sum(1), speed, encode)
            return input
        lm = mlm.auto_model
        assert isinstance(lm, NeoBERTLMHead)  # _fusable checked it
        ids, mask = input["input_ids"], input["attention_mask"]
        if speed.length_buckets:
            plan = length_buckets(mask.sum(1).tolist(), speed.bucket_tokens, speed.pad_multiple,
                                  speed.min_bucket_efficiency, ids.shape[1])
        else:
            plan = [(list(range(ids.shape[0])), ids.shape[1])]
        # The token embedding once for the batch: one vocabulary-sized embedding gradient, not one per micro-forward.
        embeds = lm.model.get_input_embeddings()(ids)
        hiddens, masks, order = [], [], []
        for rows, width in plan:
            index = torch.tensor(rows, device=ids.device)
            sub_mask = mask.index_select(0, index)[:, :width]
            hiddens.append(lm.model(inputs_embeds=embeds.index_select(0, index)[:, :width],
                                    attention_mask=sub_mask).last_hidden_state)
            masks.append(sub_mask)
            order.extend(rows)
        pooled = splade_max_pool(hiddens, masks, lm.decoder, pooling.activation_function == "log1p_relu",
                                 speed.splade_chunk_tokens)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        input["sentence_embedding"] = pooled.index_select(0, inverse.to(pooled.device))
        return input


def with_speed(model, speed: SpeedConfig):
    """Give a Packed* model its phase's switches (an instance attribute; the class default is all off)."""
    model.speed = speed
    return model
