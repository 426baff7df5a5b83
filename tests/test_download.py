"""download@: local folders are copied with a digest check; the Hub while offline fails fast and clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from retrievers.config import HubRepo, LocalFolder, Source
from retrievers.data.download import DownloadError, download_source, folder_digest
from retrievers.paths import Workspace

from .conftest import REPO


def test_local_source_is_copied_with_its_record(tmp_path):
    folder = REPO / "fixtures" / "models" / "tiny-modernbert"
    download_source(Workspace(tmp_path), "base", Source(local=LocalFolder(path=folder, sha256=folder_digest(folder))))
    assert (tmp_path / "data" / "base" / "model.safetensors").exists()
    record = json.loads((tmp_path / "data" / "base" / "SOURCE.json").read_text())
    assert record["sha256"] == folder_digest(folder)


def test_changed_local_source_is_refused_and_nothing_is_written(tmp_path):
    folder = REPO / "fixtures" / "models" / "tiny-modernbert"
    with pytest.raises(DownloadError, match="changed since"):
        download_source(Workspace(tmp_path), "base", Source(local=LocalFolder(path=folder, sha256="0" * 64)))
    assert not (tmp_path / "data" / "base").exists()
    assert not any((tmp_path / "data").iterdir())  # no half-written scratch folder left behind


def test_hub_download_offline_fails_within_seconds_naming_the_repo(tmp_path):
    code = (
        "from retrievers.config import HubRepo, Source\n"
        "from retrievers.data.download import download_source\n"
        "from pathlib import Path\nfrom retrievers.paths import Workspace\n"
        f"download_source(Workspace(Path({str(tmp_path)!r})), 'kd', Source(hub=HubRepo("
        "repo_id='lightonai/ms-marco-en-bge-gemma', repo_type='dataset',"
        " revision='1a1ffe7cde403016be12ae532b249965b2293114')))\n"
    )
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )
    elapsed = time.perf_counter() - start
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "lightonai/ms-marco-en-bge-gemma" in last and "make smoke" in last
    assert elapsed < 30, f"took {elapsed:.1f} s"
    assert not (tmp_path / "data" / "kd").exists()


def test_hub_unreachable_fails_within_seconds_in_one_line(tmp_path):
    """No offline flag, but nothing answers: a closed port on loopback stands in for a machine without network.
    A refused connection is transient to the download wrapper: each retry is one warning line, then one error line.
    (``make test`` sets TRANSFORMERS_OFFLINE, which huggingface_hub also reads as offline: both flags are removed.)"""
    offline = {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"}
    result = subprocess.run([sys.executable, str(REPO / "stages" / "download.py"), "ModernBERT-base"], cwd=REPO,
                            capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in os.environ.items() if k not in offline}
                            | {"HF_ENDPOINT": "http://127.0.0.1:9", "RETRIEVERS_HUB_RETRIES": "1"})
    assert result.returncode == 1
    *retries, last = result.stderr.strip().splitlines()
    assert len(retries) == 1 and "retrying in" in retries[0] and "ConnectError" in retries[0], retries
    assert "answerdotai/ModernBERT-base" in last and "make smoke" in last and "Traceback" not in result.stderr, last
    assert not (REPO / "data" / "ModernBERT-base").exists()


def test_stage_script_reports_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "stages" / "download.py"), "no-such-source"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines() == [result.stderr.strip().splitlines()[-1]]
        and "unknown source 'no-such-source'" in result.stderr
    )


def test_unpinned_revision_is_visible():
    assert not HubRepo(repo_id="a/b", repo_type="model", revision="main").pinned
    assert HubRepo(repo_id="a/b", repo_type="model", revision="0" * 40).pinned
