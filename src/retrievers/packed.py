"""Training fast paths that compute exactly what the stock models compute, on fewer token positions.

Three separable layers, each behind a switch in ``phases.<phase>.speed`` (``SpeedConfig``):

* ``length_buckets``: a batch's rows are sorted by length and encoded in micro-forwards, each trimmed to its
  own longest row (rounded up to ``pad_multiple``), so the encoder computes almost only real tokens; the fewest
  micro-forwards that keep ``min_bucket_efficiency`` (a dynamic programme over the sorted rows). The outputs
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

import itertools
import logging

import numpy as np
import torch
import torch.nn.functional as F
from pylate import models as pylate_models
from pylate.utils import ColBERTCollator
from sentence_transformers import SparseEncoder

from retrievers.config import SpeedConfig
from retrievers.models import SavesAsStock
from retrievers.models.sparse_inference import splade_activation

logger = logging.getLogger(__name__)
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
DOCUMENT_LENGTHS = "document_lengths"


def length_buckets(
    lengths: list[int], token_budget: int, pad_multiple: int, min_efficiency: float, cap: int
) -> list[tuple[list[int], int]]:
    """Rows grouped for micro-forwards: ``[(row indices, width)]`` in ascending length.

    A micro-forward's width is its longest row rounded up to ``pad_multiple`` (at most ``cap``, the batch's padded
    length), and it holds at most ``token_budget`` positions (rows x width) unless one row alone is wider. Of the
    groupings of the length-sorted rows, this is one with the fewest micro-forwards whose positions keep the
    batch's real tokens / positions at or above ``min_efficiency``, and of those the fewest positions. Each
    micro-forward costs a pass over the weights (and, in training, a weight gradient the size of the model), so
    fewer, fuller ones are faster than one per width. Where even one micro-forward per width falls short of
    ``min_efficiency`` (the rounding to ``pad_multiple`` alone), that finest grouping is the plan."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    n = len(order)
    if not n:
        return []
    widths = np.array([min(cap, -(-max(lengths[i], 1) // pad_multiple) * pad_multiple) for i in order], np.float64)
    # cost[i, j]: the positions of one micro-forward over sorted rows i..j-1; infinite where i >= j, or where it
    # holds more than one row and breaks the budget.
    first, stop = np.arange(n + 1)[:, None], np.arange(n + 1)[None, :]
    rows = stop - first
    cost = rows * np.concatenate([[0.0], widths])[None, :]
    cost[(rows <= 0) | ((rows > 1) & (cost > token_budget))] = np.inf
    # The positions to reach: real / min_efficiency, or the fewest possible (one micro-forward per row) if more.
    allowed = max(sum(lengths) / min_efficiency, float(widths.sum()))
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    parents = []
    while best[n] > allowed * (1 + 1e-12):  # one more micro-forward: the fewest positions covering rows 0..j-1
        total = best[:, None] + cost
        parent = total.argmin(0)
        best = total[parent, np.arange(n + 1)]
        parents.append(parent)
    bounds = [n]
    for parent in reversed(parents):
        bounds.append(int(parent[bounds[-1]]))
    bounds.reverse()
    return [([order[r] for r in range(a, b)], int(widths[b - 1])) for a, b in itertools.pairwise(bounds)]


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


class PackedColBERT(SavesAsStock, pylate_models.ColBERT):
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


def document_width(ids: list[torch.Tensor], masks: list[torch.Tensor], document_length: int, k_train: int | None,
                   skiplist: list[int]) -> int:
    """The width the document columns of a batch are padded to under ``documents_to_longest``.

    One more than their longest row, so every document keeps a padding position, as at PyLate's
    ``document_length`` (XTR's masked maximum over a document's positions then sees the same 0 of an unretrieved
    position). PyLate's own width when the batch has fewer scored tokens (attended, not in the skiplist) than
    ``k_train``: XTR's top-k then also takes padding positions, and only the stock width gives the stock pool
    (and ``torch.topk`` needs at least ``k_train`` positions)."""
    longest = max(int(m.sum(1).max()) if m.numel() else 0 for m in masks)
    if k_train is not None:
        skip = torch.tensor(skiplist, dtype=ids[0].dtype) if skiplist else None
        scored = sum(int((m.bool() & ~torch.isin(i, skip)).sum()) if skip is not None else int(m.sum())
                     for i, m in zip(ids, masks, strict=True))
        if scored < k_train:
            return document_length
    return min(document_length, longest + 1)


class PackedColBERTCollator(ColBERTCollator):
    """PyLate's ColBERTCollator for a ``PackedColBERT``: document columns tokenized to their own longest row are
    padded to ``document_width`` (one width for all of them, since the contrastive loss stacks positives and
    negatives)."""

    def __init__(self, tokenize_fn, document_length: int = 512, k_train: int | None = None,
                 skiplist: list[int] | None = None, pad_id: int = 0, **kwargs):
        super().__init__(tokenize_fn, **kwargs)
        self.document_length, self.k_train, self.skiplist = document_length, k_train, list(skiplist or [])
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        batch = super().__call__(features)
        columns = [key[: -len("_input_ids")] for key in batch
                   if key.endswith("_input_ids") and f"{key[: -len('_input_ids')]}_{DOCUMENT_LENGTHS}" in batch]
        if not columns:
            return batch
        width = document_width([batch[f"{c}_input_ids"] for c in columns],
                               [batch[f"{c}_attention_mask"] for c in columns],
                               self.document_length, self.k_train, self.skiplist)
        for column in columns:
            for key in TEXT_KEYS:
                name = f"{column}_{key}"
                if name in batch and batch[name].shape[1] < width:
                    value = self.pad_id if key == "input_ids" else 0
                    batch[name] = F.pad(batch[name], (0, width - batch[name].shape[1]), value=value)
        return batch


def _logit_gradient(grad_out: torch.Tensor, z: torch.Tensor, twice: bool) -> torch.Tensor:
    """d loss / d z (float32) through ``splade_activation``; 0 where z <= 0 (relu'(0) = 0, as autograd has it)."""
    zf = z.float().clamp(min=0)
    slope = 1.0 / (1.0 + zf)
    if twice:
        slope = slope / (1.0 + zf.log1p())
    return grad_out.float() * slope * (z > 0)


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
                logits.masked_fill_(~mask[start : start + rows, :, None].bool(), 0.0)  # stock: logits * mask
                values, position = logits.max(dim=1)
                first_row = torch.arange(start, start + values.shape[0], device=position.device)[:, None]
                maxima.append(values)
                where.append(position + first_row * length + offset)  # row of the flattened, concatenated hiddens
            offset += batch * length
        z = torch.cat(maxima)
        ctx.save_for_backward(weight, z, torch.cat(where), *hiddens)
        ctx.twice, ctx.n, ctx.bias_dtype = twice, n, bias.dtype
        return splade_activation(z, twice)

    @staticmethod
    def backward(ctx, grad_out):
        weight, z, where, *hiddens = ctx.saved_tensors
        g = _logit_gradient(grad_out, z, ctx.twice)
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


class _PackedSpladeMaxPool(torch.autograd.Function):
    """What ``_SpladeMaxPool`` computes, over the real tokens only. The attended positions of every micro-forward
    are packed into one (tokens, dim) matrix; the decoder runs over it in chunks of whole rows (about
    ``chunk_tokens`` tokens: large products, no padding positions, no mask pass) and each row's maximum is taken
    over its own tokens. The stock maximum also sees the masked positions' 0, which changes nothing: a row's
    activation is log1p(relu(max)), 0 with a zero gradient whenever the maximum over its real tokens is <= 0.
    A term's bias is the same for every token, so it is added to the row's maximum instead of to every logit
    (rounding is monotone, so max_l fl(x_l + b) = fl(max_l x_l + b); against a product that adds the bias
    inside, as ``F.linear`` does, only the last bit can differ). That saves a pass over the tokens x vocabulary
    product.
    The backward's sparse matrix (one nonzero per (row, term) with a positive maximum) is built directly in
    compressed rows, term-major: each term's nonzeros are its rows in order, whose tokens are in ascending order,
    so no sort is needed (the COO path's ``coalesce``)."""

    @staticmethod
    def forward(ctx, weight, bias, twice: bool, chunk_tokens: int, n: int, *tensors):
        hiddens, masks = tensors[:n], tensors[n:]
        kept = [mask.bool() for mask in masks]
        flat = torch.cat([hidden[keep] for hidden, keep in zip(hiddens, kept, strict=True)])  # rows, then tokens
        lengths = torch.cat([keep.sum(1) for keep in kept]).tolist()
        starts = list(itertools.accumulate(lengths, initial=0))
        vocabulary = weight.shape[0]
        maxima, where = [], []
        first = 0
        while first < len(lengths):
            last = first + 1  # rows first..last-1: at least one, whole rows up to chunk_tokens tokens
            while last < len(lengths) and starts[last + 1] - starts[first] <= chunk_tokens:
                last += 1
            logits = flat[starts[first] : starts[last]] @ weight.t()  # the bias after the maximum (below)
            for row in range(first, last):
                begin = starts[row] - starts[first]
                if lengths[row]:
                    values, position = logits[begin : begin + lengths[row]].max(dim=0)
                    values = values.add_(bias)
                else:  # no attended position: the stock maximum is the masked 0
                    values, position = logits.new_zeros(vocabulary), logits.new_zeros(vocabulary, dtype=torch.long)
                maxima.append(values)
                where.append(position + starts[row])
            first = last
        z = torch.stack(maxima)
        ctx.save_for_backward(weight, z, torch.stack(where), flat, *kept)
        ctx.twice, ctx.n, ctx.bias_dtype = twice, n, bias.dtype
        return splade_activation(z, twice)

    @staticmethod
    def backward(ctx, grad_out):
        weight, z, where, flat, *kept = ctx.saved_tensors
        g = _logit_gradient(grad_out, z, ctx.twice)
        active = (g != 0).t()  # term x row
        rows_of_term = torch.zeros(weight.shape[0] + 1, dtype=torch.long, device=g.device)
        rows_of_term[1:] = active.sum(1).cumsum(0)
        by_term = torch.sparse_csr_tensor(rows_of_term, where.t()[active], g.t()[active],
                                          (weight.shape[0], flat.shape[0]), check_invariants=False)
        grad_weight = by_term @ flat.float()
        grad_flat = (by_term.t().to_sparse_csr() @ weight.float()).to(flat.dtype)
        grad_hiddens, start = [], 0
        for keep in kept:
            grad = grad_flat.new_zeros((*keep.shape, flat.shape[1]))
            count = int(keep.sum())
            grad[keep] = grad_flat[start : start + count]
            grad_hiddens.append(grad)
            start += count
        return (grad_weight.to(weight.dtype), g.sum(0).to(ctx.bias_dtype), None, None, None,
                *grad_hiddens, *([None] * ctx.n))


def splade_max_pool(hiddens: list[torch.Tensor], masks: list[torch.Tensor], decoder: torch.nn.Linear, twice: bool,
                    chunk_tokens: int = 2048, packed: bool = False) -> torch.Tensor:
    """SPLADE max pooling of a linear MLM decoder's activations without the tokens x vocabulary tensor, over the
    micro-forwards ``hiddens`` (with their ``masks``) of one batch; rows in the order of the micro-forwards.
    ``packed``: the decoder over the real tokens only (``_PackedSpladeMaxPool``)."""
    bias = decoder.bias if decoder.bias is not None else hiddens[0].new_zeros(decoder.out_features)
    function = _PackedSpladeMaxPool if packed else _SpladeMaxPool
    return function.apply(decoder.weight, bias, twice, chunk_tokens, len(hiddens), *hiddens, *masks)


class PackedSparseEncoder(SavesAsStock, SparseEncoder):
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
                                 speed.splade_chunk_tokens, packed=speed.packed_splade_pooling)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        input["sentence_embedding"] = pooled.index_select(0, inverse.to(pooled.device))
        return input


def with_speed(model, speed: SpeedConfig):
    """Give a Packed* model its phase's switches (an instance attribute; the class default is all off)."""
    model.speed = speed
    return model


class PretokenizedKDCollator(ColBERTCollator):
    """The batch ``ColBERTCollator`` (or ``PackedColBERTCollator``) makes of KD rows, from token caches
    (``retrievers.data.tokens``): rows hold positions ``{query: int, documents: [n_ways], scores}`` instead of texts
    (``retrievers.data.kd.kd_training_dataset(..., texts=False)``). Queries are padded to ``query_length`` (PyLate's
    query expansion; all attended when ``attend_to_expansion_tokens``), documents to ``document_length`` or, for
    a ``PackedColBERT`` with ``documents_to_longest``, to ``document_width``."""

    def __init__(self, model, queries, documents, k_train: int | None = None):
        from retrievers.data.tokens import plan_for

        super().__init__(model.tokenize)  # the attributes the trainer reads (valid_label_columns, ...)
        self.model, self.queries, self.documents, self.k_train = model, queries, documents, k_train
        module, tokenizer = model._first_module(), model.tokenizer
        self.query_plan = plan_for(module, tokenizer, model.query_length, model.query_prefix_id)
        self.document_plan = plan_for(module, tokenizer, model.document_length, model.document_prefix_id)
        speed = getattr(model, "speed", None)
        self.to_longest = isinstance(model, PackedColBERT) and bool(speed and speed.documents_to_longest)
        self.mark_lengths = isinstance(model, PackedColBERT) and bool(
            speed and (speed.length_buckets or speed.documents_to_longest))

    def __call__(self, features: list[dict]) -> dict:
        from retrievers.data.tokens import pad_rows

        model = self.model
        batch: dict = {"return_loss": True, "label": torch.tensor([row["scores"] for row in features])}
        queries = pad_rows(self.queries, [row["query"] for row in features], self.query_plan,
                           width=model.query_length, attend_all=model.attend_to_expansion_tokens)
        rows = [p for row in features for p in row["documents"]]
        width = model.document_length
        if self.to_longest:
            longest = pad_rows(self.documents, rows, self.document_plan)
            width = document_width([longest["input_ids"]], [longest["attention_mask"]], model.document_length,
                                   self.k_train, list(model.skiplist))
        documents = pad_rows(self.documents, rows, self.document_plan, width=width)
        if self.mark_lengths:
            documents[DOCUMENT_LENGTHS] = documents["attention_mask"].sum(1)
        batch |= {f"query_{k}": v for k, v in queries.items()}
        batch |= {f"documents_{k}": v for k, v in documents.items()}
        return batch
