"""Evaluate an already published checkpoint exactly as evaluate@<model> evaluates ours, next to its card.

    python -m retrievers.reproduce modernbert-xtr                       # models.<key>.reference from params.yaml
    python -m retrievers.reproduce modernbert-xtr --checkpoint robro612/ModernBERT-XTR@<commit>
    python -m retrievers.reproduce neobert-splade --checkpoint releases/neobert-splade --output cmp.json

The checkpoint (a Hub repository at a revision, or a local folder) is loaded with the stock loader of the
model's kind, evaluated with the model's ``evaluation`` config on the pipeline's local copy of the evaluation
data (``data/<evaluation.data>``, written by ``download@``), and every metric its card's ``model-index``
reports is printed next to the measured value. The exit status is 1 when a difference exceeds
``--tolerance``, so the command can gate a reproduction.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from retrievers.config import ConfigError, HubRepo, Params, load_params
from retrievers.errors import MissingInputError, exit_on_user_error
from retrievers.hub import hub_snapshot
from retrievers.io import write_json_atomic
from retrievers.paths import Workspace


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    origin: str  # "repo_id@commit" or the local folder


def resolve_checkpoint(params: Params, model_key: str, spec: str | None) -> Checkpoint:
    """``spec`` is a local folder, ``repo_id`` or ``repo_id@revision``; None means the model's params reference."""
    if spec is not None and Path(spec).is_dir():
        return Checkpoint(Path(spec), str(Path(spec)))
    if spec is None:
        repo = params.models[model_key].reference
        if repo is None:
            raise ConfigError(f"models.{model_key}.reference is not set; pass --checkpoint REPO_ID[@REVISION]")
    else:
        repo_id, _, revision = spec.partition("@")
        if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
            raise ConfigError(f"--checkpoint {spec}: neither a local folder nor a Hub repo id like owner/name[@rev]")
        repo = HubRepo(repo_id=repo_id, revision=revision or "main", repo_type="model")
    path, sha = hub_snapshot(repo)
    if not repo.pinned:
        print(f"note: {repo.repo_id}@{repo.revision} is not pinned; it resolved to commit {sha}", file=sys.stderr)
    return Checkpoint(path, f"{repo.repo_id}@{sha}")


def card_metrics(checkpoint: Path) -> dict[str, float]:
    """The card's model-index as flat evaluator keys ('NanoSciFact_dot_ndcg@10', 'NanoBEIR_mean_...')."""
    from huggingface_hub import metadata_load

    from retrievers.cards import flat_metrics

    readme = checkpoint / "README.md"
    model_index = (metadata_load(readme) or {}).get("model-index") if readme.exists() else None
    return flat_metrics([result for entry in model_index or [] for result in entry["results"]])


def compare(measured: dict[str, float], reported: dict[str, float]) -> list[dict]:
    """One row per metric the card reports (in the card's order): reported, measured and their difference."""
    rows = []
    for key, value in reported.items():
        ours = measured.get(key)
        rows.append({"metric": key, "card": value, "measured": ours, "diff": None if ours is None else ours - value})
    return rows


def evaluate_checkpoint(ws: Workspace, params: Params, model_key: str, checkpoint: Checkpoint) -> dict[str, float]:
    from retrievers.evaluate import evaluate_with, load_model

    config = params.models[model_key]
    data = ws.source_dir(config.evaluation.data)
    if not data.is_dir():
        raise MissingInputError(
            f"{data}: the evaluation data is missing; fetch it first with `dvc repro download@{config.evaluation.data}`"
        )
    return evaluate_with(ws, load_model(config, checkpoint.path), config.evaluation)


def _print_table(rows: list[dict], tolerance: float) -> None:
    print(f"{'metric':<48} {'card':>10} {'measured':>10} {'diff':>10}")
    for row in rows:
        measured = "missing" if row["measured"] is None else f"{row['measured']:.4f}"
        diff = "" if row["diff"] is None else f"{row['diff']:+.4f}"
        flag = " !" if row["diff"] is None or abs(row["diff"]) > tolerance else ""
        print(f"{row['metric']:<48} {row['card']:>10.4f} {measured:>10} {diff:>10}{flag}")


def run(ws: Workspace, model: str, checkpoint: str | None, params_file: Path, tolerance: float,
        output: Path | None) -> int:
    """Evaluate, print the comparison; 0 when every metric is within ``tolerance`` of the card, else 1."""
    params = load_params(params_file)
    if model not in params.models:
        raise ConfigError(f"unknown model {model!r}; models in {params_file}: {', '.join(params.models)}")
    resolved = resolve_checkpoint(params, model, checkpoint)
    measured = evaluate_checkpoint(ws, params, model, resolved)
    rows = compare(measured, card_metrics(resolved.path))
    if not rows:
        print(f"{resolved.origin}: its card reports no model-index; measured:")
        for key, value in measured.items():
            print(f"{key:<48} {value:>10.4f}")
    print(f"{resolved.origin}: {len(rows)} metrics reported by its card")
    _print_table(rows, tolerance)
    if output:
        write_json_atomic(output, {"checkpoint": resolved.origin, "metrics": measured, "comparison": rows})
    failed = [r["metric"] for r in rows if r["diff"] is None or abs(r["diff"]) > tolerance]
    if failed:
        print(f"{len(failed)} of {len(rows)} metrics differ from the card by more than {tolerance}")
    return 1 if failed else 0


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(help=__doc__.split("\n")[0])
def main(
    model: Annotated[str, typer.Argument(help="model key in params.yaml (e.g. modernbert-xtr)")],
    checkpoint: Annotated[str | None, typer.Option(
        help="local folder, or Hub repo id [@revision]; default: the params reference")] = None,
    workspace: Annotated[Path, typer.Option(help="workspace root (its data/ holds the evaluation sets)")] = Path("."),
    params: Annotated[Path | None, typer.Option(help="params file; default: the workspace's params.yaml")] = None,
    tolerance: Annotated[float, typer.Option(help="largest accepted |measured - card|")] = 0.005,
    output: Annotated[Path | None, typer.Option(help="write metrics and the comparison as JSON here")] = None,
) -> None:
    # Only the checkpoint download may use the network; evaluation data comes from the pipeline's local copy.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    ws = Workspace.at(workspace)  # the one place this command reads the process's working directory
    params_file = params if params is not None else ws.params_file
    status = exit_on_user_error(f"reproduce@{model}",
                                lambda: run(ws, model, checkpoint, params_file, tolerance, output))
    raise typer.Exit(status)


if __name__ == "__main__":
    app()
