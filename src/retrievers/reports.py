"""Evaluation reports: the CSV files that ``dvc plots`` draws, and the same curves logged to MLflow.

- ``plots/<phase>/loss.csv`` (step, loss): the training loss of a phase, written by train@<phase> from the
  trainer's log history (which a resumed run restores from its checkpoint, so the curve is whole).
- ``plots/<model>/ndcg.csv`` (dataset, ndcg@10): per-NanoBEIR-set nDCG@10, written by evaluate@<model>.
MLflow gets the per-step loss from the trainer's own MLflow callback and the metrics from evaluate; these
functions add the CSV files and a rendered figure of each to the run's artifacts.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from retrievers.io import write_text_atomic
from retrievers.paths import Workspace

NDCG = "ndcg@10"


def _csv(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def loss_rows(log_history: list[dict]) -> list[list]:
    """(step, loss) of every training-loss entry of a trainer's ``state.log_history``."""
    return [[entry["step"], entry["loss"]] for entry in log_history if "loss" in entry and "step" in entry]


def ndcg_rows(metrics: dict[str, float]) -> list[list]:
    """(dataset, nDCG@10) per NanoBEIR set, from the evaluator's flat keys ('NanoSciFact_dot_ndcg@10');
    the mean ('NanoBEIR_mean_...') is left out."""
    return [
        [key.partition("_")[0], value]
        for key, value in metrics.items()
        if key.endswith("_" + NDCG) and key.startswith("Nano") and not key.startswith("NanoBEIR_mean_")
    ]


def write_loss_curve(ws: Workspace, phase_key: str, log_history: list[dict]) -> Path:
    path = ws.loss_plot(phase_key)
    write_text_atomic(path, _csv(["step", "loss"], loss_rows(log_history)))
    return path


def write_ndcg_plot(ws: Workspace, model_key: str, metrics: dict[str, float]) -> Path:
    path = ws.ndcg_plot(model_key)
    write_text_atomic(path, _csv(["dataset", NDCG], ndcg_rows(metrics)))
    return path


def log_plot(path: Path, plot: str, title: str) -> None:
    """Log a plots CSV and its figure (a line for 'loss', bars for 'ndcg') to the active MLflow run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    with path.open() as handle:
        header, *rows = list(csv.reader(handle))
    figure, axis = plt.subplots(figsize=(6, 3.5))
    if plot == "loss":
        axis.plot([int(r[0]) for r in rows], [float(r[1]) for r in rows])
    else:
        axis.barh([r[0] for r in rows], [float(r[1]) for r in rows])
    axis.set_xlabel(header[0] if plot == "loss" else header[1])
    axis.set_ylabel(header[1] if plot == "loss" else header[0])
    axis.set_title(title)
    figure.tight_layout()
    mlflow.log_artifact(str(path), artifact_path="plots")
    mlflow.log_figure(figure, f"plots/{path.stem}.png")
    plt.close(figure)
