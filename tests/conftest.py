"""Shared fixtures. Everything is offline; the smoke pipeline runs once per session in a temp workspace."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from retrievers.pipeline import OFFLINE_ENV as STAGE_OFFLINE_ENV

REPO = Path(__file__).resolve().parents[1]
OFFLINE_ENV = STAGE_OFFLINE_ENV | {"TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def olah_offline(mirrors: Path, folder: Path):
    """olah (a Hub mirror server from PyPI) in offline mode on loopback, serving the git repositories under
    ``mirrors`` (laid out as ``<models|datasets>/<org>/<name>``) the way the Hub serves them; yields its port."""
    port = free_port()
    (folder / "olah.toml").write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nmirror-netloc = "127.0.0.1:{port}"\n'
        f'mirror-lfs-netloc = "127.0.0.1:{port}"\nrepos-path = "{folder}/cache"\nmirrors-path = ["{mirrors}"]\n'
        "[accessibility]\noffline = true\n"
    )
    with open(folder / "olah.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "olah.server", "-c", "olah.toml"], cwd=folder, stdout=log,
                                  stderr=subprocess.STDOUT)
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        try:
            yield port
        finally:
            server.terminate()
            server.wait(timeout=20)


@functools.cache
def _published_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def published(*keys: str, **updates) -> dict:
    """A copy of one block of the repository's params.yaml (config.py has no recipe defaults), with ``updates``
    merged over it, e.g. ``published("phases", "neobert-splade", "splade", max_seq_length=32)``."""
    from retrievers.profile import deep_merge

    block = _published_params()
    for key in keys:
        block = block[key]
    return deep_merge(copy.deepcopy(block), updates)


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True):
    full_env = os.environ | OFFLINE_ENV | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=full_env | (env or {}), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


class SmokeRun:
    def __init__(self, workspace: Path, seconds: float, output: str):
        self.workspace, self.seconds, self.output = workspace, seconds, output


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> SmokeRun:
    """`make smoke`'s two steps, into a fresh workspace: materialise the profile, then `dvc repro`.

    RETRIEVERS_SMOKE_WORKSPACE=<finished workspace, e.g. build/smoke> reuses one instead (`dvc repro` still
    runs there, normally a no-op): for iterating on tests on a busy machine, not for CI."""
    reuse = os.environ.get("RETRIEVERS_SMOKE_WORKSPACE")
    workspace = Path(reuse).resolve() if reuse else tmp_path_factory.mktemp("smoke") / "ws"
    mlflow_uri = f"sqlite:///{workspace}/mlflow.db"
    if not reuse:
        run([sys.executable, "-m", "retrievers.profile", "smoke", str(workspace)], cwd=REPO)
    start = time.perf_counter()
    result = run(["dvc", "repro"], cwd=workspace, env={"MLFLOW_TRACKING_URI": mlflow_uri})
    return SmokeRun(workspace, time.perf_counter() - start, result.stdout + result.stderr)


@pytest.fixture(scope="session")
def tiny_splade(tmp_path_factory) -> Path:
    """An untrained SPLADE model on the fixture's tiny NeoBERT, built in seconds: for tests of the index and
    the service, which do not depend on training."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    import retrievers  # noqa: F401  (native NeoBERT)

    folder = tmp_path_factory.mktemp("models") / "splade"
    SparseEncoder(modules=[MLMTransformer(str(REPO / "fixtures" / "models" / "tiny-neobert"), max_seq_length=64),
                           SpladePooling("max")], device="cpu").save(str(folder))
    return folder
