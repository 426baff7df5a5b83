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
    what = f"{repo.repo_type} {repo.repo_id}@{repo.revision}"
    try:
        # Resolve a branch to its commit first, so what was fetched is recorded exactly.
        info = with_retries(lambda: HfApi().repo_info(repo.repo_id, revision=repo.revision, repo_type=repo.repo_type,
                                                      files_metadata=True), what)
        sha = info.sha or repo.revision
        path = with_retries(lambda: snapshot_download(
            repo.repo_id, revision=sha, repo_type=repo.repo_type, local_dir=local_dir,
            allow_patterns=repo.allow_patterns,
        ), what)
        verify_checksums(Path(path), info.siblings or [], what, repo, sha)
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


RETRIES = int(os.environ.get("RETRIEVERS_HUB_RETRIES", "5"))
BACKOFF_SECONDS = float(os.environ.get("RETRIEVERS_HUB_BACKOFF", "1.0"))


def _transient(error: BaseException) -> bool:
    """A dropped connection, a timeout or a 5xx answer: worth another try (huggingface_hub's downloads retry only
    408/429 answers themselves). Partial files stay as ``.incomplete`` and the next try resumes them (Range)."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, httpx.TransportError):
        return True
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        return error.response.status_code >= 500
    return isinstance(error, OSError) and "Consistency check failed" in str(error)


def with_retries(call, what: str, retries: int | None = None, backoff: float | None = None):
    """``call()``, tried again up to ``retries`` times after transient failures, waiting backoff * 2**attempt."""
    import logging
    import time

    retries = RETRIES if retries is None else retries
    backoff = BACKOFF_SECONDS if backoff is None else backoff
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as error:
            if attempt == retries or not _transient(error):
                raise
            wait = backoff * 2**attempt
            logging.getLogger(__name__).warning("%s: %s (%s); retrying in %.1f s (%d/%d)", what, type(error).__name__,
                                                str(error).splitlines()[0] if str(error) else "", wait, attempt + 1,
                                                retries)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _etag(repo: HubRepo, sha: str, filename: str) -> str | None:
    """The file's ETag at ``sha`` (a HEAD request): its sha256 if stored in LFS, its git blob sha1 otherwise."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo.repo_id, filename, revision=sha, repo_type=repo.repo_type)
    etag = with_retries(lambda: get_hf_file_metadata(url).etag, f"{repo.repo_id}/{filename}")
    return etag.strip('"').removeprefix("W/").strip('"') if etag else None


def verify_checksums(folder: Path, siblings, what: str, repo: HubRepo | None = None, sha: str = "") -> int:
    """Every downloaded file against the Hub's record of it: sha256 for LFS files, the git blob sha1 otherwise
    (from the repository's file metadata, or else the file's ETag). A mismatch fails loudly (DownloadError naming
    the file); returns how many files were checked."""
    checked = 0
    for sibling in siblings:
        path = folder / sibling.rfilename
        if not path.is_file():
            continue  # not fetched (allow_patterns)
        lfs = getattr(sibling, "lfs", None)
        expected = lfs.sha256 if lfs else sibling.blob_id
        if expected is None and repo is not None:
            expected = _etag(repo, sha, sibling.rfilename)
        if expected is None:
            continue
        actual = _sha256(path) if len(expected) == 64 else _git_blob_sha1(path)
        if actual != expected:
            raise DownloadError(
                f"download of {what}: checksum mismatch for {sibling.rfilename} (got {actual[:12]}, the Hub "
                f"records {expected[:12]}); delete {path} and re-run the download"
            )
        checked += 1
    return checked


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
