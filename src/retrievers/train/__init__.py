"""train@<phase>: build the phase's trainer from its recipe, train (resuming a killed run), save atomically."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from retrievers import models, tracking
from retrievers.config import Params
from retrievers.io import atomic_dir
from retrievers.paths import Workspace
from retrievers.train.common import (
    EpochSeededBatchSampling,
    average_loss_gradients,
    check_finite_weights,
    check_phase_inputs,
    checkpoint_callback,
    finish_checkpoints,
    launch_torchrun,
    loss_curve_callback,
    model_card_logs_callback,
    phase_of,
    prepare_checkpoints,
    prepare_torchrun_rank,
    restore_loss_state,
    set_seed,
    step_kill_callback,
)
from retrievers.train.record import training_record, write_record

logger = logging.getLogger(__name__)


def _build(ws: Workspace, phase, params: Params, phase_key: str):
    check_phase_inputs(ws, phase, phase_key)  # init and data exist, the init weights load, known optimizer names
    init, data, output = ws.folder(phase.init), ws.folder(phase.data), ws.checkpoint_dir(phase_key)
    eval_data = ws.folder(phase.eval_data) if phase.eval_data else None
    return models.for_phase(phase).trainer(phase, init, data, output, params.seed, eval_data)


def selected_checkpoint(trainer) -> dict:
    """Which checkpoint the saved model is: the best in-training evaluation (``load_best_model_at_end``) or the
    last step, with the metric the trainer logged for it."""
    state, args = trainer.state, trainer.args
    if args.load_best_model_at_end and state.best_model_checkpoint:
        step = int(Path(state.best_model_checkpoint).name.split("-")[-1])
        return {"rule": "best", "step": step, "of_steps": state.global_step, "metric": args.metric_for_best_model,
                "value": state.best_metric}
    metric = args.metric_for_best_model
    last = [e for e in state.log_history if metric and metric in e]
    value = last[-1][metric] if last and last[-1].get("step") == state.global_step else None
    return {"rule": "last", "step": state.global_step, "of_steps": state.global_step, "metric": metric, "value": value}


def log_selected_checkpoint(trainer) -> dict:
    """Log the selected checkpoint to the active MLflow run and return it (train@ writes it into the training
    record, which card@ reads)."""
    import mlflow

    selected = selected_checkpoint(trainer)
    mlflow.set_tags({"selected_checkpoint.rule": selected["rule"], "selected_checkpoint.step": str(selected["step"])})
    if selected["value"] is not None:
        mlflow.log_metric(tracking.mlflow_metric_name(f"selected_{selected['metric']}"), float(selected["value"]))
    return selected


def run_phase(ws: Workspace, params: Params, phase_key: str, callbacks: Sequence = ()) -> Path | None:
    """Train one phase into models/<phase_key>; an MLflow run records params, per-step loss and tags.

    With ``nproc_per_node`` above 1 the stage relaunches itself under torchrun; every rank trains (DDP) and
    only rank 0 writes the model, the MLflow run and runs/<phase>.json. ``callbacks`` are extra TrainerCallbacks
    (the full-size rehearsal times steps with one)."""
    phase = phase_of(params, phase_key)
    if phase.nproc_per_node > 1 and not prepare_torchrun_rank():
        launch_torchrun(ws, phase_key, phase.nproc_per_node)
        return ws.model_dir(phase_key)
    set_seed(params.seed)
    model, trainer = _build(ws, phase, params, phase_key)  # sets up the process group under torchrun
    with trainer.args.main_process_first(local=False, desc="checkpoint preparation"):
        resume_from = prepare_checkpoints(ws, params, phase_key)
    trainer.add_callback(loss_curve_callback(ws, phase_key))
    for callback in callbacks:
        trainer.add_callback(callback)
    trainer.add_callback(step_kill_callback())
    trainer.add_callback(model_card_logs_callback(model))
    sampling = EpochSeededBatchSampling(str(phase.args.batch_sampler))
    trainer.args.batch_sampler = sampling  # the trainer's own extension point: a batch-sampler factory
    trainer.add_callback(sampling.callback())
    from retrievers.losses import temperature_parameter

    # The learnable temperature is a parameter registered on the model (the fork), so the trainer's zero_grad and
    # gradient clipping cover it; checkpoints store it beside the saved modules.
    temperature = temperature_parameter(trainer.loss)
    restored_temperature = None
    trainer.add_callback(checkpoint_callback(temperature))
    if temperature is not None:
        restored_temperature = restore_loss_state(temperature, resume_from)
    average_loss_gradients(trainer.loss, model)
    if not trainer.is_world_process_zero():
        trainer.train(resume_from_checkpoint=resume_from)
        return None
    with tracking.phase_run(ws, params, phase_key, stage="train") as run:
        import mlflow

        mlflow.set_tag("resumed_from", resume_from or "")
        mlflow.set_tag("world_size", str(trainer.args.world_size))
        if restored_temperature is not None:
            mlflow.set_tag("resumed_temperature", repr(restored_temperature))
        trainer.train(resume_from_checkpoint=resume_from)
        if temperature is not None:
            mlflow.log_metric("final_temperature", float(temperature))
        check_finite_weights(model, phase_key)
        selected = log_selected_checkpoint(trainer)
        target = ws.model_dir(phase_key)
        record = training_record(ws, phase_key, phase, trainer)
        record["selected_checkpoint"] = selected
        mlflow.log_dict(record, "training_record.json")
        with atomic_dir(target) as scratch:
            model.save_pretrained(str(scratch))
            write_record(scratch, record)  # the card's facts, beside the weights they describe
        logger.info("saved %s (MLflow run %s)", target, run.info.run_id)
    finish_checkpoints(ws, phase_key)
    return target
