"""Native NeoBERT: the published checkpoint layout, one block against the equations, save/load, SPLADE use."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

import retrievers  # noqa: F401  (registers model_type "neobert" with the Auto classes)
from retrievers.models.neobert import NeoBERTBlock, NeoBERTConfig, NeoBERTLMHead, rope_rotations

from .conftest import published

TOKENIZER = Path(__file__).parent.parent / "fixtures" / "tokenizer"


def published_layout(layers: int = 28, hidden: int = 768, ffn: int = 2048, vocab: int = 30522) -> dict:
    """The NeoBERTLMHead state dict of chandar-lab/NeoBERT, written out from its safetensors listing."""
    layout = {"model.encoder.weight": (vocab, hidden)}
    for i in range(layers):
        block = f"model.transformer_encoder.{i}."
        layout |= {
            block + "qkv.weight": (3 * hidden, hidden),
            block + "wo.weight": (hidden, hidden),
            block + "ffn.w12.weight": (2 * ffn, hidden),
            block + "ffn.w3.weight": (hidden, ffn),
            block + "attention_norm.weight": (hidden,),
            block + "ffn_norm.weight": (hidden,),
        }
    return layout | {"model.layer_norm.weight": (hidden,), "decoder.weight": (vocab, hidden), "decoder.bias": (vocab,)}


def tiny_config(**overrides) -> NeoBERTConfig:
    values = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
    return NeoBERTConfig(**(values | overrides))


def test_full_size_state_dict_matches_the_published_checkpoint():
    with torch.device("meta"):
        model = NeoBERTLMHead(NeoBERTConfig())
    ours = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    assert ours == published_layout()
    assert all(t.is_meta for t in model.state_dict().values()), "built without allocating the weights"


def reference_block(x, mask, weights, heads, eps):
    """One NeoBERT block from the equations: pre-RMSNorm, per-head [q|k|v] slices of the fused projection,
    RoPE on adjacent dimension pairs as complex rotations, softmax attention over non-padded keys, SwiGLU."""

    def rms_norm(h, gain):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * gain

    batch, length, hidden = x.shape
    d = hidden // heads
    qkv = (rms_norm(x, weights["attention_norm.weight"]) @ weights["qkv.weight"].T).reshape(batch, length, heads, 3 * d)
    q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
    frequencies = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rotation = torch.polar(torch.ones(length, d // 2, dtype=torch.float64),
                           torch.arange(length, dtype=torch.float64)[:, None] * frequencies)

    def rope(t):
        pairs = torch.view_as_complex(t.reshape(batch, length, heads, d // 2, 2).contiguous())
        return torch.view_as_real(pairs * rotation[None, :, None, :]).reshape(batch, length, heads, d)

    q, k = rope(q), rope(k)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    attended = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(batch, length, hidden)
    x = x + attended @ weights["wo.weight"].T
    gate_up = rms_norm(x, weights["ffn_norm.weight"]) @ weights["ffn.w12.weight"].T
    gate, up = gate_up[..., : gate_up.shape[-1] // 2], gate_up[..., gate_up.shape[-1] // 2 :]
    return x + (gate * torch.sigmoid(gate) * up) @ weights["ffn.w3.weight"].T


def test_one_block_matches_the_equations_on_random_weights():
    torch.manual_seed(0)
    config = tiny_config()
    block = NeoBERTBlock(config).double()
    with torch.no_grad():
        for param in block.parameters():
            param.normal_(0, 0.3)  # norms included: a gain of 1 would hide a missing multiplication
    x = torch.randn(2, 9, config.hidden_size, dtype=torch.float64)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False  # padding in the second sequence
    weights = {name: p.detach() for name, p in block.named_parameters()}
    expected = reference_block(x, mask, weights, config.num_attention_heads, config.norm_eps)
    with torch.no_grad():
        ours = block(x, mask[:, None, None, :], rope_rotations(9, config.dim_head, x.device))
    # RoPE runs in float32 as in the original (float64 elsewhere here): agreement to ~1e-8, not to 1e-15.
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_padding_does_not_change_the_real_tokens():
    torch.manual_seed(0)
    model = NeoBERTLMHead(tiny_config()).eval()
    ids = torch.randint(5, 97, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    with torch.no_grad():
        alone = model(ids).logits
        with_padding = model(padded, attention_mask=mask).logits[:, :6]
    torch.testing.assert_close(with_padding, alone, rtol=1e-5, atol=1e-5)


def test_save_and_load_round_trip_through_the_auto_classes(tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    torch.manual_seed(0)
    model = NeoBERTLMHead(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    # As published: config.json points at remote code; with trust_remote_code off the native class is used.
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config["auto_map"] = {"AutoConfig": "model.NeoBERTConfig", "AutoModelForMaskedLM": "model.NeoBERTLMHead"}
    config_file.write_text(json.dumps(config))
    assert AutoConfig.from_pretrained(tmp_path).model_type == "neobert"
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert type(loaded) is NeoBERTLMHead
    ids = torch.randint(5, 97, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    base = AutoModel.from_pretrained(tmp_path)  # the encoder alone, from the LM checkpoint's `model.` weights
    torch.testing.assert_close(base.encoder.weight, model.model.encoder.weight)


def test_sparse_encoder_on_neobert_encodes_and_reloads_with_the_stock_loader(tmp_path):
    from sentence_transformers import SparseEncoder
    from transformers import AutoTokenizer

    from retrievers.config import SpladeConfig
    from retrievers.train.splade import build_splade

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    base = tmp_path / "base"
    NeoBERTLMHead(tiny_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    model = build_splade(base, SpladeConfig(**published("phases", "neobert-splade", "splade", max_seq_length=32)))
    texts = ["the of and a in", "is to for with on as by at from that this"]
    vectors = model.encode(texts, convert_to_tensor=True)
    assert vectors.shape == (2, len(tokenizer))
    assert vectors.is_sparse and float(vectors.to_dense().min()) >= 0
    dense = vectors.to_dense()
    # SPLADE over the native model: max over real (non-padded) tokens of log(1 + relu(MLM logits)).
    mlm = model[0].auto_model
    assert type(mlm) is NeoBERTLMHead
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = mlm(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    weights = torch.log1p(torch.relu(logits)) * batch["attention_mask"][..., None]
    torch.testing.assert_close(dense, weights.max(dim=1).values, rtol=1e-4, atol=1e-5)
    model.save_pretrained(str(tmp_path / "splade"))
    reloaded = SparseEncoder(str(tmp_path / "splade"))
    torch.testing.assert_close(reloaded.encode(texts, convert_to_tensor=True).to_dense(), dense)


def test_import_retrievers_registers_neobert_without_importing_transformers_itself():
    """`import retrievers` stays cheap (no transformers) yet Auto classes know NeoBERT once transformers loads."""
    import subprocess
    import sys

    code = (
        "import sys, retrievers; loaded = 'transformers' in sys.modules\n"
        "from transformers import AutoConfig, AutoModelForMaskedLM\n"
        "config = AutoConfig.for_model('neobert', hidden_size=16, num_hidden_layers=1, num_attention_heads=2,"
        " intermediate_size=32, vocab_size=40)\n"
        "print(loaded, type(AutoModelForMaskedLM.from_config(config)).__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "NeoBERTLMHead"]
