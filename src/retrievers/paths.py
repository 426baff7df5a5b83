"""Every on-disk location the pipeline reads or writes, under one workspace root passed in.

The root is the repository checkout (``dvc repro`` runs stages there) or a profile's workspace (``build/smoke``).
Entry points (stage scripts, ``python -m retrievers.reproduce``, ``python -m retrievers.profile``) build one
``Workspace`` from their ``--workspace`` option (default: the directory they are run from) and pass it down;
library code never reads the process's working directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __post_init__(self) -> None:
        if not self.root.is_absolute():
            raise ValueError(f"a workspace root must be absolute (got {self.root}); build it with Workspace.at")

    @classmethod
    def at(cls, root: Path | str) -> Workspace:
        """For entry points only: the root as given on the command line (a relative one is taken from the cwd)."""
        return cls(Path(root).absolute())

    def folder(self, relative: Path | str) -> Path:
        """A folder params.yaml names relative to the root (``data/<source>``, ``models/<phase>``, a fixture)."""
        return self.root / relative

    # ----------------------------------------------------------------------------------- files of the checkout
    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"

    @property
    def card_templates(self) -> Path:
        return self.root / "model_cards" / "templates"

    # ----------------------------------------------------------------------------------- MLflow's local store
    @property
    def tracking_uri(self) -> str:
        """The sqlite store used when MLFLOW_TRACKING_URI is unset (git-ignored)."""
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def artifact_location(self, experiment: str) -> str:
        """Where the local store keeps an experiment's artifacts."""
        return (self.root / "mlartifacts" / experiment).as_uri()

    # ---------------------------------------------------------------------------------------- stage outputs
    def source_dir(self, key: str) -> Path:
        return self.root / "data" / key

    def model_dir(self, phase_key: str) -> Path:
        return self.root / "models" / phase_key

    def checkpoint_dir(self, phase_key: str) -> Path:
        """Trainer checkpoints, kept outside DVC outputs so that a killed run resumes from them."""
        return self.root / "checkpoints" / phase_key

    def run_record(self, phase_key: str) -> Path:
        """The MLflow run of a phase (id, experiment), so later stages log into the same run."""
        return self.root / "runs" / f"{phase_key}.json"

    def metrics_file(self, model_key: str) -> Path:
        return self.root / "metrics" / f"{model_key}.json"

    def card_file(self, model_key: str) -> Path:
        return self.root / "model_cards" / model_key / "README.md"

    def eval_results_file(self, model_key: str) -> Path:
        """The Hub's ``.eval_results`` entries for the model (huggingface_hub ``EvalResultEntry`` format)."""
        return self.root / "model_cards" / model_key / ".eval_results" / "nanobeir.yaml"

    def release_dir(self, model_key: str) -> Path:
        return self.root / "releases" / model_key

    def loss_plot(self, phase_key: str) -> Path:
        """Training loss per step of a phase (``dvc plots``)."""
        return self.root / "plots" / phase_key / "loss.csv"

    def ndcg_plot(self, model_key: str) -> Path:
        """nDCG@10 per NanoBEIR set of a model (``dvc plots``)."""
        return self.root / "plots" / model_key / "ndcg.csv"
