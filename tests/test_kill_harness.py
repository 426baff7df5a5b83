"""The kill harness at CI scale: a few of benchmarks/kill_harness.py's kill points, on the smoke workspace. Each point
SIGKILLs the stage's whole process group (dvc too), then `dvc repro` must complete with the uninterrupted run's
metrics and output hashes, a clean `dvc status`, no scratch copy left and no MLflow run left RUNNING."""

from __future__ import annotations

import importlib.util
import json

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow
spec = importlib.util.spec_from_file_location("kill_harness", REPO / "benchmarks" / "kill_harness.py")
harness = importlib.util.module_from_spec(spec)
spec.loader.exec_module(harness)


@pytest.mark.parametrize("stage, point", [("evaluate@neobert-splade", "evaluated"),
                                          ("release@modernbert-xtr", "registry")])
def test_killed_stage_then_repro_matches_the_uninterrupted_run(smoke_run, tmp_path, stage, point):
    outcome = harness.try_point(smoke_run.workspace, tmp_path, stage, point, hub_endpoint="http://127.0.0.1:9")
    assert outcome["passed"], json.dumps(outcome, indent=2)
