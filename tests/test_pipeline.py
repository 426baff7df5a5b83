"""The smoke pipeline end to end: real DVC, real MLflow, stock loaders, a no-op second run."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from .conftest import REPO, run

pytestmark = pytest.mark.slow
MODELS = {"modernbert-xtr": "NanoBEIR_mean_MaxSim_ndcg@10", "neobert-splade": "NanoBEIR_mean_dot_ndcg@10"}


def test_trained_models_load_with_the_stock_libraries(smoke_run):
    from pylate.models import ColBERT
    from sentence_transformers import SparseEncoder

    colbert = ColBERT(str(smoke_run.workspace / "models" / "modernbert-xtr"))
    vectors = colbert.encode(["what is a query"], is_query=True, show_progress_bar=False)
    assert vectors[0].shape == (32, 128)  # query length 32 (with expansion), 128-dim tokens
    splade = SparseEncoder(str(smoke_run.workspace / "models" / "neobert-splade"))
    sparse = splade.encode(["what is a query"], convert_to_sparse_tensor=False)
    assert sparse.shape == (1, splade.get_sentence_embedding_dimension()) and float(sparse.min()) >= 0
    assert type(splade[0].auto_model).__name__ == "NeoBERTLMHead"  # the native NeoBERT, through the Auto classes
    assert 0 < int((sparse > 0).sum()) < sparse.shape[1], "a trained SPLADE vector is sparse"


def test_metrics_and_cards_exist_with_the_card_metric_names(smoke_run):
    for model, key in MODELS.items():
        metrics = json.loads((smoke_run.workspace / "metrics" / f"{model}.json").read_text())
        assert 0.0 <= metrics[key] <= 1.0
        card = (smoke_run.workspace / "model_cards" / model / "README.md").read_text()
        front = yaml.safe_load(card.split("---")[1])
        results = front["model-index"][0]["results"]
        mean = [r for r in results if r["dataset"]["type"] == "NanoBEIR_mean"]
        assert mean and any(m["value"] == pytest.approx(metrics[key]) for m in mean[0]["metrics"])
    sparse = json.loads((smoke_run.workspace / "metrics" / "neobert-splade.json").read_text())
    for key in ("query_active_dims", "corpus_active_dims", "query_sparsity_ratio", "corpus_sparsity_ratio",
                "avg_flops"):
        assert f"NanoBEIR_mean_{key}" in sparse
    assert 0 < sparse["NanoBEIR_mean_corpus_sparsity_ratio"] < 1


def test_mlflow_holds_params_losses_metrics_artifacts_tags_and_registry(smoke_run):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{smoke_run.workspace}/mlflow.db")
    for model, key in MODELS.items():
        experiment = client.get_experiment_by_name(model)
        assert experiment is not None, f"no MLflow experiment {model}"
        record = json.loads((smoke_run.workspace / "runs" / f"{model}.json").read_text())
        final = client.get_run(record["run_id"])
        assert final.info.experiment_id == experiment.experiment_id
        assert "phase.args.learning_rate" in final.data.params and final.data.params["seed"] == "42"
        assert len(client.get_metric_history(final.info.run_id, "loss")) >= 3, "per-step training loss"
        assert key.replace("@", "_at_") in final.data.metrics
        tags = final.data.tags
        assert tags["git_commit"] and tags["dvc_experiment"] and tags["stage"] == "release"
        assert tags["stage.evaluate"] == "done" and tags["profile"] == "smoke"
        artifacts = {a.path for a in client.list_artifacts(final.info.run_id)}
        assert {"card", "metrics"} <= artifacts
        version = client.get_model_version_by_alias(model, "candidate")
        assert version.run_id == final.info.run_id


def test_registered_models_load_and_encode_through_mlflow(smoke_run):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{smoke_run.workspace}/mlflow.db")
    import pandas as pd

    texts = pd.DataFrame({"text": ["what is a query"]})
    colbert = mlflow.pyfunc.load_model("models:/modernbert-xtr@candidate")
    tokens = colbert.predict(texts)["embedding"]
    assert len(tokens) == 1 and len(tokens[0]) == 32 and len(tokens[0][0]) == 128
    splade = mlflow.pyfunc.load_model("models:/neobert-splade@candidate")
    weights = splade.predict(texts)["terms"][0]
    assert weights and all(w > 0 for w in weights.values())


def test_release_bundle_is_verified_and_complete(smoke_run):
    for model in MODELS:
        record = json.loads((smoke_run.workspace / "releases" / f"{model}.json").read_text())
        assert record["verified_max_abs_diff"] <= 1e-5
        assert {"model.safetensors", "README.md", "metrics.json", "tokenizer.json", "modules.json"} <= set(
            record["files"]
        )


def test_second_repro_is_a_no_op_and_the_checkout_is_untouched(smoke_run):
    before = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    result = run(
        ["dvc", "repro"],
        cwd=smoke_run.workspace,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{smoke_run.workspace}/mlflow.db"},
    )
    assert "Running stage" not in result.stdout, result.stdout[-2000:]
    assert "Data and pipelines are up to date" in result.stdout + result.stderr
    after = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    assert before == after


def test_splade_model_is_its_best_in_training_checkpoint_in_mlflow_the_metrics_and_the_card(smoke_run):
    """train@neobert-splade kept the checkpoint with the best in-training nDCG@10: MLflow's history of that metric
    peaks at the recorded step and value, evaluate@ measures the same value on the saved model (same evaluator,
    same data), and the card names the checkpoint."""
    from mlflow import MlflowClient

    workspace = smoke_run.workspace
    record = json.loads((workspace / "runs" / "neobert-splade.json").read_text())
    training = json.loads((workspace / "models" / "neobert-splade" / "training_record.json").read_text())
    selected = training["phases"][-1]["selected_checkpoint"]
    assert selected["rule"] == "best" and selected["metric"] == "eval_NanoBEIR_mean_dot_ndcg@10"
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace}/mlflow.db")
    run = client.get_run(record["run_id"])
    names = [k for k in run.data.metrics if k.startswith("eval_NanoBEIR_mean_dot_ndcg")]
    assert len(names) == 1, names
    history = client.get_metric_history(run.info.run_id, names[0])
    assert len(history) >= 2, "evaluated during training"
    best = max(history, key=lambda m: (m.value, -m.step))
    assert (best.step, best.value) == (selected["step"], pytest.approx(selected["value"]))
    assert run.data.metrics["selected_eval_NanoBEIR_mean_dot_ndcg_at_10"] == pytest.approx(selected["value"])
    metrics = json.loads((workspace / "metrics" / "neobert-splade.json").read_text())
    assert metrics["NanoBEIR_mean_dot_ndcg@10"] == pytest.approx(selected["value"], abs=1e-6)
    card = (workspace / "model_cards" / "neobert-splade" / "README.md").read_text()
    assert f"Checkpoint: step {selected['step']} of {selected['of_steps']}: the best in-training" in card
