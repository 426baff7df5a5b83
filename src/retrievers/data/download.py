"""download@<key>: fetch a source into data/<key> at its pinned revision, atomically.

Hub sources go through ``huggingface_hub.snapshot_download``; local folders (the bundled fixture, laid out
as the Hub serves them) are copied. Either way ``data/<key>/SOURCE.json`` records what was fetched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from retrievers import paths
from retrievers.config import HubRepo, LocalFolder, Source
from retrievers.io import atomic_dir


class DownloadError(RuntimeError):
    """One line: which repository failed and what to do."""


def hub_snapshot(repo: HubRepo, local_dir: Path | None = None) -> tuple[Path, str]:
    """Fetch ``repo`` at its revision (into ``local_dir``, or the Hub cache) -> (folder, resolved commit sha).

    Failures end in one :class:`DownloadError` line naming the repository and what to do."""
    import httpx
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
    )

    hint = (
        "no Hub access here: run the offline smoke profile instead (`make smoke`), or allow network "
        "access and unset HF_HUB_OFFLINE"
    )
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    try:
        # Resolve a branch to its commit first, so what was fetched is recorded exactly.
        sha = HfApi().repo_info(repo.repo_id, revision=repo.revision, repo_type=repo.repo_type).sha or repo.revision
        path = snapshot_download(
            repo.repo_id, revision=sha, repo_type=repo.repo_type, local_dir=local_dir,
            allow_patterns=repo.allow_patterns,
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, OSError, httpx.TransportError) as error:
        kind = type(error).__name__
        raise DownloadError(
            f"download of {repo.repo_type} {repo.repo_id}@{repo.revision} failed ({kind}); {hint}"
        ) from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise DownloadError(
            f"download of {repo.repo_type} {repo.repo_id}@{repo.revision}: the Hub answered {status} "
            "(check the repo id and revision in params.yaml; gated repos need HF_TOKEN)"
        ) from None
    except HFValidationError as error:
        raise DownloadError(f"download of {repo.repo_id}@{repo.revision}: {error}") from None
    return Path(path), sha


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
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _fetch_local(folder: LocalFolder, target: Path) -> dict:
    if not folder.path.is_dir():
        raise DownloadError(f"local source {folder.path} is not a folder; regenerate the fixture with `make fixture`")
    actual = folder_digest(folder.path)
    if folder.sha256 is not None and actual != folder.sha256:
        raise DownloadError(
            f"local source {folder.path} changed since its profile was materialised "
            "(sha256 mismatch); re-run `make smoke` to refresh the workspace"
        )
    shutil.copytree(folder.path, target, dirs_exist_ok=True)
    return {"path": str(folder.path), "sha256": actual}


def _fetch(spec: HubRepo | LocalFolder, target: Path) -> dict:
    return _fetch_hub(spec, target) if isinstance(spec, HubRepo) else _fetch_local(spec, target)


def download_source(key: str, source: Source) -> Path:
    """Fetch ``source`` into data/<key> (replacing it whole only when every part succeeded)."""
    target = paths.source_dir(key)
    with atomic_dir(target) as scratch:
        if source.members is not None:
            record = {name: _fetch(spec, scratch / name) for name, spec in source.members.items()}
        else:
            spec = source.hub or source.local
            assert spec is not None, "Source's validator requires exactly one of hub, local, members"
            record = _fetch(spec, scratch)
        (scratch / "SOURCE.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return target
