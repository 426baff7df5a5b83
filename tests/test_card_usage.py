"""The usage code of a generated card runs: the smoke run's cards, with the Hub model id replaced by the
trained model's folder, executed in a fresh offline interpreter (XTR: index, retrieve, rerank; SPLADE: encode,
similarity), and what the card's comments say the code prints is what it prints."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest

from retrievers.config import load_params

from .conftest import OFFLINE_ENV, REPO

pytestmark = pytest.mark.slow


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL)


def run_card_code(smoke_run, model_key: str, tmp_path) -> tuple[str, list[str]]:
    card = (smoke_run.workspace / "model_cards" / model_key / "README.md").read_text()
    repo_id = load_params(smoke_run.workspace / "params.yaml").models[model_key].hub_repo_id
    blocks = python_blocks(card)
    assert blocks and repo_id in card
    model_path = str(smoke_run.workspace / "models" / model_key)
    script = "\n".join(blocks).replace(f'"{repo_id}"', repr(model_path))
    assert repo_id not in script
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=os.environ | OFFLINE_ENV, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"card code failed:\n{script}\n{result.stderr[-3000:]}"
    return result.stdout, blocks


def test_xtr_card_code_indexes_retrieves_and_reranks(smoke_run, tmp_path):
    stdout, blocks = run_card_code(smoke_run, "modernbert-xtr", tmp_path)
    code = "\n".join(blocks)
    assert "indexes.PLAID" in code and "retriever.retrieve" in code and "rank.rerank" in code
    assert (tmp_path / "pylate-index").is_dir()
    retrieved, reranked = (ast.literal_eval(line) for line in stdout.strip().splitlines()[-2:])
    assert len(retrieved) == 2 and all(1 <= len(hits) <= 3 for hits in retrieved)  # 2 queries, 3 documents
    assert {hit["id"] for hits in retrieved for hit in hits} <= {"1", "2", "3"}
    assert [sorted(hit["id"] for hit in hits) for hits in reranked] == [[1, 2], [1, 2, 3]]
    assert all(hits == sorted(hits, key=lambda h: -h["score"]) for hits in reranked)


def test_splade_card_code_encodes_and_scores(smoke_run, tmp_path):
    stdout, blocks = run_card_code(smoke_run, "neobert-splade", tmp_path)
    code = "\n".join(blocks)
    promised = re.findall(r"^# (\[\d+, \d+\])$", code, flags=re.MULTILINE)
    shapes = [f"[{a}, {b}]" for a, b in re.findall(r"torch\.Size\(\[(\d+), (\d+)\]\)", stdout)]
    assert len(promised) == 2 and shapes == promised, (promised, stdout)


def test_card_code_has_no_local_paths():
    for template in (REPO / "model_cards" / "templates").glob("*.j2"):
        assert "/work/" not in template.read_text() and "/tmp/" not in template.read_text()
