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


def test_index_refuses_a_folder_it_did_not_write_and_keeps_its_files(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"id": "1", "text": "a"}\n')
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my notes")
    line = _error("index", str(tmp_path / "model"), str(tmp_path / "c.jsonl"), str(tmp_path / "mine"))
    assert "is not empty and is not an index (no retrievers-index.json)" in line and "--overwrite" in line
    assert (tmp_path / "mine" / "notes.txt").read_text() == "my notes"
    (tmp_path / "file").write_text("x")
    assert "exists and is not a folder" in _error("index", "m", str(tmp_path / "c.jsonl"), str(tmp_path / "file"))


@pytest.mark.parametrize("row", ['{"id": "7", "text": null}', '{"_id": 7, "text": 3}'])
def test_a_row_whose_text_is_not_a_string_is_one_line(tmp_path, row):
    (tmp_path / "c.jsonl").write_text('{"id": "1", "text": "a"}\n' + row + "\n")
    line = _error("index", str(tmp_path / "model"), str(tmp_path / "c.jsonl"), str(tmp_path / "idx"))
    assert "c.jsonl: row 2 (" in line and "'text' is" in line and "not a string; fix or drop the row" in line
    assert not (tmp_path / "idx").exists()


CHEAP = [  # commands that load no model: none may import a deep-learning library
    ["--help"],
    ["index", "--help"],
    ["search", "--help"],
    ["serve", "--help"],
    ["encode", "--help"],
    ["download", "fixtures/models/tiny-neobert-splade-missing"],
    ["search", "/nonexistent-index", "q"],
    ["serve", "/nonexistent-index"],
    ["index", "fixtures/models/tiny-neobert", "/nonexistent.jsonl", "/tmp/never-written"],
    ["encode", "fixtures/models/tiny-neobert", "/nonexistent.jsonl"],
]
HEAVY = ("torch", "transformers", "sentence_transformers", "pylate", "mlflow", "fastapi", "uvicorn", "seismic",
         "fast_plaid",
         "retrievers.config")  # the pipeline's config models: pydantic models and yaml, for the Hub only
# what inference with a SPLADE model needs none of: PyLate, the other kind's index, MLflow, training code
NOT_FOR_SPLADE_INFERENCE = ("pylate", "fast_plaid", "seismic", "mlflow", "fastapi", "retrievers.config",
                            "retrievers.packed", "retrievers.train", "retrievers.release", "retrievers.tracking")


def _imported(args: list[str], watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has imported after running ``retrievers ARGS``."""
    import subprocess
    import sys

    from .conftest import REPO

    probe = ("import atexit, json, sys\n"
             f"atexit.register(lambda: print('IMPORTED', json.dumps([m for m in {watched!r} if m in sys.modules])))\n"
             "sys.argv = ['retrievers', *sys.argv[1:]]\n"
             "from retrievers.cli import app\n"
             "app()\n")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=REPO,
                            timeout=300)
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("IMPORTED "), result.stdout[-500:] + result.stderr[-500:]
    return json.loads(last.removeprefix("IMPORTED "))


@pytest.mark.parametrize("args", CHEAP, ids=lambda a: " ".join(a)[:40])
def test_commands_that_load_no_model_import_no_heavy_library(args):
    """What `retrievers` imports before a command that needs no model answers (a fresh interpreter each)."""
    assert _imported(args, HEAVY) == []


def test_splade_inference_imports_neither_pylate_nor_training_code(tiny_splade, tmp_path):
    """`retrievers encode` with a SPLADE model loads sentence-transformers' sparse encoder and nothing of the
    ColBERT kind, the indexes, MLflow or the pipeline (a fresh interpreter)."""
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"id": "1", "text": "what is the capital"}) + "\n")
    watched = NOT_FOR_SPLADE_INFERENCE + ("sentence_transformers.sparse_encoder",)
    assert _imported(["encode", str(tiny_splade), str(texts)], watched) == ["sentence_transformers.sparse_encoder"]
