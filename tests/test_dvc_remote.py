"""The S3 DVC remote: the smoke pipeline's outputs pushed to an S3 server on loopback (moto, a stand-in for
AWS S3 or MinIO) are what a fresh clone pulls; after the pull `dvc repro` has nothing to run."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from .conftest import REPO, run

pytestmark = pytest.mark.slow
BUCKET = "retrievers-dvc"


@pytest.fixture
def s3_env():
    """A moto S3 server on 127.0.0.1 with an empty bucket; the environment that points DVC at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    keys = {"aws_access_key_id": "stand-in", "aws_secret_access_key": "stand-in"}
    credentials = {name.upper(): value for name, value in keys.items()} | {"AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys).create_bucket(Bucket=BUCKET)
    yield credentials | {"DVC_REMOTE_URL": f"s3://{BUCKET}/cache", "DVC_S3_ENDPOINT": endpoint}
    server.stop()


def git_tracked_outputs(workspace: Path) -> list[Path]:
    """dvc.lock and every output declared `cache: false`: they live in git, not in the remote, so a clone has
    them with the committed dvc.lock. Read from the pipeline itself, so a new uncached output cannot be missed."""
    from dvc.repo import Repo

    with Repo(str(workspace)) as repo:
        uncached = [Path(out.fs_path) for stage in repo.index.stages for out in stage.outs if not out.use_cache]
    return [workspace / "dvc.lock", *uncached]


def configure_remote(workspace: Path, env: dict[str, str]) -> None:
    """`make dvc-remote` (what the workflows run), without its environment set-up step."""
    run(["make", "-s", "-o", ".venv/.synced", "dvc-remote", f"DVC_DIR={workspace}"], cwd=REPO, env=env)


def test_fresh_clone_pulls_the_pushed_outputs_and_has_nothing_to_reproduce(smoke_run, tmp_path, s3_env):
    pushed = tmp_path / "pushed"
    shutil.copytree(smoke_run.workspace, pushed, symlinks=True)  # configuring a remote writes .dvc/config.local
    configure_remote(pushed, s3_env)
    assert "s3://" in (pushed / ".dvc" / "config.local").read_text()
    assert "stand-in" not in (pushed / ".dvc" / "config.local").read_text(), "credentials stay in the environment"
    push = run(["dvc", "push"], cwd=pushed, env=s3_env)
    assert "pushed" in push.stdout

    clone = tmp_path / "clone"
    run([sys.executable, "-m", "retrievers.profile", "smoke", str(clone)], cwd=REPO)
    tracked = git_tracked_outputs(pushed)
    assert {"dvc.lock", "metrics/modernbert-xtr.json", "plots/neobert-splade/loss.csv"} <= {
        f.relative_to(pushed).as_posix() for f in tracked
    }
    for file in tracked:
        target = clone / file.relative_to(pushed)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)
    assert not (clone / "models").exists()
    configure_remote(clone, s3_env)
    run(["dvc", "pull"], cwd=clone, env=s3_env)

    for phase in ("modernbert-xtr", "neobert-splade"):
        assert (clone / "models" / phase / "model.safetensors").read_bytes() == (
            pushed / "models" / phase / "model.safetensors"
        ).read_bytes()
    status = run(["dvc", "status"], cwd=clone, env=s3_env)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    repro = run(["dvc", "repro"], cwd=clone, env=s3_env)
    assert "Running stage" not in repro.stdout, repro.stdout
    assert "didn't change, skipping" in repro.stdout
