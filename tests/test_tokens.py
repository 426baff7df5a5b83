"""The pre-tokenised data path (retrievers.data.tokens) gives the tensors the stock collators give.

On the fixture's KD tables (with the trainers' own datasets) and on synthetic MS MARCO-like texts (stray
whitespace, upper case, non-ASCII, passages past the length limit): PyLate's ColBERTCollator (with and without
prefixes; PackedColBERT's documents padded to the longest) and sentence-transformers' SparseEncoderDataCollator
(through KDTripletCollator's draw) against the collators that pad cached ids. Same keys in the same order, equal
input_ids, attention_mask and token_type_ids, equal labels."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from retrievers.config import SpeedConfig, SpladeConfig
from retrievers.data.kd import kd_rows, kd_training_dataset, load_kd_tables

from .conftest import REPO, published

KD = REPO / "fixtures" / "datasets" / "tiny-ms-marco-en-bge-gemma"
TINY_MODERNBERT = REPO / "fixtures" / "models" / "tiny-modernbert"
TINY_NEOBERT = REPO / "fixtures" / "models" / "tiny-neobert"


def _assert_same_batch(expected: dict, got: dict) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype, key
            assert torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


def _synthetic_tables(vocabulary: list[str], seed: int):
    """KDTables-like queries and documents of MS MARCO-like lengths (queries 4-14 words, passages log-normal around
    56 words, clipped 8..400), with the oddities the tokenisation must treat as the stock path does."""
    from datasets import Dataset

    from retrievers.data.kd import KDTables

    rng = random.Random(seed)

    def text(words: int) -> str:
        body = " ".join(rng.choice(vocabulary) for _ in range(words))
        return rng.choice(["", "  ", "\t"]) + rng.choice([body, body.upper(), body + " naïve café 東京"]) + " \n"

    queries = [text(rng.randint(4, 14)) for _ in range(40)]
    documents = [text(min(400, max(8, int(rng.lognormvariate(4.0, 0.5))))) for _ in range(300)]
    return KDTables(queries=Dataset.from_dict({"text": queries}), documents=Dataset.from_dict({"text": documents}),
                    train=None)


def _kd_rows_synthetic(n_queries: int, n_documents: int, n_ways: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"query": rng.randrange(n_queries), "documents": rng.sample(range(n_documents), n_ways),
             "scores": [rng.random() for _ in range(n_ways)]} for _ in range(8)]


@pytest.mark.parametrize("prefixes", [("", ""), ("[Q] ", "[D] ")])
@pytest.mark.parametrize("packed", [False, True])
def test_pretokenized_colbert_kd_batches_equal_pylate_collator(tmp_path, prefixes, packed):
    from pylate import models
    from transformers import AutoTokenizer

    from retrievers.models.colbert import colbert_collator, pretokenized_kd_collator
    from retrievers.packed import PackedColBERT, with_speed

    cls = PackedColBERT if packed else models.ColBERT
    model = cls(model_name_or_path=str(TINY_MODERNBERT), embedding_size=16, query_length=12, document_length=48,
                query_prefix=prefixes[0], document_prefix=prefixes[1], device="cpu")
    if packed:
        with_speed(model, SpeedConfig.stock().model_copy(update={"length_buckets": True, "documents_to_longest": True}))
    k_train = 24
    # The fixture: the trainer's dataset with texts, and the one with positions, row for row.
    tables = load_kd_tables(KD, "train")
    texts = kd_training_dataset(tables, 4, 16)
    positions = kd_training_dataset(tables, 4, 16, texts=False)
    stock = colbert_collator(model, k_train)
    fast = pretokenized_kd_collator(model, tables, tmp_path / "tokens", k_train)
    for start in (0, 8):
        rows = list(range(start, start + 8))
        _assert_same_batch(stock([texts[i] for i in rows]), fast([positions[i] for i in rows]))
    # Synthetic MS MARCO-like texts, long passages truncated at document_length.
    vocabulary = [w for w in AutoTokenizer.from_pretrained(TINY_MODERNBERT).get_vocab() if w.isalpha()]
    synthetic = _synthetic_tables(vocabulary, 1)
    fast = pretokenized_kd_collator(model, synthetic, tmp_path / "tokens", k_train)
    for seed in range(3):
        rows = _kd_rows_synthetic(40, 300, 4, seed)
        as_texts = [{"query": synthetic.queries[r["query"]]["text"],
                     "documents": [synthetic.documents[d]["text"] for d in r["documents"]],
                     "scores": r["scores"]} for r in rows]
        _assert_same_batch(stock(as_texts), fast(rows))


def test_pretokenized_splade_batches_equal_the_sentence_transformers_collator(tmp_path):
    from transformers import AutoTokenizer

    from retrievers.models.splade import build_splade
    from retrievers.train.splade import KDTripletCollator, pretokenized_collator

    splade = SpladeConfig(**published("phases", "neobert-splade", "splade", max_seq_length=40))
    model = build_splade(TINY_NEOBERT, splade)
    tables = load_kd_tables(KD, "train_unormalized")
    train, _ = kd_rows(tables, 8, seed=3)
    arguments = dict(tokenize_fn=model.tokenize, tables=tables, n_negatives=2, seed=5, router_mapping={},
                     prompts={}, all_special_ids=set(model.tokenizer.all_special_ids))
    stock, fast = KDTripletCollator(**arguments), pretokenized_collator(model, tables, arguments, tmp_path / "tokens")
    fast.documents = pickle.loads(pickle.dumps(fast.documents))  # as a spawned worker gets it: reopened, not copied
    assert isinstance(fast.documents.ids, np.memmap)
    for epoch in range(2):  # the same draws, also after the epoch reseed
        stock.set_epoch_seed(epoch)
        fast.set_epoch_seed(epoch)
        for start in range(0, 24, 8):
            rows = [train[i] for i in range(start, start + 8)]
            _assert_same_batch(stock(rows), fast(rows))
            assert fast.checkpoint_state() == stock.checkpoint_state()  # what a resumed run restores the draws from
    assert stock.checkpoint_state()["batches"] == 3
    # Synthetic texts: the same tokenisation of the same draws.
    vocabulary = [w for w in AutoTokenizer.from_pretrained(TINY_NEOBERT).get_vocab() if w.isalpha()]
    synthetic = _synthetic_tables(vocabulary, 2)
    stock = KDTripletCollator(**(arguments | {"tables": synthetic}))
    fast = pretokenized_collator(model, synthetic, arguments | {"tables": synthetic}, tmp_path / "tokens")
    rng = random.Random(0)
    rows = [{"scores": [rng.random() for _ in range(6)],
             "positions": {"query": rng.randrange(40), "documents": rng.sample(range(300), 6)}} for _ in range(12)]
    _assert_same_batch(stock(rows), fast(rows))


def test_token_cache_is_keyed_by_what_the_ids_depend_on(tmp_path):
    from transformers import AutoTokenizer

    from retrievers.data.tokens import TokenPlan

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODERNBERT)
    other = AutoTokenizer.from_pretrained(TINY_MODERNBERT)
    other.add_tokens(["retrieverstoken"])
    plan = TokenPlan(max_length=32, prefix_id=None, lowercase=False, pad_id=0, token_types=False,
                     input_names=("input_ids", "attention_mask"))
    keys = {plan.key(tokenizer, "table-a"), plan.key(tokenizer, "table-b"),
            TokenPlan(**(plan.__dict__ | {"max_length": 31})).key(tokenizer, "table-a"),
            TokenPlan(**(plan.__dict__ | {"prefix_id": 5})).key(tokenizer, "table-a"),
            TokenPlan(**(plan.__dict__ | {"lowercase": True})).key(tokenizer, "table-a"),
            plan.key(other, "table-a")}
    assert len(keys) == 6
