"""MLflow: one experiment per model, one run per training phase; later stages log into the final phase's run.

Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else a git-ignored sqlite file at the workspace root.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from retrievers import paths
from retrievers.config import Params, flatten
from retrievers.io import write_json_atomic

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD")


def configure() -> str:
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_name(params: Params, model_key: str) -> str:
    return f"{params.tracking.experiment_prefix}{model_key}"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("RETRIEVERS_GIT_COMMIT", "unknown")


def base_tags(params: Params, stage: str) -> dict[str, str]:
    return {
        "git_commit": os.environ.get("RETRIEVERS_GIT_COMMIT") or _git_commit(),
        "dvc_experiment": os.environ.get("DVC_EXP_NAME", "workspace"),
        "stage": stage,
        "profile": params.profile,
    }


def _ensure_experiment(name: str) -> str:
    """The experiment's id, creating it if needed. With the default local store its artifacts go to
    ./mlartifacts/<name>; a tracking server manages its own artifact location."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    local = mlflow.get_tracking_uri() == DEFAULT_TRACKING_URI
    location = Path("mlartifacts", name).resolve().as_uri() if local else None
    return mlflow.create_experiment(name, artifact_location=location)


@contextmanager
def phase_run(params: Params, phase_key: str, stage: str) -> Iterator[Any]:
    """Start a new run for a training phase and record its id for the later stages."""
    import mlflow

    configure()
    model_key = params.phases[phase_key].model
    experiment_id = _ensure_experiment(experiment_name(params, model_key))
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=phase_key, tags=base_tags(params, stage) | {"phase": phase_key}
    ) as run:
        mlflow.log_params(flatten(params.phases[phase_key], "phase.") | {"seed": params.seed, "model": model_key})
        write_json_atomic(paths.run_record(phase_key), {"run_id": run.info.run_id, "experiment_id": experiment_id})
        yield run


@contextmanager
def resume_run(params: Params, model_key: str, stage: str) -> Iterator[Any]:
    """Re-open the run of the model's final phase (written by its train stage)."""
    import mlflow

    configure()
    record = json.loads(paths.run_record(model_key).read_text())
    with mlflow.start_run(run_id=record["run_id"]) as run:
        mlflow.set_tag(f"stage.{stage}", "done")
        mlflow.set_tag("stage", stage)
        yield run


def mlflow_metric_name(name: str) -> str:
    """MLflow rejects '@' in metric names."""
    return name.replace("@", "_at_")
