"""Stages read the bytes DVC hashed: two workspaces whose data folders have the same names but different content,
in one process and one HF datasets cache, each train and evaluate on their own content."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FIXTURES = Path(__file__).parent.parent / "fixtures" / "datasets"


def _rewrite(path: Path, column: str, fn) -> None:
    table = pq.read_table(path)
    index = table.schema.get_field_index(column)
    pq.write_table(table.set_column(index, column, fn(table.column(column))), path)


def _workspace(root: Path, changed: bool) -> Path:
    """data/ms-marco-en-bge-gemma, data/msmarco-10m-triplets, data/NanoBEIR-en (fixture copies); ``changed``:
    every row's teacher scores reversed, triplet queries and NanoBEIR corpus texts upper-cased."""
    data = root / "data"
    for key, fixture in (("ms-marco-en-bge-gemma", "tiny-ms-marco-en-bge-gemma"),
                         ("msmarco-10m-triplets", "tiny-msmarco-triplets"), ("NanoBEIR-en", "tiny-NanoBEIR-en"),
                         ("NanoBEIR-zeta-alpha/NanoMSMARCO", "tiny-NanoMSMARCO")):
        shutil.copytree(FIXTURES / fixture, data / key)
    if changed:
        kd = data / "ms-marco-en-bge-gemma" / "train_unormalized" / "train-00000-of-00001.parquet"
        _rewrite(kd, "scores", lambda c: pa.array([s[::-1] for s in c.to_pylist()], c.type))
        _rewrite(data / "msmarco-10m-triplets" / "data" / "train-00000-of-00001.parquet", "query", pc.utf8_upper)
        _rewrite(data / "NanoBEIR-en" / "corpus" / "NanoMSMARCO.parquet", "text", pc.utf8_upper)
        _rewrite(data / "NanoBEIR-zeta-alpha" / "NanoMSMARCO" / "corpus" / "train-00000-of-00001.parquet", "text",
                 pc.utf8_upper)
    return root


def test_same_named_folders_with_other_content_load_their_own_content(tmp_path, monkeypatch):
    import datasets

    from retrievers.data.kd import kd_rows, load_kd_tables
    from retrievers.data.local import load_split
    from retrievers.models import colbert as colbert_kind
    from retrievers.models import splade as splade_kind

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "shared-hf-cache"))
    first, second = _workspace(tmp_path / "ws1", False), _workspace(tmp_path / "ws2", True)
    seen = {}
    for workspace in (first, second):
        monkeypatch.chdir(workspace)  # the stages run in the workspace and name folders relative to it
        tables = load_kd_tables(Path("data/ms-marco-en-bge-gemma"), "train_unormalized")
        train, _ = kd_rows(tables, 32, seed=42, max_rows=50)
        triplets = load_split(Path("data/msmarco-10m-triplets"), columns=["query", "positive", "negative"])
        sparse = splade_kind.nanobeir_evaluator(Path("data/NanoBEIR-en"), ["msmarco"], batch_size=8)
        colbert = colbert_kind.nanobeir_evaluator(Path("data/NanoBEIR-zeta-alpha"), ["msmarco"], batch_size=8)
        seen[workspace] = (train["scores"], triplets["query"], sparse.evaluators[0].corpus,
                           colbert.evaluators[0].corpus)
        kd_file = workspace / "data/ms-marco-en-bge-gemma/train_unormalized/train-00000-of-00001.parquet"
        assert train["scores"] == pq.read_table(kd_file).column("scores").to_pylist()[:50]
    (scores_1, queries_1, sparse_1, colbert_1), (scores_2, queries_2, sparse_2, colbert_2) = seen[first], seen[second]
    assert scores_2 == [s[::-1] for s in scores_1]
    assert queries_2 == [q.upper() for q in queries_1]
    assert sparse_2 == [text.upper() for text in sparse_1] and sparse_1 != sparse_2
    assert colbert_2 == [text.upper() for text in colbert_1] and colbert_1 != colbert_2

    # The control: in the same cache, the stock loader hands the second workspace the first one's scores.
    monkeypatch.chdir(first)
    datasets.load_dataset("data/ms-marco-en-bge-gemma", "train_unormalized", split="train")
    monkeypatch.chdir(second)
    stale = datasets.load_dataset("data/ms-marco-en-bge-gemma", "train_unormalized", split="train")["scores"][:50]
    assert stale == scores_1 != scores_2, "the stock loader no longer serves stale data: this test's setup is moot"
