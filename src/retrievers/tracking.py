"""MLflow: one experiment per model, one run per training phase; later stages log into the final phase's run.

Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else a git-ignored sqlite file at the workspace root
(``Workspace.tracking_uri``), its artifacts in ``<root>/mlartifacts``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from retrievers.config import Params, flatten
from retrievers.faults import EnvironmentFault
from retrievers.io import write_json_atomic
from retrievers.paths import Workspace

OWNER_PID, OWNER_HOST = "retrievers.pid", "retrievers.host"  # which process holds a RUNNING run
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD")


def tracking_uri(ws: Workspace) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or ws.tracking_uri


def configure(ws: Workspace) -> str:
    import mlflow

    uri = tracking_uri(ws)
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_name(params: Params, model_key: str) -> str:
    return f"{params.tracking.experiment_prefix}{model_key}"


def _git_commit(ws: Workspace) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws.root, capture_output=True, text=True, timeout=10,
                             check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("RETRIEVERS_GIT_COMMIT", "unknown")


def base_tags(ws: Workspace, params: Params, stage: str) -> dict[str, str]:
    return {
        "git_commit": os.environ.get("RETRIEVERS_GIT_COMMIT") or _git_commit(ws),
        "dvc_experiment": os.environ.get("DVC_EXP_NAME", "workspace"),
        "stage": stage,
        "profile": params.profile,
    }


def _ensure_experiment(ws: Workspace, name: str) -> str:
    """The experiment's id, creating it if needed. With the default local store its artifacts go to
    <root>/mlartifacts/<name>; a tracking server manages its own artifact location."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    local = mlflow.get_tracking_uri() == ws.tracking_uri
    location = ws.artifact_location(name) if local else None
    return mlflow.create_experiment(name, artifact_location=location)


def check_reachable(ws: Workspace, timeout: float = 5.0) -> str:
    """The tracking URI, after checking that a tracking server (http/https) answers its /health endpoint: a server
    that is down fails here with one line, at the start of a stage, not after MLflow's minutes of retries."""
    import urllib.error
    import urllib.parse
    import urllib.request

    uri = tracking_uri(ws)
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return uri
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    shown = parts._replace(netloc=host).geturl()  # without a user or password
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as answer:
            answer.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise EnvironmentFault(
            f"the MLflow tracking server at MLFLOW_TRACKING_URI={shown} does not answer ({reason}); start it, or "
            "unset MLFLOW_TRACKING_URI to track into the local mlflow.db"
        ) from None
    return uri


def _owner_tags() -> dict[str, str]:
    return {OWNER_PID: str(os.getpid()), OWNER_HOST: socket.gethostname()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_orphaned_runs(experiment_id: str) -> list[str]:
    """Mark KILLED the runs of this experiment still RUNNING whose process (pid and host tags) is gone: a stage
    killed by SIGKILL cannot end its own run, so the next start of any stage ends it."""
    from mlflow import MlflowClient

    client, host, ended = MlflowClient(), socket.gethostname(), []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=200):
        tags = run.data.tags
        if tags.get(OWNER_HOST) == host and OWNER_PID in tags and not _alive(int(tags[OWNER_PID])):
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended


@contextmanager
def _ending(run) -> Iterator[Any]:
    """End the active run FINISHED, KILLED (interrupt, SIGTERM) or FAILED (any other error)."""
    import mlflow

    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


@contextmanager
def phase_run(ws: Workspace, params: Params, phase_key: str, stage: str) -> Iterator[Any]:
    """Start a new run for a training phase; only when the body succeeds, record its id for the later stages
    (runs/<phase>.json never points at a failed run)."""
    import mlflow

    configure(ws)
    model_key = params.phases[phase_key].model
    experiment_id = _ensure_experiment(ws, experiment_name(params, model_key))
    end_orphaned_runs(experiment_id)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=phase_key,
                           tags=base_tags(ws, params, stage) | {"phase": phase_key} | _owner_tags())
    with _ending(run):
        mlflow.log_params(flatten(params.phases[phase_key], "phase.") | {"seed": params.seed, "model": model_key})
        yield run
        write_json_atomic(ws.run_record(phase_key), {"run_id": run.info.run_id, "experiment_id": experiment_id})


@contextmanager
def resume_run(ws: Workspace, params: Params, model_key: str, stage: str) -> Iterator[Any]:
    """Re-open the run of the model's final phase (written by its train stage)."""
    import mlflow

    configure(ws)
    record = json.loads(ws.run_record(model_key).read_text())
    end_orphaned_runs(record["experiment_id"])
    run = mlflow.start_run(run_id=record["run_id"])
    with _ending(run):
        mlflow.set_tags({f"stage.{stage}": "done", "stage": stage} | _owner_tags())
        yield run


def mlflow_metric_name(name: str) -> str:
    """MLflow rejects '@' in metric names."""
    return name.replace("@", "_at_")
