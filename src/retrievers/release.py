"""release@<model>: bundle exactly what was evaluated, verify it from its own folder, register it in MLflow.

The bundle (``releases/<model>/``) is the trained model folder (safetensors weights, configs, tokenizer)
plus the card (README.md) and metrics.json. Verification reloads the bundle with the stock loader and
checks that its encodings of the probe texts equal those of the trained model. The MLflow Model Registry
entry is a pyfunc model whose artifact is the bundle, so ``mlflow.pyfunc.load_model`` can encode with it.
When ``models.<model>.release.hub.push`` is on and HF_TOKEN is set, the bundle goes to ``hub_repo_id`` as one
commit and a version tag; ``hub.dry_run`` prints the files and sizes instead. The token is read from the
environment and handed to huggingface_hub only: it is never logged, printed or written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np

import retrievers
from retrievers import models, tracking
from retrievers.config import ModelConfig, Params
from retrievers.errors import ReleaseError
from retrievers.io import atomic_dir, write_json_atomic
from retrievers.killpoints import kill_point
from retrievers.paths import Workspace

logger = logging.getLogger(__name__)
ALIAS = "candidate"
RUNTIME_PACKAGES = ("torch", "transformers", "sentence-transformers", "pylate", "fast-plaid", "pyseismic-lsr",
                    "mlflow", "pydantic", "pyyaml", "wrapt", "pandas")
HUB_OWN_FILES = (".gitattributes",)  # created by the Hub with the repository, not part of a release


def check_gate(model_key: str, config: ModelConfig, metrics_path: Path) -> float:
    """The gate metric's value; refuses a missing file or metric, a value that is not a finite number (NaN compares
    false with everything, so it is named explicitly) and one below ``gate_min``."""
    key = f"models.{model_key}.release"
    if not metrics_path.exists():
        raise ReleaseError(f"{metrics_path} is missing; run `dvc repro evaluate@{model_key}` before releasing")
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as error:
        raise ReleaseError(f"{metrics_path}: not valid JSON ({error}); re-run `dvc repro evaluate@{model_key}`"
                           ) from None
    if not isinstance(metrics, dict) or config.release.gate_metric not in metrics:
        raise ReleaseError(
            f"{metrics_path} has no {config.release.gate_metric!r}; check {key}.gate_metric in params.yaml"
        )
    raw = metrics[config.release.gate_metric]
    value = float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else math.nan
    if not math.isfinite(value):
        raise ReleaseError(
            f"{metrics_path}: {config.release.gate_metric} = {raw!r} is not a finite number; the model cannot be "
            f"released (re-train it: `dvc repro --force train@{model_key}`)"
        )
    if not value >= config.release.gate_min:
        raise ReleaseError(
            f"{config.release.gate_metric} = {value:.4f} is below the release gate "
            f"{config.release.gate_min} ({key}.gate_min)"
        )
    return value


def verify_bundle(config: ModelConfig, trained: Path, bundle: Path) -> float:
    """Max absolute difference between the bundle's and the trained model's probe encodings (must be ~0)."""
    from retrievers.evaluate import load_model

    probe = config.release.probe_texts
    # Absolute paths: a relative one ("models/x") reads as a Hub repo id when the Hub is online (push on).
    kind = models.for_model(config)
    expected = kind.encode_probe(load_model(config, trained.resolve()), probe)
    got = kind.encode_probe(load_model(config, bundle.resolve()), probe)
    diffs = [float(np.max(np.abs(a - b))) if a.shape == b.shape and a.size else math.inf
             for a, b in zip(expected, got, strict=True)]
    # Not max(): max() with a NaN depends on the order; any NaN (a NaN weight) must fail, so test "not <=".
    worst = math.nan if any(math.isnan(d) for d in diffs) else max(diffs)
    if not worst <= 1e-5:
        raise ReleaseError(f"bundle {bundle} does not reproduce the trained model (max |diff| = {worst:.3g})")
    return worst


def _pyfunc_class():
    """Defined on call so that importing this module does not import mlflow."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    class RetrieverModel(mlflow.pyfunc.PythonModel):
        """Encode texts with a released retriever bundle: ColBERT token vectors (column ``embedding``) or SPLADE
        term weights (column ``terms``), as queries unless the request's params say ``is_query: false``."""

        def load_context(self, context):
            bundle = Path(context.artifacts["bundle"])
            release = json.loads((bundle / "release.json").read_text())
            self.kind = models.kind_module(release["kind"])
            self.model = self.kind.load(bundle)

        def predict(self, context, model_input, params=None):
            import pandas as pd

            texts = list(model_input["text"]) if hasattr(model_input, "columns") else list(model_input)
            bad = next((i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()), None)
            if bad is not None:  # one line, no traceback: MLflow returns it as the response's message
                raise MlflowException(f"row {bad}: 'text' must be a non-empty string", error_code=BAD_REQUEST)
            return pd.DataFrame({self.kind.PYFUNC_OUTPUT: self.kind.predict(self.model, texts, params)})

    return RetrieverModel


