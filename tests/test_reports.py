"""Evaluation reports of the smoke run: `dvc metrics show/diff`, `dvc plots show`, and the same in MLflow."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from retrievers.reports import ndcg_rows

from .conftest import run

pytestmark = pytest.mark.slow
MODELS = ("modernbert-xtr", "neobert-splade")
PHASES = ("modernbert-xtr-contrastive", "modernbert-xtr", "neobert-splade")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def metrics_of(workspace: Path, model: str) -> dict[str, float]:
    return json.loads((workspace / "metrics" / f"{model}.json").read_text())


def test_plot_files_hold_the_loss_curves_and_per_set_ndcg(smoke_run):
    ws = smoke_run.workspace
    for phase in PHASES:
        rows = read_csv(ws / "plots" / phase / "loss.csv")
        steps = [int(r["step"]) for r in rows]
        assert len(rows) >= 3 and steps == sorted(steps) and all(float(r["loss"]) == float(r["loss"]) for r in rows)
    for model in MODELS:
        rows = read_csv(ws / "plots" / model / "ndcg.csv")
        metrics = metrics_of(ws, model)
        assert [r["dataset"] for r in rows] == [d for d, _ in ndcg_rows(metrics)]
        for r in rows:
            key = next(k for k in metrics if k.startswith(r["dataset"] + "_") and k.endswith("_ndcg@10"))
            assert float(r["ndcg@10"]) == metrics[key]


def test_dvc_plots_show_renders_every_plot(smoke_run, tmp_path):
    shown = json.loads(run(["dvc", "plots", "show", "--json"], cwd=smoke_run.workspace).stdout)
    expected = {f"plots/{p}/loss.csv" for p in PHASES} | {f"plots/{m}/ndcg.csv" for m in MODELS}
    assert not shown.get("errors"), shown.get("errors")
    assert expected <= set(shown["data"]), set(shown["data"])
    html = run(["dvc", "plots", "show", "-o", str(tmp_path / "html")], cwd=smoke_run.workspace)
    assert (tmp_path / "html" / "index.html").exists(), html.stdout


def test_dvc_metrics_show_and_diff(smoke_run, tmp_path):
    ws = smoke_run.workspace
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], cwd=ws).stdout)
    flat = json.dumps(shown)
    for model in MODELS:
        assert f"metrics/{model}.json" in flat
        value = metrics_of(ws, model)["NanoBEIR_mean_" + ("MaxSim" if "xtr" in model else "dot") + "_ndcg@10"]
        assert repr(value) in flat or str(value) in flat

    # `metrics diff` compares against a git revision: a git copy of the metrics-only part of the workspace.
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvc/config", "metrics"):
        source = ws / name
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, repo / name)
    run(["git", "init", "-q"], cwd=repo)
    run(["dvc", "config", "core.no_scm", "false"], cwd=repo)
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "metrics"], cwd=repo)
    changed = metrics_of(ws, "neobert-splade")
    changed["NanoBEIR_mean_dot_ndcg@10"] += 0.125
    (repo / "metrics" / "neobert-splade.json").write_text(json.dumps(changed, indent=2))
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], cwd=repo).stdout)
    entry = diff["metrics/neobert-splade.json"]["NanoBEIR_mean_dot_ndcg@10"]
    assert entry["diff"] == pytest.approx(0.125)
    assert "metrics/modernbert-xtr.json" not in diff  # unchanged files are not listed


def test_mlflow_holds_the_same_metrics_and_the_plots(smoke_run):
    from mlflow import MlflowClient

    from retrievers.tracking import mlflow_metric_name

    ws = smoke_run.workspace
    client = MlflowClient(tracking_uri=f"sqlite:///{ws}/mlflow.db")
    for model in MODELS:
        run_id = json.loads((ws / "runs" / f"{model}.json").read_text())["run_id"]
        logged = client.get_run(run_id).data.metrics
        for key, value in metrics_of(ws, model).items():
            assert logged[mlflow_metric_name(key)] == pytest.approx(value, abs=1e-12), key
        plots = {Path(a.path).name for a in client.list_artifacts(run_id, "plots")}
        assert {"ndcg.csv", "ndcg.png", "loss.csv", "loss.png"} <= plots, plots
    for phase in PHASES:
        run_id = json.loads((ws / "runs" / f"{phase}.json").read_text())["run_id"]
        history = {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
        curve = {int(r["step"]): float(r["loss"]) for r in read_csv(ws / "plots" / phase / "loss.csv")}
        assert curve and all(history[s] == pytest.approx(v, rel=1e-6) for s, v in curve.items()), phase
