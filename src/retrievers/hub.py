"""Getting models and data: the Hub (one download wrapper, one error mapping), the MLflow registry, local folders.

:func:`hub_snapshot` is the only place that calls ``huggingface_hub.snapshot_download``: the download stages,
``retrievers download`` and ``python -m retrievers.reproduce`` all go through it, and every failure ends in one
:class:`~retrievers.errors.DownloadError` line naming the repository and what to do.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from retrievers.errors import CLIError, DownloadError
from retrievers.io import file_sha256, hash_file

if TYPE_CHECKING:  # the config models (pydantic) load only where a Hub repository is named
    from retrievers.config import HubRepo

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_TIMEOUT_S = 10.0  # per request: an unreachable Hub fails within seconds, not after the library's retries


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
    hash_file(digest, path)
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
        actual = file_sha256(path) if len(expected) == 64 else _git_blob_sha1(path)
        if actual != expected:
            raise DownloadError(
                f"{what}: checksum mismatch for {sibling.rfilename} (got {actual[:12]}, the Hub "
                f"records {expected[:12]}); delete {path} and re-run the download"
            )
        checked += 1
    return checked


def hub_snapshot(repo: HubRepo, local_dir: Path | None = None, at: str | None = None) -> tuple[Path, str]:
    """Fetch ``repo`` at its revision (into ``local_dir``, or the Hub cache) -> (folder, resolved commit sha).

    Failures end in one :class:`DownloadError` line that starts with ``at`` (default ``repo_id@revision``),
    names the repository and says what to do."""
    import httpx
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = at or f"{repo.repo_id}@{repo.revision}"
    hint = (
        "no Hub access here: run the offline smoke profile instead (`make smoke`), or allow network "
        "access and unset HF_HUB_OFFLINE"
    )
    try:
        # Resolve a branch to its commit first, so what was fetched is recorded exactly.
        # Transient failures (5xx, dropped connections) are retried with backoff; partial files are resumed.
        info = with_retries(lambda: HfApi().repo_info(repo.repo_id, revision=repo.revision, repo_type=repo.repo_type,
                                                      files_metadata=True, timeout=HUB_TIMEOUT_S), at)
        sha = info.sha or repo.revision
        path = with_retries(lambda: snapshot_download(
            repo.repo_id, revision=sha, repo_type=repo.repo_type, local_dir=local_dir,
            allow_patterns=repo.allow_patterns, etag_timeout=HUB_TIMEOUT_S,
        ), at)
        verify_checksums(Path(path), info.siblings or [], at, repo, sha)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, OSError, httpx.TransportError) as error:
        kind = type(error).__name__
        raise DownloadError(f"{at}: download of {repo.repo_type} {repo.repo_id} failed ({kind}); {hint}") from None
    except RevisionNotFoundError:
        raise DownloadError(f"{at}: {repo.repo_id} has no revision {repo.revision!r} on {constants.ENDPOINT}") from None
    except RepositoryNotFoundError:  # some servers (olah) answer this for a missing revision too
        raise DownloadError(f"{at}: not found on {constants.ENDPOINT} (check the repository id, the revision, "
                            "and HF_TOKEN if it is private or gated)") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise DownloadError(
            f"{at}: download of {repo.repo_type} {repo.repo_id}: the Hub answered {status} "
            "(check the repo id and revision; gated repos need HF_TOKEN)"
        ) from None
    except HFValidationError as error:
        raise DownloadError(f"{at}: {error}") from None
    return Path(path), sha


def fetch(spec: str, out: Path | None = None) -> Path:
    """A local folder holding the model named by ``spec``: a path, ``models:/name@alias`` or ``org/name[@rev]``."""
    if Path(spec).expanduser().exists():
        folder = Path(spec).expanduser()
    elif spec.startswith("models:/"):
        folder = _from_registry(spec)
    else:
        repo_id, _, revision = spec.partition("@")
        if not HUB_ID.match(repo_id):
            raise CLIError(f"unknown model {spec!r}: give a local folder, models:/<name>@<alias> or <org>/<name>[@rev]")
        from retrievers.config import HubRepo

        folder, _ = hub_snapshot(HubRepo(repo_id=repo_id, revision=revision or "main", repo_type="model"), at=spec)
    if out is not None:
        shutil.copytree(folder, out, dirs_exist_ok=True)
        folder = out
    return folder


def _from_registry(uri: str) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except MlflowException as error:
        raise CLIError(f"{uri}: {str(error).splitlines()[0]} (tracking URI {mlflow.get_tracking_uri()})") from None
    import yaml

    mlmodel = model_dir / "MLmodel"
    flavor = yaml.safe_load(mlmodel.read_text()).get("flavors", {}) if mlmodel.exists() else {}
    bundle_path = flavor.get("python_function", {}).get("artifacts", {}).get("bundle", {}).get("path")
    if not bundle_path or not (model_dir / bundle_path).is_dir():
        raise CLIError(f"{uri} is not a retrievers release (its MLmodel has no 'bundle' artifact)")
    return model_dir / bundle_path
