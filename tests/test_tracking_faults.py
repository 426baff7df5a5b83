"""MLflow runs of failed, interrupted or killed stages end FAILED/KILLED; runs/<phase>.json only names a finished
run; a tracking server that is down is one line naming MLFLOW_TRACKING_URI (a real `mlflow server` on loopback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from retrievers import tracking
from retrievers.config import parse_params
from retrievers.faults import EnvironmentFault
from retrievers.paths import Workspace

from .conftest import REPO, free_port

PHASE = "modernbert-xtr"


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return Workspace(tmp_path), parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))


def _client():
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


@pytest.mark.parametrize("error, status", [(ValueError("bad"), "FAILED"), (KeyboardInterrupt("SIGTERM"), "KILLED"),
                                           (SystemExit(1), "FAILED")])
def test_a_failed_or_interrupted_phase_ends_its_run_and_records_nothing(workspace, tmp_path, error, status):
    with pytest.raises(type(error)):
        with tracking.phase_run(*workspace, PHASE, stage="train") as run:
            raise error
    assert _client().get_run(run.info.run_id).info.status == status
    assert not (tmp_path / "runs" / f"{PHASE}.json").exists(), "runs/<phase>.json must not name a failed run"
    with tracking.phase_run(*workspace, PHASE, stage="train") as run:
        pass
    assert _client().get_run(run.info.run_id).info.status == "FINISHED"
    assert run.info.run_id in (tmp_path / "runs" / f"{PHASE}.json").read_text()


def test_a_run_left_running_by_a_killed_process_is_ended_killed_at_the_next_start(workspace):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    client = _client()
    with tracking.phase_run(*workspace, PHASE, stage="train") as run:
        pass
    experiment = run.info.experiment_id
    orphan = client.create_run(experiment, tags={tracking.OWNER_PID: str(gone.pid),
                                                 tracking.OWNER_HOST: socket.gethostname()}).info.run_id
    alive = client.create_run(experiment, tags={tracking.OWNER_PID: str(os.getpid()),
                                                tracking.OWNER_HOST: socket.gethostname()}).info.run_id
    with tracking.resume_run(*workspace, PHASE, stage="evaluate"):
        pass
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(alive).info.status == "RUNNING", "a run whose process lives is left alone"
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_a_tracking_server_that_is_down_is_one_line_naming_the_uri(tmp_path, monkeypatch):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--default-artifact-root", str(tmp_path / "art")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert tracking.check_reachable(Workspace(tmp_path)) == uri
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    with pytest.raises(EnvironmentFault, match=rf"MLflow tracking server at MLFLOW_TRACKING_URI={uri} does not answer"):
        tracking.check_reachable(Workspace(tmp_path), timeout=2)
    # The stage itself: one line on stderr, exit status 1, before anything is loaded.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:secret@127.0.0.1:{port}")
    result = subprocess.run([sys.executable, str(REPO / "stages" / "evaluate.py"), "modernbert-xtr"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate@modernbert-xtr: error: the MLflow tracking server at "
                                                   f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}"), result.stderr
    assert "secret" not in result.stderr


def test_sigterm_is_one_line_and_exit_status_130(tmp_path):
    """A stage sent SIGTERM (a scheduler's kill, `kill PID`) ends with one line and status 130, no traceback."""
    import signal

    script = tmp_path / "slow.py"
    ready = tmp_path / "ready"
    script.write_text(
        "import pathlib, time\n"
        "from retrievers.pipeline import stage_main\n"
        "def slow(workspace, params, key):\n"
        f"    pathlib.Path({str(ready)!r}).write_text('')\n"
        "    time.sleep(120)\n"
        "stage_main(slow)\n"
    )
    process = subprocess.Popen([sys.executable, str(script), "x"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.exists(), process.communicate()[1][-2000:]
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "slow@x: interrupted; nothing was written (re-run to resume)"
    assert "Traceback" not in stderr
