"""A Hub download through a connection that fails: 5xx answers and a dropped connection are retried with backoff and
the partial file resumed; a file whose bytes do not match the Hub's checksum fails loudly. The Hub is olah (a real
Hub-compatible server, offline, serving a git repository) behind a loopback proxy that injects the faults."""

from __future__ import annotations

import http.client
import json
import random
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .conftest import REPO, olah_offline, run

pytestmark = pytest.mark.slow
REPO_ID = "faults/tiny"
WEIGHTS = REPO / "fixtures" / "models" / "tiny-modernbert"


class FaultyProxy:
    """Forwards to ``upstream``; answers the first ``fail_first`` requests 503, cuts the first download of
    ``shard.bin`` off half-way, or (``corrupt``) flips a byte of ``model.safetensors``."""

    def __init__(self, upstream: int, fail_first: int = 0, drop_once: bool = False, corrupt: bool = False):
        self.upstream, self.fail_first, self.drop_once, self.corrupt = upstream, fail_first, drop_once, corrupt
        self.log: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                entry = f"{self.command} {self.path} range={self.headers.get('Range')}"
                if proxy.fail_first > 0:
                    proxy.fail_first -= 1
                    proxy.log.append("503 " + entry)
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                connection = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "accept-encoding")}
                connection.request(self.command, self.path, headers=headers)
                answer = connection.getresponse()
                body = answer.read()
                ok = self.command == "GET" and answer.status < 300
                if ok and self.path.endswith("/model.safetensors") and proxy.corrupt:
                    body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
                weights = ok and self.path.endswith("/shard.bin")
                self.send_response(answer.status)
                head = self.command == "HEAD"
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection") and (head or key.lower() !=
                                                                                     "content-length"):
                        self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if weights and proxy.drop_once:
                    proxy.drop_once = False
                    proxy.log.append("dropped " + entry)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                proxy.log.append(f"{answer.status} " + entry)
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def olah(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    repo = root / "models" / REPO_ID
    repo.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(WEIGHTS / name, repo / name)
    # Larger than huggingface_hub's 10 MiB download chunk, so a connection cut half-way leaves a partial file.
    (repo / "shard.bin").write_bytes(random.Random(0).randbytes(24 << 20))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "tiny"], cwd=repo, check=True)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    with olah_offline(root, tmp_path_factory.mktemp("olah")) as port:
        yield port, sha


CODE = """
import json, sys
from pathlib import Path
from retrievers.config import HubRepo
from retrievers.errors import DownloadError
from retrievers.hub import hub_snapshot
try:
    path, sha = hub_snapshot(HubRepo(repo_id=sys.argv[1], revision=sys.argv[2], repo_type="model"), Path(sys.argv[3]))
    print(json.dumps({"path": str(path), "sha": sha}))
except DownloadError as error:
    print(json.dumps({"error": str(error)}))
"""


def _download(endpoint: str, sha: str, target) -> dict:
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "RETRIEVERS_HUB_BACKOFF": "0.05",
           "HF_HOME": str(target.parent / "hf-home"), "HF_HUB_DISABLE_XET": "1"}
    result = run([sys.executable, "-c", CODE, REPO_ID, sha, str(target)], cwd=target.parent, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1]) | {"stderr": result.stderr}


def test_5xx_answers_and_a_dropped_connection_are_retried_and_resumed(olah, tmp_path):
    port, sha = olah
    proxy = FaultyProxy(port, fail_first=3, drop_once=True)
    try:
        outcome = _download(proxy.endpoint, sha, tmp_path / "out")
    finally:
        proxy.close()
    assert "error" not in outcome, outcome
    assert outcome["sha"] == sha
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "out" / name).read_bytes() == (WEIGHTS / name).read_bytes()
    assert (tmp_path / "out" / "shard.bin").read_bytes() == random.Random(0).randbytes(24 << 20)
    assert sum(line.startswith("503 ") for line in proxy.log) == 3
    dropped = [line for line in proxy.log if line.startswith("dropped ")]
    assert len(dropped) == 1, proxy.log
    resumed = [line for line in proxy.log if "/shard.bin" in line and "range=bytes=" in line]
    assert resumed, f"the second try did not resume the partial file: {proxy.log}"
    assert "retrying in" in outcome["stderr"]


def test_a_checksum_mismatch_fails_loudly(olah, tmp_path):
    port, sha = olah
    proxy = FaultyProxy(port, corrupt=True)
    try:
        outcome = _download(proxy.endpoint, sha, tmp_path / "out")
    finally:
        proxy.close()
    assert outcome.get("error", "").startswith(f"{REPO_ID}@{sha}: checksum mismatch for model.safetensors"), outcome
