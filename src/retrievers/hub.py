"""Getting models and data: the Hub (one download wrapper, one error mapping), the MLflow registry, local folders.

:func:`hub_snapshot` is the only place that calls ``huggingface_hub.snapshot_download``: the download stages,
``retrievers download`` and ``python -m retrievers.reproduce`` all go through it, and every failure ends in one
:class:`~retrievers.errors.DownloadError` line naming the repository and what to do.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from retrievers import models
from retrievers.config import HubRepo
from retrievers.errors import CLIError, DownloadError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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
        folder, _ = hub_snapshot(HubRepo(repo_id=repo_id, revision=revision or "main", repo_type="model"), at=spec)
    if out is not None:
        shutil.copytree(folder, out, dirs_exist_ok=True)
        folder = out
    models.folder_kind(folder)
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
