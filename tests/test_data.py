"""Fixture and data preparation: determinism, Hub layout, learnable signal, Arrow lookups equal the stock ones."""

from __future__ import annotations

import filecmp
from pathlib import Path

import datasets
import pytest

from retrievers.data.kd import KDDataError, kd_training_dataset, load_kd_tables, splade_triplets
from tools.fixture import generate

from .conftest import REPO

FIXTURE = REPO / "fixtures"
KD = FIXTURE / "datasets" / "tiny-ms-marco-en-bge-gemma"


@pytest.mark.slow
def test_fixture_regenerates_byte_for_byte(tmp_path):
    generate(tmp_path / "fixtures")
    committed = sorted(p.relative_to(FIXTURE) for p in FIXTURE.rglob("*") if p.is_file())
    fresh = sorted(p.relative_to(tmp_path / "fixtures") for p in (tmp_path / "fixtures").rglob("*") if p.is_file())
    assert committed == fresh
    different = [str(p) for p in committed if not filecmp.cmp(FIXTURE / p, tmp_path / "fixtures" / p, shallow=False)]
    assert not different, f"regenerated fixture differs: {different}"


@pytest.mark.parametrize(
    "config, columns",
    [
        ("queries", {"query_id", "text"}),
        ("documents", {"document_id", "text"}),
        ("train", {"query_id", "document_ids", "scores"}),
        ("train_unormalized", {"query_id", "document_ids", "scores"}),
    ],
)
def test_kd_fixture_has_the_hub_layout(config, columns):
    dataset = datasets.load_dataset(str(KD), config, split="train")
    assert set(dataset.column_names) == columns and len(dataset) > 100


def test_nanobeir_fixture_has_both_layouts():
    combined = FIXTURE / "datasets" / "tiny-NanoBEIR-en"
    for name in ("NanoMSMARCO", "NanoSciFact", "NanoNFCorpus"):
        qrels = datasets.load_dataset(str(combined), "qrels", split=name)
        per_set = datasets.load_dataset(str(FIXTURE / "datasets" / f"tiny-{name}"), "qrels", split="train")
        assert qrels.to_list() == per_set.to_list() and len(qrels) > 0


def test_evaluation_queries_are_held_out():
    train_queries = set(datasets.load_dataset(str(KD), "queries", split="train")["text"])
    triplets = set(datasets.load_dataset(str(FIXTURE / "datasets" / "tiny-msmarco-triplets"), split="train")["query"])
    docs = set(datasets.load_dataset(str(KD), "documents", split="train")["text"])
    for name in ("NanoMSMARCO", "NanoSciFact", "NanoNFCorpus"):
        folder = FIXTURE / "datasets" / f"tiny-{name}"
        corpus = set(datasets.load_dataset(str(folder), "corpus", split="train")["text"])
        assert not corpus & docs
        queries = set(datasets.load_dataset(str(folder), "queries", split="train")["text"])
        assert len(queries & (train_queries | triplets)) < 0.2 * len(queries)


def test_teacher_ranks_the_source_document_first_mostly():
    """The teacher is BM25 over synonym-normalised text: a real signal, not noise."""
    train = datasets.load_dataset(str(KD), "train_unormalized", split="train")
    top_is_strict_max = [s[0] > s[1] for s in train["scores"]]
    assert sum(top_is_strict_max) / len(top_is_strict_max) > 0.8


def test_arrow_kd_lookup_equals_pylate_kdprocessing():
    from pylate.utils import KDProcessing

    tables = load_kd_tables(KD, "train")
    ours = kd_training_dataset(tables, n_ways=8)
    stock = datasets.load_dataset(str(KD), "train", split="train")
    stock.set_transform(
        KDProcessing(
            queries=datasets.load_dataset(str(KD), "queries", split="train"),
            documents=datasets.load_dataset(str(KD), "documents", split="train"),
            n_ways=8,
        ).transform
    )
    for i in (0, 1, 17, len(stock) - 1):
        assert ours[i]["query"] == stock[i]["query"]
        assert ours[i]["documents"] == stock[i]["documents"]
        assert ours[i]["scores"] == pytest.approx(stock[i]["scores"])


def test_splade_triplets_take_the_teachers_best_as_positive():
    tables = load_kd_tables(KD, "train_unormalized")
    triplets, _ = splade_triplets(tables, n_negatives=2, seed=0, max_samples=50, with_scores=True)
    texts = tables.documents["text"]
    for row, (positions, scores) in enumerate(
        zip(
            tables.train.column("document_pos").to_pylist()[:50],
            tables.train.column("scores").to_pylist()[:50],
            strict=True,
        )
    ):
        best = positions[max(range(len(scores)), key=scores.__getitem__)]
        assert triplets[row]["positive"] == texts[best]
        assert triplets[row]["negative_1"] != triplets[row]["positive"] != triplets[row]["negative_2"]
        label = triplets[row]["label"]
        assert label[0] == max(scores) and all(s in scores and s <= label[0] for s in label[1:])
    again, _ = splade_triplets(tables, n_negatives=2, seed=0, max_samples=50, with_scores=True)
    assert again[:] == triplets[:]


def test_splade_negatives_are_redrawn_each_epoch_and_reproducible():
    tables = load_kd_tables(KD, "train_unormalized")

    def negatives(seed: int, epoch: int) -> list[str]:
        dataset, transform = splade_triplets(tables, n_negatives=1, seed=seed, max_samples=100)
        transform.epoch = epoch
        return dataset[:]["negative_1"]

    epoch_0, epoch_1 = negatives(0, 0), negatives(0, 1)
    assert epoch_0 == negatives(0, 0) and epoch_1 == negatives(0, 1), "same seed and epoch, same negatives"
    changed = sum(a != b for a, b in zip(epoch_0, epoch_1, strict=True))
    assert changed > 50, f"only {changed} of 100 negatives changed between epochs 0 and 1"
    assert negatives(1, 0) != epoch_0, "another seed draws other negatives"
    # Row by row or in a batch, the same draw: it does not depend on how the sampler reads the rows.
    dataset, _ = splade_triplets(tables, n_negatives=1, seed=0, max_samples=100)
    assert [dataset[i]["negative_1"] for i in (7, 3, 42)] == [epoch_0[i] for i in (7, 3, 42)]


def test_dangling_document_id_is_named(tmp_path):
    import shutil

    import pyarrow.parquet as pq

    broken = tmp_path / "kd"
    shutil.copytree(KD, broken)
    path = broken / "train" / "train-00000-of-00001.parquet"
    table = pq.read_table(path).to_pydict()
    table["document_ids"][3][2] = 99_999_999
    import pyarrow as pa

    pq.write_table(pa.table(table), path)
    with pytest.raises(KDDataError, match="document_id 99999999"):
        load_kd_tables(Path(broken), "train")
