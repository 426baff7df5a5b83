"""One function per dvc.yaml stage. Stage scripts parse the key and call these; nothing else."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
import yaml

from retrievers import tracking
from retrievers.config import ConfigError, Params, flatten, load_params
from retrievers.errors import exit_on_user_error
from retrievers.io import remove_stale_scratch, write_json_atomic, write_text_atomic
from retrievers.killpoints import kill_point
from retrievers.paths import Workspace

logger = logging.getLogger("retrievers")


def download(ws: Workspace, params: Params, key: str) -> None:
    from retrievers.data.download import download_source

    if key not in params.sources:
        raise ConfigError(f"unknown source {key!r}; sources in params.yaml: {', '.join(params.sources)}")
    download_source(ws, key, params.sources[key])


def train(ws: Workspace, params: Params, phase_key: str) -> None:
    from retrievers.train import run_phase

    tracking.check_reachable(ws)
    run_phase(ws, params, phase_key)


def _model(params: Params, model_key: str):
    if model_key not in params.models:
        raise ConfigError(f"unknown model {model_key!r}; models in params.yaml: {', '.join(params.models)}")
    return params.models[model_key]


def evaluate(ws: Workspace, params: Params, model_key: str) -> None:
    import mlflow

    from retrievers.data.validate import check_model_folder
    from retrievers.evaluate import check_evaluation_data, evaluate_model
    from retrievers.reports import log_plot, write_ndcg_plot

    _model(params, model_key)
    tracking.check_reachable(ws)
    check_model_folder(ws.model_dir(model_key), f"re-run `dvc repro --force train@{model_key}`")
    check_evaluation_data(ws, params.models[model_key].evaluation)
    metrics = evaluate_model(ws, params, model_key)
    kill_point("evaluated")
    write_json_atomic(ws.metrics_file(model_key), metrics, sort_keys=False)  # the evaluator's order, as cards
    ndcg_plot = write_ndcg_plot(ws, model_key, metrics)
    with tracking.resume_run(ws, params, model_key, stage="evaluate"):
        mlflow.log_metrics({tracking.mlflow_metric_name(k): v for k, v in metrics.items()})
        mlflow.log_artifact(str(ws.metrics_file(model_key)), artifact_path="metrics")
        log_plot(ndcg_plot, "ndcg", f"{model_key}: nDCG@10 per NanoBEIR set")


def _source_description(ws: Workspace, folder: str) -> str:
    top, _, key = folder.partition("/")
    if top != "data":
        return folder
    record_file = ws.source_dir(key) / "SOURCE.json"
    record = json.loads(record_file.read_text()) if record_file.exists() else {}
    if "repo_id" in record:
        return f"{record['repo_id']}@{record.get('resolved_sha', record['revision'])}"
    return record.get("path", folder)


def _dvc_lock_hashes(ws: Workspace) -> dict[str, str]:
    lock = ws.dvc_lock
    if not lock.exists():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {
        out["path"]: out.get("md5", "")
        for name, stage in stages.items()
        if name.startswith("download@")
        for out in stage.get("outs", [])
    }


def _hub_repo_id(params: Params, folder: str) -> str | None:
    """The Hub repository behind ``data/<source>`` (None for local folders and ``models/`` paths)."""
    top, _, key = folder.partition("/")
    hub = params.sources[key].hub if top == "data" else None
    return hub.repo_id if hub else None


def _indented_json(data) -> str:
    return json.dumps(data, indent=2).replace("\n", "\n  ")


def _described_source(record: dict, folder: str) -> str:
    """'repo_id@commit' of a Hub source as its SOURCE.json recorded it at training time, else the local path."""
    if "repo_id" in record:
        return f"{record['repo_id']}@{record.get('resolved_sha', record['revision'])}"
    return record.get("path", folder)


def _phase_card_entry(params: Params, record: dict) -> dict:
    """One phase of the card, from what train@ recorded (models/<phase>/training_record.json)."""
    data = record["data"]
    return {
        "key": record["phase"],
        "recipe": record["recipe"],
        "init": record["init"],
        "dataset": _described_source(data["source"], data["folder"]),
        "size": f"{data['train_samples']:,} training samples ({data['steps']:,} steps)",
        "checkpoint": _checkpoint_text(record.get("selected_checkpoint")),
        "loss_name": record["loss"]["class"],
        "loss_parameters": _indented_json(record["loss"]["config"]),
        "recipe_settings": {k: v for k, v in flatten(params.phases[record["phase"]]).items()
                            if not k.startswith("args.") and k not in ("recipe", "model", "init", "data")},
        "non_default": record["non_default_trainer_arguments"],
        "all": record["trainer_arguments"],
    }


def _checkpoint_text(selected: dict | None) -> str:
    """Which checkpoint of the phase's run the model is, from its training record (written by train@)."""
    if not selected:
        return "the last step"
    value = f" = {selected['value']:.4f}" if selected.get("value") is not None else ""
    if selected["rule"] == "best":
        return (f"step {selected['step']} of {selected['of_steps']}: the best in-training `{selected['metric']}`"
                f"{value} (`load_best_model_at_end`)")
    return f"the last step, {selected['step']}" + (f" (`{selected['metric']}`{value})" if value else "")


