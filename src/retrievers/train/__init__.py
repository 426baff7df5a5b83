"""train@<phase>: build the phase's trainer from its recipe, train (resuming a killed run), save atomically."""

from __future__ import annotations

import logging
from pathlib import Path

from retrievers import models, paths, tracking
from retrievers.config import Params
from retrievers.io import atomic_dir
from retrievers.train.common import (
    average_loss_gradients,
    finish_checkpoints,
    launch_torchrun,
    loss_curve_callback,
    loss_state_callback,
    phase_of,
    prepare_checkpoints,
    prepare_torchrun_rank,
    restore_loss_state,
    set_seed,
)

logger = logging.getLogger(__name__)


def _build(phase, params: Params, phase_key: str):
    init, data, output = Path(phase.init), Path(phase.data), paths.checkpoint_dir(phase_key)
    for folder in (init, data):
        if not folder.exists():
            raise FileNotFoundError(f"{folder} does not exist; run `dvc repro` so its stage produces it first")
    return models.for_phase(phase).trainer(phase, init, data, output, params.seed)


def run_phase(params: Params, phase_key: str) -> Path | None:
    """Train one phase into models/<phase_key>; an MLflow run records params, per-step loss and tags.

    With ``nproc_per_node`` above 1 the stage relaunches itself under torchrun; every rank trains (DDP) and
    only rank 0 writes the model, the MLflow run and runs/<phase>.json."""
    phase = phase_of(params, phase_key)
    if phase.nproc_per_node > 1 and not prepare_torchrun_rank():
        launch_torchrun(phase_key, phase.nproc_per_node)
        return paths.model_dir(phase_key)
    set_seed(params.seed)
    model, trainer = _build(phase, params, phase_key)  # sets up the process group under torchrun
    with trainer.args.main_process_first(local=False, desc="checkpoint preparation"):
        resume_from = prepare_checkpoints(params, phase_key)
    trainer.add_callback(loss_curve_callback(phase_key))
    learnable_temperature = hasattr(trainer.loss, "log_temperature")
    restored_temperature = None
    if learnable_temperature:
        trainer.add_callback(loss_state_callback(trainer.loss))
        restored_temperature = restore_loss_state(trainer.loss, resume_from)
        average_loss_gradients(trainer.loss, model)
    if not trainer.is_world_process_zero():
        trainer.train(resume_from_checkpoint=resume_from)
        return None
    with tracking.phase_run(params, phase_key, stage="train") as run:
        import mlflow

        mlflow.set_tag("resumed_from", resume_from or "")
        mlflow.set_tag("world_size", str(trainer.args.world_size))
        if restored_temperature is not None:
            mlflow.set_tag("resumed_temperature", repr(restored_temperature))
        trainer.train(resume_from_checkpoint=resume_from)
        if learnable_temperature:
            mlflow.log_metric("final_temperature", float(trainer.loss.temperature))
        target = paths.model_dir(phase_key)
        with atomic_dir(target) as scratch:
            model.save_pretrained(str(scratch))
        logger.info("saved %s (MLflow run %s)", target, run.info.run_id)
    finish_checkpoints(phase_key)
    return target
