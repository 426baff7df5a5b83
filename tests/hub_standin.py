"""A STAND-IN for the Hugging Face Hub's upload API, on loopback, for tests (the real Hub is outside this world).

It implements only what ``HfApi.create_repo / list_repo_refs / list_repo_files / create_commit / create_tag /
delete_tag`` call
(plus the anonymous agent-registry lookup huggingface_hub makes first),
checks what the client sends (bearer token, preupload samples and sizes, the commit's ndjson), and keeps each
repository as a real git repository under ``root/models/<org>/<name>``: the layout olah's ``mirrors-path``
serves, so a test can download what was pushed through a real Hub-compatible server.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GIT = ["git", "-c", "user.name=hub stand-in", "-c", "user.email=standin@localhost"]


class HubStandIn:
    def __init__(self, root: Path, token: str):
        self.root, self.token = root, token
        self.requests: list[tuple[str, str]] = []  # (method, path), in order
        self.rejected: list[str] = []  # why a request was refused (bad token, malformed payload)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def repo_dir(self, repo_id: str) -> Path:
        return self.root / "models" / repo_id

    def git(self, repo_id: str, *args: str) -> str:
        return subprocess.run([*GIT, *args], cwd=self.repo_dir(repo_id), check=True, capture_output=True,
                              text=True).stdout.strip()

    def tags(self, repo_id: str) -> dict[str, str]:
        if not self.repo_dir(repo_id).exists():
            return {}
        return {name: self.git(repo_id, "rev-parse", f"{name}^{{commit}}")
                for name in self.git(repo_id, "tag", "--list").splitlines()}

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _reply(self, status: int, body: dict | list | None = None, headers: dict | None = None):
                data = json.dumps({} if body is None else body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _refuse(self, status: int, why: str):
                standin.rejected.append(why)
                self._reply(status, {"error": why})

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _route(self, method: str):
                standin.requests.append((method, self.path))
                body = self._body() if method in ("POST", "PUT") else b""
                if method == "GET" and self.path == "/api/agent-harnesses":  # huggingface_hub asks, anonymously
                    return self._reply(200, {"standardEnvVars": [], "harnesses": {}})
                if self.headers.get("Authorization") != f"Bearer {standin.token}":
                    return self._refuse(401, "missing or wrong bearer token")
                path = self.path.split("?", 1)[0]
                if method == "POST" and path == "/api/repos/create":
                    return self._create(json.loads(body))
                if method == "POST" and path == "/api/validate-yaml":
                    return self._reply(200, {"warnings": []})
                match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(refs|preupload|commit|tag|tree)(?:/(.+))?", path)
                if not match:
                    return self._refuse(404, f"stand-in has no route {method} {path}")
                repo_id, action, rest = match.groups()
                if not standin.repo_dir(repo_id).exists():
                    return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                if method == "GET" and action == "refs":
                    tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": c}
                            for n, c in standin.tags(repo_id).items()]
                    return self._reply(200, {"branches": [], "converts": [], "tags": tags, "pullRequests": []})
                if method == "GET" and action == "tree":
                    return self._tree(repo_id, rest)
                if method == "POST" and action == "preupload":
                    return self._preupload(json.loads(body))
                if method == "POST" and action == "commit":
                    return self._commit(repo_id, body)
                if method == "POST" and action == "tag":
                    return self._tag(repo_id, rest, json.loads(body))
                if method == "DELETE" and action == "tag":
                    standin.git(repo_id, "tag", "-d", rest)
                    return self._reply(200)
                return self._refuse(405, f"stand-in does not serve {method} {path}")

            def _create(self, payload: dict):
                repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") \
                    else payload["name"]
                folder = standin.repo_dir(repo_id)
                url = f"{standin.endpoint}/{repo_id}"
                if folder.exists():
                    return self._reply(409, {"error": "You already created this model repo", "url": url})
                folder.mkdir(parents=True)
                standin.git(repo_id, "init", "-q", "-b", "main")
                standin.git(repo_id, "commit", "-q", "--allow-empty", "-m", "initial commit")
                return self._reply(200, {"url": url})

            def _preupload(self, payload: dict):
                files = payload.get("files", [])
                for item in files:
                    sample = base64.b64decode(item["sample"])
                    if not item["path"] or item["size"] < len(sample) or len(sample) > 512:
                        return self._refuse(400, f"malformed preupload entry {item['path']!r}")
                return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                   for f in files]})

            def _commit(self, repo_id: str, body: bytes):
                if self.headers.get("Content-Type") != "application/x-ndjson":
                    return self._refuse(400, "commit payload is not ndjson")
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                if not lines or lines[0].get("key") != "header" or not lines[0]["value"].get("summary"):
                    return self._refuse(400, "commit payload has no header with a summary")
                folder = standin.repo_dir(repo_id)
                for line in lines[1:]:
                    if line["key"] == "deletedFile":
                        (folder / line["value"]["path"]).unlink()
                        continue
                    if line["key"] != "file" or line["value"].get("encoding") != "base64":
                        return self._refuse(400, f"stand-in accepts only inline base64 files and deletions, "
                                                 f"got {line['key']}")
                    target = folder / line["value"]["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(base64.b64decode(line["value"]["content"]))
                standin.git(repo_id, "add", "-A")
                standin.git(repo_id, "commit", "-q", "--allow-empty", "-m", lines[0]["value"]["summary"])
                oid = standin.git(repo_id, "rev-parse", "HEAD")
                return self._reply(200, {"commitUrl": f"{standin.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid,
                                         "success": True})

            def _tree(self, repo_id: str, revision: str | None):
                """Every file at ``revision`` (recursive listing, one page): what ``list_repo_files`` reads."""
                if (revision or "main").split("/")[0] != "main":
                    return self._refuse(400, "stand-in lists only the main branch")
                listing = standin.git(repo_id, "ls-tree", "-r", "-l", "HEAD")
                files = []
                for row in listing.splitlines():
                    meta, name = row.split("\t", 1)
                    _, _, oid, size = meta.split()
                    files.append({"type": "file", "path": name, "size": int(size), "oid": oid})
                return self._reply(200, files)

            def _tag(self, repo_id: str, revision: str, payload: dict):
                if payload["tag"] in standin.tags(repo_id):
                    return self._reply(409, {"error": f"tag {payload['tag']} already exists"})
                standin.git(repo_id, "tag", "-a", payload["tag"], "-m", payload.get("message") or payload["tag"],
                            revision)
                return self._reply(200)

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_DELETE(self):
                self._route("DELETE")

        return Handler