def _evaluation_datasets(params: Params, model_key: str, metrics: dict) -> dict[str, tuple[str, str | None]]:
    """NanoBEIR set -> (dataset id, revision) it was evaluated on: the Hub repository, or the local folder."""
    source = params.sources[params.models[model_key].evaluation.data]

    def describe(repo) -> tuple[str, str | None]:
        return (repo.repo_id, repo.revision) if hasattr(repo, "repo_id") else (str(repo.path), None)

    if source.members:
        return {name: describe(repo) for name, repo in source.members.items()}
    sets = {key.partition("_")[0] for key in metrics if key.startswith("Nano") and not key.startswith("NanoBEIR_")}
    return dict.fromkeys(sets, describe(source.hub or source.local))


def card(ws: Workspace, params: Params, model_key: str) -> None:
    """Render the card from files alone (no model load, no MLflow: release logs the card to the run), and the
    Hub's ``.eval_results`` entries beside it."""
    from retrievers import models
    from retrievers.cards import describe_architecture, eval_result_entries, render_card
    from retrievers.train.record import read_records

    model = _model(params, model_key)
    kind = models.for_model(model)
    chain = params.phase_chain(model_key)
    phases = [params.phases[k] for k in chain]
    first, final = phases[0], phases[-1]
    hashes = _dvc_lock_hashes(ws)
    inputs = {
        folder: _source_description(ws, folder) + (f" (dvc md5 {hashes[folder]})" if folder in hashes else "")
        for phase in phases for folder in (phase.init, phase.data) if folder.startswith("data/")
    }
    model_dir = ws.model_dir(model_key)
    records = read_records(model_dir)
    metrics = json.loads(ws.metrics_file(model_key).read_text())
    context = {
        "repo_id": model.hub_repo_id,
        "profile": params.profile,
        "final": final,
        "base_model_id": _source_description(ws, first.init),
        "training_data": sorted({_source_description(ws, p.data) for p in phases}),
        "architecture": describe_architecture(model_dir, model.kind),
        "embedding_size": kind.embedding_size(final, model_dir),
        "evaluator_name": kind.EVALUATOR_NAME,
        "per_set_evaluator": kind.PER_SET_EVALUATOR,
        "evaluator_config": _indented_json({"dataset_names": model.evaluation.datasets}),
        "phases": [_phase_card_entry(params, record) for record in records],
        "versions": records[-1]["versions"],  # as train@ recorded them
        "provenance": {
            "git_commit": tracking.base_tags(ws, params, "card")["git_commit"],
            "mlflow_run_id": json.loads(ws.run_record(model_key).read_text())["run_id"],
            "inputs": inputs,
        },
    }
    training_repos = sorted({r for p in phases if (r := _hub_repo_id(params, p.data))})
    loss_tags = list(dict.fromkeys(f"loss:{name}" for record in records for name in record["loss_classes"]))
    text = render_card(ws.card_templates, model_key, model, context, metrics, _hub_repo_id(params, first.init),
                       training_repos, records[-1]["data"]["train_samples"], loss_tags)
    entries = eval_result_entries(metrics, _evaluation_datasets(params, model_key, metrics))
    write_text_atomic(ws.eval_results_file(model_key), yaml.safe_dump(entries, sort_keys=False))
    kill_point("card")  # between the card's two files
    write_text_atomic(ws.card_file(model_key), text)


def release(ws: Workspace, params: Params, model_key: str) -> None:
    from retrievers.release import release_model

    _model(params, model_key)
    tracking.check_reachable(ws)
    release_model(ws, params, model_key)


OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def remove_stale_download_scratch(ws: Workspace, params: Params | None) -> None:
    """At every stage's start: remove the scratch copies of data/<source> (``atomic_dir``'s names only) that a
    download killed inside its write left. DVC can restore download@ from its run-cache without running it, so the
    download's own next write may never come to remove them. Not in torchrun's ranks (their launcher did it)."""
    if isinstance(params, Params) and "LOCAL_RANK" not in os.environ:
        for source in params.sources:
            remove_stale_scratch(ws.source_dir(source))


def stage_main(run: Callable[[Workspace, Params, str], None], argv: list[str] | None = None) -> None:
    """Entry point of a stage script: ``python stages/<stage>.py <key> [--workspace ROOT]`` (dvc.yaml passes no
    root: DVC runs stages from the workspace root, the default). Errors a user can cause end the
    process with one line on stderr and exit status 1. Only download stages may use the network; the
    others run with the Hub libraries' offline switches on (set before they are imported), except release,
    whose Hub push (off unless models.<model>.release.hub.push) needs huggingface_hub online."""
    if run not in (download, release):
        os.environ.update(OFFLINE_ENV)
    name = Path(sys.argv[0]).stem

    def command(
        key: Annotated[str, typer.Argument(help="the stage key (a key of sources, phases or models)")],
        workspace: Annotated[Path, typer.Option(help="workspace root: params.yaml, data/, models/, ...")] = Path("."),
    ) -> None:
        ws = Workspace.at(workspace)  # the one place a stage reads the process's working directory
        logging.basicConfig(level=os.environ.get("RETRIEVERS_LOG_LEVEL", "INFO"),
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM ends the stage's MLflow run KILLED, as Ctrl-C does
        kill_point(f"start:{name}")

        def start() -> None:
            params = load_params(ws.params_file)
            remove_stale_download_scratch(ws, params)
            run(ws, params, key)

        exit_on_user_error(f"{name}@{key}", start)

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=(run.__doc__ or name).split("\n")[0])(command)
    app(args=sys.argv[1:] if argv is None else argv, prog_name=f"python stages/{name}.py")
