"""`retrievers` command line: bad input gets one clear line and exit status 1 (no model needed)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from retrievers.cli import app
from retrievers.search import read_records

runner = CliRunner()


def _error(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("retrievers: error: "), result.stderr
    return lines[0]


def test_jsonl_and_parquet_corpora_read_alike(tmp_path):
    rows = [{"_id": "d1", "title": "Paris", "text": "is in France"}, {"_id": "d2", "text": "Rome"}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    expected = [{"id": "d1", "text": "Paris is in France"}, {"id": "d2", "text": "Rome"}]
    assert read_records(tmp_path / "c.jsonl") == read_records(tmp_path / "c.parquet") == expected


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.jsonl", None, "missing.jsonl: no such file"),
        ("corpus.csv", "id,text\n1,a\n", "unknown format '.csv'"),
        ("bad.jsonl", '{"id": "1", "text": "a"}\nnot json\n', "bad.jsonl:2: not a JSON object"),
        ("notext.jsonl", '{"id": "1", "body": "a"}\n', "row 1 needs an 'id' (or '_id') and a 'text' field"),
    ],
)
def test_bad_corpus_is_one_line(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    (tmp_path / "model").mkdir()
    assert message in _error("index", str(tmp_path / "model"), str(tmp_path / name), str(tmp_path / "idx"))


def test_unknown_model_and_missing_index_are_one_line(tmp_path):
    assert "unknown model 'no such model'" in _error("download", "no such model")
    (tmp_path / "folder").mkdir()
    assert "is not a retriever model folder" in _error("download", str(tmp_path / "folder"))
    assert "is not an index" in _error("search", str(tmp_path), "a query")
    assert "one of the two" in _error("search", str(tmp_path))
    assert "--format 'xml'" in _error("search", str(tmp_path), "q", "--format", "xml")
