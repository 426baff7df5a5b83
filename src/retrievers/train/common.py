"""What every recipe shares: trainer arguments from the typed config, seeding, checkpoint resume, atomic save."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from retrievers import paths
from retrievers.config import Params, PhaseBase, TrainerArgs

logger = logging.getLogger(__name__)
CONFIG_STAMP = "phase_config.json"


def trainer_arguments(args_cls: type, args: TrainerArgs, output_dir: Path, seed: int, report_to=("mlflow",), **extra):
    """Build (Sentence|SparseEncoder)TrainingArguments from the phase's typed args (``report_to``: the trainer's
    integrations; ``()`` for none, as tests and benchmarks use it)."""
    from sentence_transformers.training_args import BatchSamplers

    values = args.model_dump()
    values["batch_sampler"] = BatchSamplers(values["batch_sampler"])
    return args_cls(
        output_dir=str(output_dir),
        seed=seed,
        report_to=list(report_to) or "none",
        save_strategy="steps",
        logging_strategy="steps",
        disable_tqdm=False,
        **values,
        **extra,
    )


def prepare_checkpoints(params: Params, phase_key: str) -> str | None:
    """The checkpoint to resume from, if an earlier run of *this same* phase config was killed.

    Checkpoints of a different config (params changed since) are removed rather than resumed."""
    folder = paths.checkpoint_dir(phase_key)
    stamp = json.dumps({"phase": params.phases[phase_key].model_dump(mode="json"), "seed": params.seed}, sort_keys=True)
    digest = hashlib.sha256(stamp.encode()).hexdigest()
    stamp_file = folder / CONFIG_STAMP
    if folder.exists() and (not stamp_file.exists() or json.loads(stamp_file.read_text())["sha256"] != digest):
        logger.info("removing checkpoints of another config in %s", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(json.dumps({"sha256": digest}))
    candidates = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    complete = [c for c in candidates if (c / "trainer_state.json").exists()]
    if complete:
        logger.info("resuming %s from %s", phase_key, complete[-1])
        return str(complete[-1])
    return None


LOSS_STATE = "loss_temperature.pt"


def loss_state_callback(loss):
    """A TrainerCallback that stores the loss's learnable temperature in every checkpoint.

    Trainer checkpoints hold the model and optimizer, not parameters of the loss; without this a resumed run
    would restart the temperature at its initial value while its optimizer moments carry on."""
    import torch
    from transformers import TrainerCallback

    class SaveLossTemperature(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                torch.save({"log_temperature": loss.log_temperature.detach().cpu()}, folder / LOSS_STATE)

    return SaveLossTemperature()


def loss_curve_callback(phase_key: str):
    """A TrainerCallback that writes the phase's training-loss curve (``dvc plots``) when training ends and logs
    it, with its figure, to the active MLflow run."""
    from transformers import TrainerCallback

    from retrievers.reports import log_plot, write_loss_curve

    class WriteLossCurve(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                log_plot(write_loss_curve(phase_key, state.log_history), "loss", f"{phase_key}: training loss")

    return WriteLossCurve()


def restore_loss_state(loss, checkpoint: str | None) -> float | None:
    """Load the temperature saved with ``checkpoint`` into ``loss`` (one with a ``log_temperature``); return it
    (None when there is nothing to restore)."""
    import torch

    if checkpoint is None:
        return None
    state_file = Path(checkpoint) / LOSS_STATE
    if not state_file.exists():
        return None
    with torch.no_grad():
        loss.log_temperature.copy_(torch.load(state_file)["log_temperature"])
    return float(loss.temperature)


def prepare_torchrun_rank() -> bool:
    """True in a process that torchrun started; on a machine without a GPU, its ranks join a CPU (gloo) group.

    ``ACCELERATE_USE_CPU`` rather than ``use_cpu=True``: SparseEncoderTrainer builds default training arguments
    of its own, which would otherwise re-initialise accelerate's state as one process per rank."""
    import torch

    if "LOCAL_RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    return True


def launch_torchrun(phase_key: str, nproc_per_node: int) -> None:
    """Re-run this stage as ``torchrun --standalone --nproc_per_node N stages/train.py <phase>`` (DDP on one node)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
           "stages/train.py", phase_key]
    logger.info("launching %s", " ".join(cmd[1:]))
    result = subprocess.run(cmd)
    if result.returncode != 0:  # the ranks printed their own errors; end with one line, not a second traceback
        sys.exit(f"train@{phase_key}: error: torchrun exited with status {result.returncode} (ranks' logs above)")


def average_loss_gradients(loss, model) -> None:
    """Average across processes the gradients of parameters the loss owns beyond the model's (the learnable
    temperature): DDP all-reduces only the wrapped model's gradients, so each rank would otherwise drift."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    model_params = {id(p) for p in model.parameters()}
    for param in loss.parameters():
        if param.requires_grad and id(param) not in model_params:
            param.register_hook(_all_reduce_mean)


def _all_reduce_mean(grad):
    import torch.distributed as dist

    grad = grad.clone()
    dist.all_reduce(grad)
    return grad / dist.get_world_size()


def finish_checkpoints(phase_key: str) -> None:
    """After the final model is saved, the checkpoints are no longer needed."""
    shutil.rmtree(paths.checkpoint_dir(phase_key), ignore_errors=True)


def set_seed(seed: int) -> None:
    from transformers import set_seed as hf_set_seed

    hf_set_seed(seed)


def phase_of(params: Params, phase_key: str) -> PhaseBase:
    try:
        return params.phases[phase_key]
    except KeyError:
        raise KeyError(f"unknown phase {phase_key!r}; phases in params.yaml: {', '.join(params.phases)}") from None
