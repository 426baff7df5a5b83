"""One function per dvc.yaml stage. Stage scripts parse the key and call these; nothing else."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import yaml

from retrievers import models, paths, tracking
from retrievers.config import ConfigError, Params, flatten, load_params
from retrievers.io import write_json_atomic, write_text_atomic

logger = logging.getLogger("retrievers")


def download(params: Params, key: str) -> None:
    from retrievers.data.download import download_source

    if key not in params.sources:
        raise ConfigError(f"unknown source {key!r}; sources in params.yaml: {', '.join(params.sources)}")
    download_source(key, params.sources[key])


def train(params: Params, phase_key: str) -> None:
    from retrievers.train import run_phase

    run_phase(params, phase_key)


def _model(params: Params, model_key: str):
    if model_key not in params.models:
        raise ConfigError(f"unknown model {model_key!r}; models in params.yaml: {', '.join(params.models)}")
    return params.models[model_key]


def evaluate(params: Params, model_key: str) -> None:
    import mlflow

    from retrievers.evaluate import evaluate_model
    from retrievers.reports import log_plot, write_ndcg_plot

    _model(params, model_key)
    metrics = evaluate_model(params, model_key)
    write_json_atomic(paths.metrics_file(model_key), metrics, sort_keys=False)  # the evaluator's order, as cards
    ndcg_plot = write_ndcg_plot(model_key, metrics)
    with tracking.resume_run(params, model_key, stage="evaluate"):
        mlflow.log_metrics({tracking.mlflow_metric_name(k): v for k, v in metrics.items()})
        mlflow.log_artifact(str(paths.metrics_file(model_key)), artifact_path="metrics")
        log_plot(ndcg_plot, "ndcg", f"{model_key}: nDCG@10 per NanoBEIR set")


def _source_description(params: Params, folder: str) -> str:
    kind, _, key = folder.partition("/")
    if kind != "data":
        return folder
    record_file = paths.source_dir(key) / "SOURCE.json"
    record = json.loads(record_file.read_text()) if record_file.exists() else {}
    if "repo_id" in record:
        return f"{record['repo_id']}@{record.get('resolved_sha', record['revision'])}"
    return record.get("path", folder)


def _dvc_lock_hashes() -> dict[str, str]:
    lock = Path("dvc.lock")
    if not lock.exists():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {
        out["path"]: out.get("md5", "")
        for name, stage in stages.items()
        if name.startswith("download@")
        for out in stage.get("outs", [])
    }


CARD_VERSIONS = ("torch", "transformers", "sentence-transformers", "pylate", "datasets", "tokenizers",
                 "huggingface-hub")


def _hub_repo_id(params: Params, folder: str) -> str | None:
    """The Hub repository behind ``data/<source>`` (None for local folders and ``models/`` paths)."""
    kind, _, key = folder.partition("/")
    hub = params.sources[key].hub if kind == "data" else None
    return hub.repo_id if hub else None


def _indented_json(data) -> str:
    return json.dumps(data, indent=2).replace("\n", "\n  ")


def _phase_card_entry(params: Params, key: str, phase) -> dict:
    from retrievers.cards.arguments import card_hyperparameters_of

    non_default, everything = card_hyperparameters_of(params, key)
    loss_name, loss_parameters = models.for_phase(phase).loss_description(phase)
    size = _dataset_size(params, phase)
    return {
        "key": key,
        "recipe": phase.recipe,
        "init": phase.init,
        "dataset": _source_description(params, phase.data),
        "size": "the whole dataset" if size is None else models.for_phase(phase).size_text(phase, size),
        "loss_name": loss_name,
        "loss_parameters": _indented_json(loss_parameters),
        "recipe_settings": {k: v for k, v in flatten(phase).items()
                            if not k.startswith("args.") and k not in ("recipe", "model", "init", "data")},
        "non_default": non_default,
        "all": everything,
    }


def _evaluation_datasets(params: Params, model_key: str, metrics: dict) -> dict[str, tuple[str, str | None]]:
    """NanoBEIR set -> (dataset id, revision) it was evaluated on: the Hub repository, or the local folder."""
    source = params.sources[params.models[model_key].evaluation.data]

    def describe(repo) -> tuple[str, str | None]:
        return (repo.repo_id, repo.revision) if hasattr(repo, "repo_id") else (str(repo.path), None)

    if source.members:
        return {name: describe(repo) for name, repo in source.members.items()}
    sets = {key.partition("_")[0] for key in metrics if key.startswith("Nano") and not key.startswith("NanoBEIR_")}
    return dict.fromkeys(sets, describe(source.hub or source.local))


def card(params: Params, model_key: str) -> None:
    """Render the card from files alone (no model load, no MLflow: release logs the card to the run), and the
    Hub's ``.eval_results`` entries beside it."""
    from retrievers.cards import describe_architecture, eval_result_entries, render_card

    model = _model(params, model_key)
    kind = models.for_model(model)
    chain = params.phase_chain(model_key)
    phases = [params.phases[k] for k in chain]
    first, final = phases[0], phases[-1]
    hashes = _dvc_lock_hashes()
    inputs = {
        folder: _source_description(params, folder) + (f" (dvc md5 {hashes[folder]})" if folder in hashes else "")
        for phase in phases for folder in (phase.init, phase.data) if folder.startswith("data/")
    }
    model_dir = paths.model_dir(model_key)
    metrics = json.loads(paths.metrics_file(model_key).read_text())
    context = {
        "repo_id": model.hub_repo_id,
        "profile": params.profile,
        "final": final,
        "base_model_id": _source_description(params, first.init),
        "training_data": sorted({_source_description(params, p.data) for p in phases}),
        "architecture": describe_architecture(model_dir, model.kind),
        "embedding_size": kind.embedding_size(final, model_dir),
        "evaluator_name": kind.EVALUATOR_NAME,
        "per_set_evaluator": kind.PER_SET_EVALUATOR,
        "evaluator_config": _indented_json({"dataset_names": model.evaluation.datasets}),
        "phases": [_phase_card_entry(params, k, p) for k, p in zip(chain, phases, strict=True)],
        "versions": {"python": sys.version.split()[0]} | {name: metadata.version(name) for name in CARD_VERSIONS},
        "provenance": {
            "git_commit": tracking.base_tags(params, "card")["git_commit"],
            "mlflow_run_id": json.loads(paths.run_record(model_key).read_text())["run_id"],
            "inputs": inputs,
        },
    }
    training_repos = sorted({r for p in phases if (r := _hub_repo_id(params, p.data))})
    text = render_card(model_key, model, context, metrics,
                       _hub_repo_id(params, first.init), training_repos, _dataset_size(params, final))
    entries = eval_result_entries(metrics, _evaluation_datasets(params, model_key, metrics))
    write_text_atomic(paths.eval_results_file(model_key), yaml.safe_dump(entries, sort_keys=False))
    write_text_atomic(paths.card_file(model_key), text)


