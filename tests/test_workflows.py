"""The GitHub Actions workflows pass actionlint and keep the promises the README makes about them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

WORKFLOWS = REPO / ".github" / "workflows"


def actionlint(*files: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    assert binary, "actionlint is a dev dependency: run `make setup`"
    return subprocess.run([binary, "-no-color", *map(str, files)], cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize("name", ["ci.yml", "retrain.yml"])
def test_workflow_passes_actionlint(name):
    result = actionlint(WORKFLOWS / name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_rejects_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    steps = "    steps:\n      - run: echo ${{ matrix.x }}\n"  # no matrix in this job
    broken.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n" + steps)
    result = actionlint(broken)
    assert result.returncode != 0 and "matrix" in result.stdout


def load(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    workflow["on"] = workflow.pop(True)  # YAML 1.1 reads the key `on` as a boolean
    return workflow


def test_ci_runs_lint_typecheck_tests_and_smoke_with_caches():
    ci = load("ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    runs = [step.get("run", "") for job in ci["jobs"].values() for step in job["steps"]]
    for command in ("make lint", "make typecheck", "make test", "make smoke"):
        assert command in runs
    uses = [step.get("uses", "") for job in ci["jobs"].values() for step in job["steps"]]
    assert any(u.startswith("astral-sh/setup-uv") for u in uses)
    dvc_cache = [s for s in ci["jobs"]["smoke"]["steps"] if s.get("uses", "").startswith("actions/cache")]
    assert dvc_cache and ".dvc/cache" in dvc_cache[0]["with"]["path"]
    assert "dvc.lock" in dvc_cache[0]["with"]["key"] and "fixtures/**" in dvc_cache[0]["with"]["key"]


def test_retrain_runs_on_the_gpu_runner_one_model_at_a_time_and_gates_the_release():
    retrain = load("retrain.yml")
    inputs = retrain["on"]["workflow_dispatch"]["inputs"]
    models = set(yaml.safe_load((REPO / "params.yaml").read_text())["models"])
    assert set(inputs["model"]["options"]) == models and {"published", "smoke"} <= set(inputs["profile"]["options"])
    assert retrain["on"]["schedule"]
    train, release = retrain["jobs"]["train"], retrain["jobs"]["release"]
    assert "self-hosted" in train["runs-on"] and "gpu" in train["runs-on"]
    assert "matrix.model" in train["concurrency"]["group"] and train["concurrency"]["cancel-in-progress"] is False
    commands = " ".join(step.get("run", "") for step in train["steps"])
    for command in ("dvc pull", "dvc repro card@$MODEL", "dvc push", "dvc\" metrics diff main", "GITHUB_STEP_SUMMARY"):
        assert command in commands, command
    assert "secrets.MLFLOW_TRACKING_URI" in str(train["env"])
    assert any(step.get("uses", "").startswith("peter-evans/create-pull-request") for step in train["steps"])
    assert release["environment"] == "release" and "train" in release["needs"]
    hf_token_steps = [s for job in retrain["jobs"].values() for s in job["steps"] if "HF_TOKEN" in str(s.get("env"))]
    assert [s["name"] for s in hf_token_steps] == ["Release to the MLflow registry and the Hub"], "HF_TOKEN: one step"
    assert "release.hub.push=true" in hf_token_steps[0]["run"] and "release@$MODEL" in hf_token_steps[0]["run"]
