"""Every on-disk location the pipeline reads or writes, relative to the workspace root (the cwd of a stage)."""

from __future__ import annotations

from pathlib import Path

DATA = Path("data")
MODELS = Path("models")
METRICS = Path("metrics")
CARDS = Path("model_cards")
RUNS = Path("runs")
CHECKPOINTS = Path("checkpoints")
RELEASES = Path("releases")
PLOTS = Path("plots")


def source_dir(key: str) -> Path:
    return DATA / key


def model_dir(phase_key: str) -> Path:
    return MODELS / phase_key


def checkpoint_dir(phase_key: str) -> Path:
    """Trainer checkpoints, kept outside DVC outputs so that a killed run resumes from them."""
    return CHECKPOINTS / phase_key


def run_record(phase_key: str) -> Path:
    """The MLflow run of a phase (id, experiment), so later stages log into the same run."""
    return RUNS / f"{phase_key}.json"


def metrics_file(model_key: str) -> Path:
    return METRICS / f"{model_key}.json"


def card_file(model_key: str) -> Path:
    return CARDS / model_key / "README.md"


def eval_results_file(model_key: str) -> Path:
    """The Hub's ``.eval_results`` entries for the model (huggingface_hub ``EvalResultEntry`` format)."""
    return CARDS / model_key / ".eval_results" / "nanobeir.yaml"


def release_dir(model_key: str) -> Path:
    return RELEASES / model_key


def loss_plot(phase_key: str) -> Path:
    """Training loss per step of a phase (``dvc plots``)."""
    return PLOTS / phase_key / "loss.csv"


def ndcg_plot(model_key: str) -> Path:
    """nDCG@10 per NanoBEIR set of a model (``dvc plots``)."""
    return PLOTS / model_key / "ndcg.csv"
