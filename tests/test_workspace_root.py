"""The workspace root is passed in: run from another folder, the profile command, a stage script and the MLflow
store write under the root they are given and nothing into the process's working directory."""

from __future__ import annotations

import json
import sys

import pytest

from retrievers.config import load_params
from retrievers.paths import Workspace

from .conftest import REPO, run


@pytest.fixture(scope="module")
def rooted(tmp_path_factory):
    """A smoke workspace made by `python -m retrievers.profile` run from an unrelated folder."""
    base = tmp_path_factory.mktemp("rooted")
    elsewhere, root = base / "elsewhere", base / "root"
    elsewhere.mkdir()
    run([sys.executable, "-m", "retrievers.profile", "smoke", str(root), "--repo", str(REPO)], cwd=elsewhere)
    return elsewhere, root


def test_the_profile_command_writes_the_workspace_under_the_folder_given(rooted):
    elsewhere, root = rooted
    assert load_params(root / "params.yaml").profile == "smoke"
    assert (root / "dvc.yaml").is_file() and (root / "stages" / "download.py").is_file()
    assert not any(elsewhere.iterdir()), "the profile command wrote into its cwd"


def test_a_stage_script_run_elsewhere_writes_under_its_workspace_option(rooted):
    elsewhere, root = rooted
    result = run([sys.executable, str(root / "stages" / "download.py"), "ModernBERT-base", "--workspace", str(root)],
                 cwd=elsewhere)
    assert result.returncode == 0
    record = json.loads((root / "data" / "ModernBERT-base" / "SOURCE.json").read_text())
    assert record["path"] == "fixtures/models/tiny-modernbert", "recorded as params.yaml names it, root-independent"
    assert (root / "data" / "ModernBERT-base" / "model.safetensors").is_file()
    assert not any(elsewhere.iterdir()), "the stage wrote into its cwd"


def test_the_local_mlflow_store_and_run_records_live_under_the_root(rooted, monkeypatch):
    from retrievers import tracking

    elsewhere, root = rooted
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RETRIEVERS_GIT_COMMIT", "test")
    monkeypatch.chdir(elsewhere)
    ws = Workspace(root)
    params = load_params(ws.params_file)
    with tracking.phase_run(ws, params, "neobert-splade", stage="train") as mlflow_run:
        pass
    assert tracking.configure(ws) == f"sqlite:///{root}/mlflow.db" and (root / "mlflow.db").is_file()
    assert mlflow_run.info.artifact_uri.startswith((root / "mlartifacts").as_uri())
    assert json.loads(ws.run_record("neobert-splade").read_text())["run_id"] == mlflow_run.info.run_id
    assert not any(elsewhere.iterdir()), "MLflow wrote into the cwd"


def test_a_relative_root_is_refused_past_the_entry_point():
    with pytest.raises(ValueError, match="must be absolute"):
        Workspace(REPO.relative_to(REPO.parent))
