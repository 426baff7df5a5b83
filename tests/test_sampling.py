"""The scan-free no-duplicates sampler (retrievers.sampling) yields sentence-transformers' NoDuplicatesBatchSampler
batches for the same seed and epoch: on the fixture's SPLADE rows (the trainer's split, with its indices mapping)
and on rows full of duplicates (shared queries, shared document lists, values equal across columns)."""

from __future__ import annotations

import random

import pytest
import torch
from sentence_transformers.sampler import NoDuplicatesBatchSampler

from retrievers.data.kd import kd_rows, load_kd_tables
from retrievers.sampling import ScanFreeNoDuplicatesBatchSampler

from .conftest import REPO

KD = REPO / "fixtures" / "datasets" / "tiny-ms-marco-en-bge-gemma"


def _batches(cls, dataset, batch_size: int, drop_last: bool, epoch: int) -> list[list[int]]:
    sampler = cls(dataset, batch_size=batch_size, drop_last=drop_last, valid_label_columns=["label", "scores"],
                  generator=torch.Generator(), seed=42)
    sampler.set_epoch(epoch)
    return list(sampler)


def _duplicated_rows(n: int, seed: int):
    from datasets import Dataset

    rng = random.Random(seed)
    return Dataset.from_dict({
        "query": [f"q{rng.randrange(n // 3)}" for _ in range(n)],
        "positive": [rng.choice([f"d{rng.randrange(n)}", f"q{rng.randrange(5)}"]) for _ in range(n)],
        "negative": [[rng.randrange(8), rng.randrange(8)] for _ in range(n)],
        "scores": [rng.random() for _ in range(n)],
    })


@pytest.mark.parametrize("drop_last", [True, False])
def test_scan_free_sampler_yields_the_stock_batches(drop_last):
    train, _ = kd_rows(load_kd_tables(KD, "train_unormalized"), 8, seed=3, eval_rows=10)
    for dataset, batch_size in ((train, 7), (_duplicated_rows(300, 1), 16)):
        for epoch in (0, 1):
            expected = _batches(NoDuplicatesBatchSampler, dataset, batch_size, drop_last, epoch)
            got = _batches(ScanFreeNoDuplicatesBatchSampler, dataset, batch_size, drop_last, epoch)
            assert got == expected
            assert len({i for b in got for i in b}) == sum(len(b) for b in got)  # every row at most once


def test_epoch_seeded_batch_sampling_uses_the_scan_free_sampler_when_asked():
    from retrievers.train.common import EpochSeededBatchSampling

    dataset = _duplicated_rows(50, 2)
    sampling = EpochSeededBatchSampling("no_duplicates", scan_free=True)
    sampler = sampling(dataset, batch_size=8, drop_last=True, valid_label_columns=["scores"],
                       generator=torch.Generator(), seed=42)
    assert isinstance(sampler, ScanFreeNoDuplicatesBatchSampler)
    assert not isinstance(EpochSeededBatchSampling("no_duplicates")(
        dataset, batch_size=8, drop_last=True, valid_label_columns=["scores"], generator=torch.Generator(), seed=42),
        ScanFreeNoDuplicatesBatchSampler)
