"""A full disk during a write: one line, exit status 1, the previous output intact and no temporary file left.
Once with an injected OSError(ENOSPC), once on a real 256 KiB tmpfs (skipped where mounting is not allowed)."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid

import pytest

from retrievers import pipeline
from retrievers.io import atomic_dir, write_json_atomic, write_text_atomic


def _stage_line(capsys, monkeypatch, body) -> str:
    monkeypatch.setattr(pipeline, "load_params", lambda path: None)
    monkeypatch.setattr("sys.argv", ["stages/card.py", "modernbert-xtr"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        pipeline.stage_main(lambda ws, params, key: body(), ["modernbert-xtr"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(lines) == 1, lines
    return lines[0]


def test_injected_enospc_in_a_model_save_keeps_the_previous_model(tmp_path, capsys, monkeypatch):
    target = tmp_path / "models" / "m"
    target.mkdir(parents=True)
    (target / "model.safetensors").write_text("previous")

    def save():
        with atomic_dir(target) as scratch:
            (scratch / "model.safetensors").write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device", str(scratch / "model.safetensors"))

    line = _stage_line(capsys, monkeypatch, save)
    assert line.startswith("card@modernbert-xtr: error: no space left on device writing ")
    assert line.endswith("free disk space (or point the workspace at a larger disk) and re-run")
    assert (target / "model.safetensors").read_text() == "previous"
    assert sorted(p.name for p in target.parent.iterdir()) == ["m"], "no scratch copy left"


def test_injected_enospc_in_a_file_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"ndcg": 0.5})
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write_json_atomic(path, {"ndcg": 0.9})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_text() == '{\n  "ndcg": 0.5\n}\n' and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_a_real_full_disk_gives_one_line_and_keeps_previous_outputs(small_disk, capsys, monkeypatch):
    monkeypatch.chdir(small_disk)  # the workspace is on the full disk
    card = small_disk / "model_cards" / "m" / "README.md"
    write_text_atomic(card, "previous card")
    model = small_disk / "models" / "m"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    line = _stage_line(capsys, monkeypatch, lambda: write_text_atomic(card, "x" * 400_000))
    assert line == "card@modernbert-xtr: error: no space left on device; free disk space (or point the workspace " \
                   "at a larger disk) and re-run"
    assert card.read_text() == "previous card" and [p.name for p in card.parent.iterdir()] == ["README.md"]

    def save_model():
        with atomic_dir(model) as scratch:
            (scratch / "model.safetensors").write_bytes(os.urandom(400_000))

    line = _stage_line(capsys, monkeypatch, save_model)
    assert "no space left on device" in line
    assert [p.name for p in model.iterdir()] == ["config.json"] and [p.name for p in model.parent.iterdir()] == ["m"]

    def save_weights():  # what save_pretrained calls: safetensors words ENOSPC as its own SafetensorError
        import torch
        from safetensors.torch import save_file

        with atomic_dir(model) as scratch:
            save_file({"weight": torch.zeros(100_000)}, str(scratch / "model.safetensors"))

    for save in (save_weights, lambda: __import__("torch").save({"w": __import__("torch").zeros(100_000)},
                                                                 small_disk / "optimizer.pt")):
        line = _stage_line(capsys, monkeypatch, save)
        assert "no space left on device; free disk space" in line, line
    assert [p.name for p in model.iterdir()] == ["config.json"] and [p.name for p in model.parent.iterdir()] == ["m"]
