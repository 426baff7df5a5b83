"""Synthetic corpora and tiny models for the index benchmarks (benchmarks/index_recall.py, index_stream.py).

- ``msmarco_lengths``: passage lengths in words like MS MARCO's passages (mean about 56 words, a long right tail).
- ``fixture_words``: the words of the fixture's corpora, which the fixture's tiny tokenizer has whole (one token
  each), so a passage of them is as many tokens as words.
- ``write_corpus``: a jsonl corpus of passages drawn from a word list, seeded, written a slice at a time.
- ``tiny_splade``: the smallest SPLADE model the repository makes: the fixture's tiny NeoBERT (2 layers x 64,
  381-token vocabulary, 480 KB of weights), untrained SPLADE head (max pooling), in seconds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SETS = ("tiny-NanoMSMARCO", "tiny-NanoSciFact", "tiny-NanoNFCorpus")
MSMARCO_MEAN_WORDS = 56


def msmarco_lengths(rng: np.random.Generator, n: int) -> np.ndarray:
    """Words per passage: lognormal with mean ~56 and median ~50, clipped to 8..200 (MS MARCO passages)."""
    sigma = 0.45
    mu = np.log(MSMARCO_MEAN_WORDS) - sigma**2 / 2
    return np.clip(np.round(rng.lognormal(mu, sigma, size=n)), 8, 200).astype(int)


def fixture_words() -> list[str]:
    """Every word occurrence of the fixture's three corpora (so frequent words stay frequent)."""
    import pyarrow.parquet as pq

    return [w for name in SETS for row in pq.read_table(
        next((REPO / "fixtures" / "datasets" / name / "corpus").glob("*.parquet"))).to_pylist()
        for w in row["text"].split()]


def write_corpus(path: Path, passages: int, words: Sequence[str], seed: int = 0,
                 probabilities: np.ndarray | None = None) -> Path:
    """``passages`` rows {"id": "p<i>", "text"} of MS MARCO-like length, words drawn (with ``probabilities``,
    else uniformly) from ``words``; written once (kept if it exists)."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    vocabulary = np.array(words)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as out:
        for start in range(0, passages, 10_000):
            lengths = msmarco_lengths(rng, min(10_000, passages - start))
            drawn = rng.choice(len(vocabulary), size=int(lengths.sum()), p=probabilities)
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            for i, (a, b) in enumerate(zip(offsets[:-1], offsets[1:], strict=True), start):
                out.write(json.dumps({"id": f"p{i}", "text": " ".join(vocabulary[drawn[a:b]])}) + "\n")
    os.replace(tmp, path)
    return path


def tiny_splade(folder: Path, max_seq_length: int = 256) -> Path:
    """An untrained SPLADE model on the fixture's tiny NeoBERT (what tests/conftest.py's ``tiny_splade`` builds,
    with room for MS MARCO-length passages)."""
    if (folder / "modules.json").exists():
        return folder
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    import retrievers  # noqa: F401  (native NeoBERT)

    SparseEncoder(modules=[MLMTransformer(str(REPO / "fixtures" / "models" / "tiny-neobert"),
                                          max_seq_length=max_seq_length), SpladePooling("max")],
                  device="cpu").save(str(folder))
    return folder


# --------------------------------------------------------------- a sparse model with a realistic vocabulary
REALISTIC_VOCABULARY = 30522  # bert-base-uncased's, as NeoBERT's
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def zipf_words(distinct: int = 60_000, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """(``distinct`` made-up words of 1-4 syllables, their Zipf-Mandelbrot probabilities p(rank) ~ 1/(rank+2.7)):
    word frequencies shaped like English's."""
    rng = np.random.default_rng(seed)
    words: dict[str, None] = {}
    while len(words) < distinct:
        words["".join(rng.choice(SYLLABLES, size=rng.integers(1, 5)))] = None
    weights = 1.0 / (np.arange(distinct) + 2.7)
    return list(words), weights / weights.sum()


def sparse_splade(folder: Path, vocab_size: int = REALISTIC_VOCABULARY, active_cosine: float = 0.45,
                  max_seq_length: int = 256, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> Path:
    """A SPLADE model whose vectors are sparse as a trained SPLADE's are, over a vocabulary of bert's size.

    Not trained: a randomly initialised tiny NeoBERT (``layers`` x ``hidden_size``, default 2 x 64) whose
    WordPiece vocabulary is the special tokens, single characters and the most frequent ``zipf_words`` (rarer
    words split into characters, as rare words do in bert's), with its MLM decoder set to the normalised input
    embeddings and a bias, so that a token activates the terms whose embedding is within ``active_cosine`` of its
    final hidden state (itself, a few others, and what attention mixes in) and nothing else; SPLADE's max pooling
    then gives a document a few hundred of 30,522 terms and a query a few dozen. The smaller the hidden size, the
    wider random cosines spread:
    the 100,000-passage index benchmark uses 1 x 16 with ``active_cosine`` 0.8 (measured on 256 Zipf passages:
    125 terms per passage, 12 per 4-word query; 0.7 gave 1,193 per passage; 199 passages per CPU-second on one
    thread with ``retrievers.models.sparse_inference``)."""
    if (folder / "modules.json").exists():
        return folder
    import sys

    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    sys.path.insert(0, str(REPO))
    from retrievers.models.neobert import NeoBERTConfig, NeoBERTLMHead
    from tools.fixture import save_wordpiece_tokenizer

    base = folder / "mlm"
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    words, _ = zipf_words(seed=seed)
    vocabulary += [w for w in words if w not in set(vocabulary)][: vocab_size - len(vocabulary)]
    save_wordpiece_tokenizer(vocabulary, base)
    torch.manual_seed(seed)
    config = NeoBERTConfig(hidden_size=hidden_size, num_hidden_layers=layers,
                           num_attention_heads=max(1, hidden_size // 16), intermediate_size=2 * hidden_size,
                           vocab_size=len(vocabulary), max_length=512, pad_token_id=0)
    model = NeoBERTLMHead(config)
    with torch.no_grad():
        embedding = model.model.encoder.weight
        unit = embedding / embedding.norm(dim=1, keepdim=True)
        scale = 4.0  # the final RMSNorm makes |h| = sqrt(hidden): logit = scale * sqrt(hidden) * cos(h, e_term) + bias
        model.decoder.weight.copy_(scale * unit)
        model.decoder.bias.fill_(-scale * config.hidden_size**0.5 * active_cosine)
    model.save_pretrained(base)
    SparseEncoder(modules=[MLMTransformer(str(base), max_seq_length=max_seq_length), SpladePooling("max")],
                  device="cpu").save(str(folder))
    return folder


def write_zipf_corpus(path: Path, passages: int, seed: int = 0) -> Path:
    """MS MARCO-length passages of ``zipf_words`` drawn by their frequencies."""
    words, probabilities = zipf_words(seed=seed)
    return write_corpus(path, passages, words, seed=seed + 1, probabilities=probabilities)