def pyfunc_signature(kind: str):
    """Input: a ``text`` column of strings; params: ``is_query`` (default true); output: per text, the kind's
    column (ColBERT's token vectors, SPLADE's term -> weight map)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec(DataType.string, "text")]),
                          outputs=Schema([models.kind_module(kind).pyfunc_output_spec()]),
                          params=ParamSchema([ParamSpec("is_query", DataType.boolean, True)]))


def pyfunc_requirements() -> list[str]:
    """What the registered model needs where it is served: this package travels with the model as code
    (``code_paths``; it is not on PyPI), and the libraries it runs on are pinned at their released versions."""
    return [f"{name}=={metadata.version(name)}" for name in RUNTIME_PACKAGES]


NEOBERT_CODE = "modeling_neobert.py"


def add_neobert_code(folder: Path) -> bool:
    """Make a NeoBERT model folder self-contained: copy the native modeling code in as remote code and point
    config.json's ``auto_map`` to it, so that ``trust_remote_code=True`` loads it where this package is not
    installed. With the package imported, the registered native class is used and the copy is not needed.
    Returns False (and changes nothing) for other architectures."""
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    if config.get("model_type") != "neobert":
        return False
    from retrievers.models import neobert  # plain Python source; importing it also imports transformers

    shutil.copyfile(neobert.__file__, folder / NEOBERT_CODE)
    module = Path(NEOBERT_CODE).stem
    config["auto_map"] = {"AutoConfig": f"{module}.NeoBERTConfig", "AutoModel": f"{module}.NeoBERT",
                          "AutoModelForMaskedLM": f"{module}.NeoBERTLMHead"}
    write_json_atomic(config_file, config)
    return True


def assemble_bundle(ws: Workspace, model_key: str, config: ModelConfig, target: Path, gate_value: float) -> None:
    """Copy the evaluated model, its card and metrics into ``target`` (atomically); a NeoBERT model also gets
    its modeling code (see ``add_neobert_code``)."""
    with atomic_dir(target) as scratch:
        shutil.copytree(ws.model_dir(model_key), scratch, dirs_exist_ok=True)
        add_neobert_code(scratch)
        shutil.copy2(ws.card_file(model_key), scratch / "README.md")
        # The Hub reads eval results from .eval_results/ at the repository root, beside the card.
        eval_results = ws.eval_results_file(model_key)
        (scratch / ".eval_results").mkdir()
        shutil.copy2(eval_results, scratch / ".eval_results" / eval_results.name)
        shutil.copy2(ws.metrics_file(model_key), scratch / "metrics.json")
        write_json_atomic(
            scratch / "release.json",
            {
                "model": model_key,
                "kind": config.kind,
                "hub_repo_id": config.hub_repo_id,
                "gate_metric": config.release.gate_metric,
                "gate_value": gate_value,
            },
        )


def register(ws: Workspace, params: Params, model_key: str, bundle: Path) -> dict:
    """Log the bundle as a pyfunc model in the model's MLflow run and register a new version with an alias."""
    import mlflow
    from mlflow import MlflowClient

    config = params.models[model_key]
    with tracking.resume_run(ws, params, model_key, stage="release") as run:
        mlflow.log_artifact(str(ws.card_file(model_key)), artifact_path="card")
        info = mlflow.pyfunc.log_model(
            name="retriever",
            python_model=_pyfunc_class()(),
            artifacts={"bundle": str(bundle)},
            signature=pyfunc_signature(config.kind),
            code_paths=[str(Path(retrievers.__file__).parent)],
            pip_requirements=pyfunc_requirements(),
            metadata={"retrievers_version": retrievers.__version__, "kind": config.kind},
            registered_model_name=config.release.registered_model_name,
        )
        version = info.registered_model_version
        kill_point("registry")  # registered, alias not yet moved
        client = MlflowClient()
        client.set_registered_model_alias(config.release.registered_model_name, ALIAS, version)
        client.set_model_version_tag(config.release.registered_model_name, version, "run_id", run.info.run_id)
        return {
            "registered_model": config.release.registered_model_name,
            "version": int(version),
            "alias": ALIAS,
            "run_id": run.info.run_id,
            "model_uri": info.model_uri,
        }


def bundle_files(bundle: Path) -> list[tuple[str, int]]:
    """(path in repo, size in bytes) of every file of the bundle, sorted: exactly what a push commits."""
    return sorted((p.relative_to(bundle).as_posix(), p.stat().st_size) for p in bundle.rglob("*") if p.is_file())


