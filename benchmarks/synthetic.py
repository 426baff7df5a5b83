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
