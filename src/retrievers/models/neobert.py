"""NeoBERT (Le Breton et al., arXiv 2502.19587) as native transformers models, without remote code or xformers.

The module and parameter names match the published checkpoints (chandar-lab/NeoBERT and its fine-tunes), so
their ``model.safetensors`` load as they are:

* ``encoder``: the token embedding; ``transformer_encoder.{i}``: pre-RMSNorm blocks with a fused ``qkv``
  projection (per head: query, key and value side by side), ``wo``, and a SwiGLU ``ffn`` whose ``w12`` packs
  the gate and up projections; ``layer_norm``: the final RMSNorm. No biases in attention or FFN, no dropout.
* RoPE rotates *adjacent* pairs of each head's dimensions (the original ``rotary.py`` views them as complex
  numbers), with theta 10000.
* ``NeoBERTLMHead`` (``model.`` + an untied ``decoder`` Linear with bias) returns ``MaskedLMOutput``, which is
  what sentence-transformers' ``MLMTransformer`` reads.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` with the padding mask.
``import retrievers`` registers the classes with the Auto classes for ``model_type: neobert``; published
``config.json`` files carry an ``auto_map`` to remote code, which is then not needed (transformers prefers a
registered native class when ``trust_remote_code`` is off).

This file imports nothing but torch and transformers: a release bundle carries a copy of it as
``modeling_neobert.py`` with an ``auto_map`` pointing to it (``retrievers.release.add_neobert_code``), so the
bundle loads with ``trust_remote_code=True`` where only sentence-transformers is installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput

ROPE_THETA = 10000.0


class NeoBERTConfig(PretrainedConfig):
    """The published config.json keys; defaults are NeoBERT's published size."""

    model_type = "neobert"

    def __init__(
        self,
        hidden_size: int = 768,
        num_hidden_layers: int = 28,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        embedding_init_range: float = 0.02,
        decoder_init_range: float = 0.02,
        norm_eps: float = 1e-5,
        vocab_size: int = 30522,
        pad_token_id: int = 0,
        max_length: int = 4096,
        **kwargs,
    ):
        kwargs.pop("dim_head", None)  # derived below; published configs store it
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is"
                             f" not a multiple of num_attention_heads {num_attention_heads}")
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.dim_head = hidden_size // num_attention_heads
        self.intermediate_size = intermediate_size
        self.embedding_init_range = embedding_init_range
        self.decoder_init_range = decoder_init_range
        self.norm_eps = norm_eps
        self.vocab_size = vocab_size
        self.max_length = max_length

    @property
    def swiglu_size(self) -> int:
        """SwiGLU hidden width: two thirds of intermediate_size, rounded up to a multiple of 8 (2048 at 3072)."""
        return 8 * -(-int(2 * self.intermediate_size / 3) // 8)


def rope_rotations(length: int, dim_head: int, device: torch.device) -> torch.Tensor:
    """Unit complex numbers [length, dim_head/2]: position p turns pair i by p * theta^(-2i/dim_head)."""
    inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, dim_head, 2, device=device, dtype=torch.float32) / dim_head)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


def rotate_adjacent_pairs(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x`` [batch, length, heads, dim_head]: dims (2i, 2i+1) as one complex number, turned by
    ``rotations`` [length, dim_head/2] (in float32, as the original)."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotations[None, :, None, :]).flatten(-2).type_as(x)


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, inner_size: int):
        super().__init__()
        self.w12 = nn.Linear(hidden_size, 2 * inner_size, bias=False)
        self.w3 = nn.Linear(inner_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * up)


class NeoBERTBlock(nn.Module):
    """x + Attention(RMSNorm(x)), then + SwiGLU(RMSNorm(.))."""

    def __init__(self, config: NeoBERTConfig):
        super().__init__()
        self.heads, self.dim_head = config.num_attention_heads, config.dim_head
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.wo = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.ffn = SwiGLU(config.hidden_size, config.swiglu_size)
        self.attention_norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.ffn_norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None, rotations: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(batch, length, self.heads, 3 * self.dim_head).chunk(3, dim=-1)
        q, k = rotate_adjacent_pairs(q, rotations), rotate_adjacent_pairs(k, rotations)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attention_mask
        )
        x = x + self.wo(attended.transpose(1, 2).reshape(batch, length, self.heads * self.dim_head))
        return x + self.ffn(self.ffn_norm(x))


class NeoBERTPreTrainedModel(PreTrainedModel):
    config_class = NeoBERTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["NeoBERTBlock"]

    def _init_weights(self, module: nn.Module) -> None:
        # As the original: uniform, decoder_init_range for every Linear, embedding_init_range for the embedding.
        if isinstance(module, nn.Linear):
            r = self.config.decoder_init_range
            init.uniform_(module.weight, -r, r)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            r = self.config.embedding_init_range
            init.uniform_(module.weight, -r, r)
        elif isinstance(module, nn.RMSNorm):
            init.ones_(module.weight)


class NeoBERT(NeoBERTPreTrainedModel):
    """The encoder: token embedding, blocks, final RMSNorm -> ``last_hidden_state``."""

    def __init__(self, config: NeoBERTConfig):
        super().__init__(config)
        self.encoder = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.transformer_encoder = nn.ModuleList(NeoBERTBlock(config) for _ in range(config.num_hidden_layers))
        self.layer_norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.encoder = value  # type: ignore[assignment]  # transformers types the argument as Module

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        inputs_embeds: torch.Tensor | None = None,
        **_unused,  # token_type_ids from BERT tokenizers: NeoBERT has no segment embedding
    ) -> BaseModelOutput:
        x = self.encoder(input_ids) if inputs_embeds is None else inputs_embeds
        # [batch, 1, 1, length] booleans, True where a key may be attended to (padding is not).
        mask = attention_mask.bool()[:, None, None, :] if attention_mask is not None else None
        rotations = rope_rotations(x.shape[1], self.config.dim_head, x.device)
        hidden_states = [x] if output_hidden_states else None
        for block in self.transformer_encoder:
            x = block(x, mask, rotations)
            if hidden_states is not None:
                hidden_states.append(x)
        x = self.layer_norm(x)
        return BaseModelOutput(last_hidden_state=x, hidden_states=tuple(hidden_states) if hidden_states else None)  # type: ignore[arg-type]


class NeoBERTLMHead(NeoBERTPreTrainedModel):
    """NeoBERT with its masked-language-model decoder (untied, with bias, no transform before it)."""

    def __init__(self, config: NeoBERTConfig):
        super().__init__(config)
        self.model = NeoBERT(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.encoder

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.decoder = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        **_unused,
    ) -> MaskedLMOutput:
        output = self.model(input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)
        logits = self.decoder(output.last_hidden_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=output.hidden_states)  # type: ignore[arg-type]


def register() -> None:
    """Make AutoConfig / AutoModel / AutoModelForMaskedLM resolve ``model_type: neobert`` to these classes
    (done on import of this module, which ``import retrievers`` arranges once transformers is imported)."""
    AutoConfig.register("neobert", NeoBERTConfig, exist_ok=True)
    AutoModel.register(NeoBERTConfig, NeoBERT, exist_ok=True)
    AutoModelForMaskedLM.register(NeoBERTConfig, NeoBERTLMHead, exist_ok=True)


# Registered only as this package's module: a bundle's copy, loaded by transformers as remote code, is found
# through the bundle's auto_map and must not take over model_type "neobert" for every later load.
if __name__.split(".")[0] == "retrievers":
    register()