def format_push_plan(repo_id: str, tag: str, files: list[tuple[str, int]]) -> str:
    lines = [f"dry run: would push {len(files)} files ({sum(s for _, s in files):,} bytes) to {repo_id} "
             f"as one commit tagged {tag}"]
    lines += [f"{size:>14,}  {name}" for name, size in files]
    return "\n".join(lines)


class HubPublisher:
    """One release's push: check the tag before anything is registered, then commit and tag."""

    def __init__(self, model_key: str, config: ModelConfig):
        from huggingface_hub import HfApi

        self.key, self.repo_id, self.hub = model_key, config.hub_repo_id, config.release.hub
        self.token = os.environ.get("HF_TOKEN") or None
        if not self.token:
            raise ReleaseError(
                f"models.{model_key}.release.hub.push is on but HF_TOKEN is not set; export HF_TOKEN "
                "(a write token) or set push: false"
            )
        self.api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=self.token)

    @staticmethod
    def _transport_errors() -> tuple[type[BaseException], ...]:
        import httpx
        from huggingface_hub.errors import HfHubHTTPError

        return HfHubHTTPError, httpx.HTTPError, OSError

    def _hub_error(self, action: str, error: BaseException) -> ReleaseError:
        return ReleaseError(f"{action} {self.repo_id} on {self.api.endpoint} failed: {str(error).splitlines()[0]}")

    def tag_exists(self) -> bool:
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            refs = self.api.list_repo_refs(self.repo_id)
        except RepositoryNotFoundError:
            return False
        except self._transport_errors() as error:
            raise self._hub_error("listing the tags of", error) from None
        return any(tag.name == self.hub.tag for tag in refs.tags)

    def preflight(self) -> bool:
        """Refuse (unless forced) when the version tag exists already; True when it exists."""
        exists = self.tag_exists()
        if exists and not self.hub.force:
            raise ReleaseError(
                f"{self.repo_id} already has tag {self.hub.tag}; bump models.{self.key}.release.hub.tag "
                "or set force: true to move it"
            )
        return exists

    def push(self, bundle: Path, tag_exists: bool, message: str) -> dict:
        """One commit that makes the repository's files exactly the bundle's: every bundle file added, every
        file of the previous release that the bundle no longer has deleted (the Hub's own files kept)."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        names = [name for name, _ in bundle_files(bundle)]
        operations: list = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(bundle / name)) for name in names]
        try:
            self.api.create_repo(self.repo_id, exist_ok=True)
            stale = sorted(set(self.api.list_repo_files(self.repo_id)) - set(names) - set(HUB_OWN_FILES))
            operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
            commit = self.api.create_commit(self.repo_id, operations=operations, commit_message=message)
            kill_point("hub-push")  # committed, not yet tagged
            if tag_exists:
                self.api.delete_tag(self.repo_id, tag=self.hub.tag)
            self.api.create_tag(self.repo_id, tag=self.hub.tag, revision=commit.oid, tag_message=message)
        except self._transport_errors() as error:
            raise self._hub_error("pushing to", error) from None
        logger.info("pushed %s files (deleted %s) to %s@%s (%s)", len(names), len(stale), self.repo_id, self.hub.tag,
                    commit.oid)
        return {"repo_id": self.repo_id, "tag": self.hub.tag, "commit": commit.oid, "endpoint": self.api.endpoint,
                "deleted": stale}


def release_model(ws: Workspace, params: Params, model_key: str) -> dict:
    config = params.models[model_key]
    hub = config.release.hub
    from retrievers.data.validate import check_model_folder

    gate_value = check_gate(model_key, config, ws.metrics_file(model_key))
    check_model_folder(ws.model_dir(model_key), f"re-run `dvc repro --force train@{model_key}`")
    publisher = HubPublisher(model_key, config) if hub.push and not hub.dry_run else None
    tag_exists = publisher.preflight() if publisher else False  # refuse before anything is written
    bundle = ws.release_dir(model_key)
    assemble_bundle(ws, model_key, config, bundle, gate_value)
    diff = verify_bundle(config, ws.model_dir(model_key), bundle)
    files = bundle_files(bundle)
    record = register(ws, params, model_key, bundle) | {
        "bundle": str(bundle),
        "verified_max_abs_diff": diff,
        "files": [name for name, _ in files],
        "hub": None,
    }
    if hub.dry_run:
        print(format_push_plan(config.hub_repo_id, hub.tag, files), flush=True)
        record["hub"] = {"dry_run": True, "repo_id": config.hub_repo_id, "tag": hub.tag}
    elif publisher:
        message = f"{config.title} {hub.tag}: {config.release.gate_metric} = {gate_value:.4f}"
        record["hub"] = publisher.push(bundle, tag_exists, message)
    write_json_atomic(bundle.with_suffix(".json"), record)
    logger.info("released %s as %s v%s", model_key, record["registered_model"], record["version"])
    return record
