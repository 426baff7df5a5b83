"""Scratch copies that a killed download left beside data/<source> are removed when any stage starts (DVC may restore
download@ from its run-cache without running it); only the names the atomic writes make, never a user's file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from retrievers import pipeline
from retrievers.config import load_params

REPO = Path(__file__).resolve().parents[1]


def test_a_stage_start_removes_a_killed_downloads_scratch_and_nothing_else(tmp_path, monkeypatch):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    source = next(iter(load_params(tmp_path / "params.yaml").sources))
    data = tmp_path / "data"
    (data / source).mkdir(parents=True)
    (data / source / "SOURCE.json").write_text("{}")
    ours = [f".{source}.k2j_9xq0", f".{source}.old-ab12cd34"]  # atomic_dir's scratch and its old-copy folder
    for name in ours:
        (data / name).mkdir()
        (data / name / "part.parquet").write_text("half")
    (data / f".{source}.zz81_x0q").write_text("half")  # write_text_atomic's temporary file
    users = [f".{source}.notes.txt", f".{source}.Backup12", f".{source}.abcd12345", f".{source}-old.k2j_9xq0",
             ".other.k2j_9xq0"]
    for name in users:
        (data / name).write_text("a user's")
    for key, value in pipeline.OFFLINE_ENV.items():  # stage_main sets them: restored after the test
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("sys.argv", ["stages/evaluate.py", "neobert-splade"])
    ran: list[str] = []
    with pytest.raises(SystemExit) as exit_:  # a stage other than download: nothing of download@ runs
        pipeline.stage_main(lambda ws, params, key: ran.append(key), ["neobert-splade", "--workspace", str(tmp_path)])
    assert exit_.value.code in (0, None) and ran == ["neobert-splade"]
    assert sorted(p.name for p in data.iterdir()) == sorted([source, *users])
    assert (data / source / "SOURCE.json").read_text() == "{}"
