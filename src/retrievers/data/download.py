"""download@<key>: fetch a source into data/<key> at its pinned revision, atomically.

Hub sources go through ``retrievers.hub.hub_snapshot`` (``huggingface_hub.snapshot_download``); local
folders (the bundled fixture, laid out as the Hub serves them) are copied.
Either way ``data/<key>/SOURCE.json`` records what was fetched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from retrievers.config import HubRepo, LocalFolder, Source
from retrievers.errors import DownloadError
from retrievers.hub import hub_snapshot
from retrievers.io import atomic_dir, file_sha256
from retrievers.paths import Workspace


def _fetch_hub(repo: HubRepo, target: Path) -> dict:
    path, sha = hub_snapshot(repo, target)
    shutil.rmtree(path / ".cache", ignore_errors=True)
    return {
        "repo_id": repo.repo_id,
        "repo_type": repo.repo_type,
        "revision": repo.revision,
        "resolved_sha": sha,
        "pinned": repo.pinned,
    }


def folder_digest(folder: Path) -> str:
    """sha256 over the sorted relative paths and contents of every file below ``folder``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()


def _fetch_local(ws: Workspace, folder: LocalFolder, target: Path) -> dict:
    """Copy a local folder (``path`` relative to the workspace root, as params.yaml names it, and so recorded)."""
    source = ws.folder(folder.path)
    if not source.is_dir():
        raise DownloadError(f"local source {folder.path} is not a folder; regenerate the fixture with `make fixture`")
    actual = folder_digest(source)
    if folder.sha256 is not None and actual != folder.sha256:
        raise DownloadError(
            f"local source {folder.path} changed since its profile was materialised "
            "(sha256 mismatch); re-run `make smoke` to refresh the workspace"
        )
    shutil.copytree(source, target, dirs_exist_ok=True)
    return {"path": str(folder.path), "sha256": actual}


def _fetch(ws: Workspace, spec: HubRepo | LocalFolder, target: Path) -> dict:
    return _fetch_hub(spec, target) if isinstance(spec, HubRepo) else _fetch_local(ws, spec, target)


def download_source(ws: Workspace, key: str, source: Source) -> Path:
    """Fetch ``source`` into data/<key> (replacing it whole only when every part succeeded)."""
    target = ws.source_dir(key)
    with atomic_dir(target) as scratch:
        if source.members is not None:
            record = {name: _fetch(ws, spec, scratch / name) for name, spec in source.members.items()}
        else:
            spec = source.hub or source.local
            assert spec is not None, "Source's validator requires exactly one of hub, local, members"
            record = _fetch(ws, spec, scratch)
        (scratch / "SOURCE.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return target