def _dataset_size(params: Params, phase) -> int | None:
    return models.for_phase(phase).dataset_size(phase)


def release(params: Params, model_key: str) -> None:
    from retrievers.release import release_model

    _model(params, model_key)
    release_model(params, model_key)


USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError)


OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def stage_main(run: Callable[[Params, str], None], argv: list[str] | None = None) -> None:
    """Entry point of a stage script: ``python stages/<stage>.py <key>``. Errors a user can cause end the
    process with one line on stderr and exit status 1. Only download stages may use the network; the
    others run with the Hub libraries' offline switches on (set before they are imported), except release,
    whose Hub push (off unless models.<model>.release.hub.push) needs huggingface_hub online."""
    if run not in (download, release):
        os.environ.update(OFFLINE_ENV)
    from retrievers.errors import DownloadError, KDDataError, ReleaseError

    argv = sys.argv[1:] if argv is None else argv
    name = Path(sys.argv[0]).stem
    if len(argv) != 1:
        sys.exit(f"usage: python stages/{name}.py <key>")
    logging.basicConfig(
        level=os.environ.get("RETRIEVERS_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    errors: tuple[type[BaseException], ...] = (*USER_ERRORS, DownloadError, KDDataError, ReleaseError)
    try:
        run(load_params(), argv[0])
    except errors as error:
        sys.exit(f"{name}@{argv[0]}: error: {error}")
