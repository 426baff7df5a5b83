"""What every recipe shares: trainer arguments from the typed config, seeding, checkpoint resume, atomic save."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

from retrievers.config import Params, PhaseBase, TrainerArgs
from retrievers.errors import InputError, MissingInputError, TrainingError
from retrievers.io import write_json_atomic
from retrievers.paths import Workspace

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


def check_phase_inputs(ws: Workspace, phase: PhaseBase, phase_key: str) -> None:
    """What typed config cannot check, before anything is built: the trainer's optimizer and schedule names and
    the init model folder's weights. (The training data is checked as it is loaded.)"""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    from retrievers.data.validate import check_model_folder

    args = phase.args
    for key, value, known in (("optim", args.optim, OptimizerNames), ("lr_scheduler_type", args.lr_scheduler_type,
                                                                         SchedulerType)):
        names = [item.value for item in known]
        if value not in names:
            raise InputError(f"params.yaml: phases.{phase_key}.args.{key}: unknown {value!r}; use one of "
                             f"{', '.join(names[:12])}{', ...' if len(names) > 12 else ''}")
    folders = [phase.init, phase.data] + ([phase.eval_data] if phase.eval_data else [])
    for folder in folders:
        if not ws.folder(folder).exists():
            raise MissingInputError(f"{folder} does not exist; run `dvc repro` so its stage produces it first")
    init = Path(phase.init)
    fix = (f"re-run `dvc repro --force train@{init.name}`" if init.parts[0] == "models"
           else f"re-run `dvc repro --force download@{init.name}`")
    check_model_folder(ws.folder(init), fix)


def check_finite_weights(model, phase_key: str) -> None:
    """Refuse to save a model with NaN or infinite weights (training diverged): nothing downstream may trust it."""
    import torch

    bad = [name for name, param in model.named_parameters() if not bool(torch.isfinite(param).all())]
    if bad:
        raise TrainingError(
            f"train@{phase_key}: training produced non-finite weights in {len(bad)} tensor(s) (first: {bad[0]}); "
            f"the model was not saved: lower phases.{phase_key}.args.learning_rate or check the training data"
        )


def prepare_checkpoints(ws: Workspace, params: Params, phase_key: str) -> str | None:
    """The checkpoint to resume from, if an earlier run of *this same* phase config was killed.

    Checkpoints of a different config (params changed since) are removed rather than resumed. Only sealed
    checkpoints count (``CHECKPOINT_SEAL``, written last by ``checkpoint_callback``): one a kill cut short is never
    chosen. The newest sealed one that does not load (a corrupt file) is skipped with a warning naming it."""
    folder = ws.checkpoint_dir(phase_key)
    stamp = json.dumps({"phase": params.phases[phase_key].model_dump(mode="json"), "seed": params.seed}, sort_keys=True)
    digest = hashlib.sha256(stamp.encode()).hexdigest()
    stamp_file = folder / CONFIG_STAMP
    if folder.exists() and (not _stamp_matches(stamp_file, digest)):
        logger.info("removing checkpoints of another config in %s", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stamp_file, {"sha256": digest})
    candidates = sorted(folder.glob("checkpoint-*"), key=_checkpoint_step, reverse=True)
    for candidate in candidates:
        if not (candidate / CHECKPOINT_SEAL).exists():
            logger.warning("skipping %s: not sealed (its save was interrupted)", candidate)
            continue
        problem = checkpoint_problem(candidate)
        if problem:
            logger.warning("skipping corrupt checkpoint %s (%s); using the one before it", candidate, problem)
            continue
        logger.info("resuming %s from %s", phase_key, candidate)
        return str(candidate)
    return None


def _stamp_matches(stamp_file: Path, digest: str) -> bool:
    try:
        return json.loads(stamp_file.read_text())["sha256"] == digest
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _checkpoint_step(path: Path) -> int:
    suffix = path.name.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (None if it can): its trainer state and JSON parse, its weights'
    headers cover their files, and the optimizer/scheduler/RNG/temperature files load."""
    import torch

    from retrievers.data.validate import check_model_folder

    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
        check_model_folder(checkpoint, "")
        names = ["optimizer.pt", "scheduler.pt", "rng_state.pth", LOSS_STATE]
        for name in names + sorted(p.name for p in checkpoint.glob("collator_state*.pt")):
            if (checkpoint / name).exists():
                torch.load(checkpoint / name, map_location="cpu", weights_only=False)
    except InputError as error:
        return str(error).rstrip("; ")
    except Exception as error:  # noqa: BLE001  any unreadable file: the message names it
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


CHECKPOINT_SEAL = "checkpoint_complete.json"


def checkpoint_callback(temperature=None, collator=None):
    """A TrainerCallback that completes every checkpoint: the learnable temperature (a Parameter, when there is one),
    the data collator's draw state (when it has one: ``checkpoint_state``), then the seal file, written last and
    atomically, so a checkpoint without it was cut short.

    Trainer checkpoints hold the model's saved modules and the optimizer, not a parameter registered on the
    model itself; without this a resumed run would restart the temperature at its initial value while its
    optimizer moments carry on."""
    import torch
    from transformers import TrainerCallback

    from retrievers.killpoints import kill_point

    class SealCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not folder.is_dir():
                return
            kill_point(f"checkpoint-save:{state.global_step}")
            if temperature is not None:
                torch.save({"temperature": temperature.detach().cpu()}, folder / LOSS_STATE)
            if hasattr(collator, "checkpoint_state"):
                torch.save(collator.checkpoint_state(), folder / collator_state_file(args))
            write_json_atomic(folder / CHECKPOINT_SEAL, {"step": state.global_step})

    return SealCheckpoint()


COLLATOR_STATE = "collator_state.pt"


def collator_state_file(args) -> str:
    """Each rank's collator draws its own rows: one file per rank under DDP."""
    return COLLATOR_STATE if args.world_size == 1 else f"collator_state_rank{args.process_index}.pt"


class ResumePosition:
    """Where a resumed run picks up: the epoch and the batches into it, from the checkpoint's ``state.epoch``.

    The trainer derives both from ``global_step // len(dataloader)``, which holds only when every epoch yields
    ``len(dataloader)`` batches. ``NoDuplicatesBatchSampler``'s length is an upper bound: an epoch that cannot fill
    its last batches without duplicates yields fewer, and a resumed run then starts batches (or an epoch) off. The
    trainer writes ``state.epoch = epoch + batches / len(dataloader)`` after every step, which is exact; installed
    on a trainer (``install``), this reads the position from it, through the trainer's own two methods that
    compute the epoch length and the resume state (wrapped, not copied). Uninterrupted runs are unaffected.

    ``epoch`` and ``batches`` are what the trainer was given (None before a resumed run starts)."""

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.batches: int | None = None

    def install(self, trainer) -> None:
        measured: dict[str, int] = {}
        set_values, init_state = trainer.set_initial_training_values, trainer._init_training_state

        def set_initial_training_values(args, dataloader):
            values = set_values(args, dataloader)
            measured["batches_per_epoch"] = values[5]  # steps_in_epoch: what state.epoch divides by
            return values

        def _init_training_state(max_steps, steps_per_epoch, epochs, resume_from_checkpoint, trial):
            position = init_state(max_steps, steps_per_epoch, epochs, resume_from_checkpoint, trial)
            per_epoch = measured.get("batches_per_epoch")
            if resume_from_checkpoint is not None and not trainer.args.ignore_data_skip and per_epoch:
                done = round((trainer.state.epoch or 0.0) * per_epoch)
                position = (done // per_epoch, done % per_epoch)
            if resume_from_checkpoint is not None:
                self.epoch, self.batches = position
            return position

        trainer.set_initial_training_values = set_initial_training_values
        trainer._init_training_state = _init_training_state

    def collator_callback(self, collator, checkpoint: str | None):
        """A TrainerCallback that gives a stateful collator (``resume_from``) the draw state saved with
        ``checkpoint`` at the start of the resumed epoch (after any reseeding callback added before it)."""
        import torch
        from transformers import TrainerCallback

        position = self

        class RestoreCollator(TrainerCallback):
            def __init__(self) -> None:
                self.pending = checkpoint is not None and hasattr(collator, "resume_from")

            def on_epoch_begin(self, args, state, control, **kwargs):
                saved = Path(checkpoint) / collator_state_file(args) if checkpoint else None
                if self.pending and saved is not None and saved.exists():
                    collator.resume_from(torch.load(saved, weights_only=False), position.batches or 0)
                self.pending = False

        return RestoreCollator()


LOSS_STATE = "loss_temperature.pt"


class EpochSeededBatchSampling:
    """The trainer's batch sampler (``args.batch_sampler`` as a factory, sentence-transformers' extension point),
    shuffled with seed + epoch, where the epoch comes from the trainer's state at ``on_epoch_begin``.

    Why: transformers 5 no longer replays earlier epochs on resume, so the stock ``RandomSampler`` (one generator
    seeded once) gives a resumed run epoch 0's order again; and accelerate's ``skip_first_batches`` wraps the sampler
    in a ``SkipBatchSampler`` that does not forward ``set_epoch``, so even ``NoDuplicatesBatchSampler`` would reseed
    a resumed epoch with epoch 0. Epoch 0's order equals the stock sampler's (the generator seeded with the seed)."""

    def __init__(self, kind: str, scan_free: bool = False):
        self.kind = self.value = kind  # `value`: recorded (training_record.json, card) like the enum it stands for
        self.scan_free = scan_free  # no_duplicates: retrievers.sampling's sampler (the same batches)
        self.samplers: list = []

    def __repr__(self) -> str:
        return self.kind

    def __getstate__(self) -> dict:  # the trainer pickles its args into each checkpoint: not the samplers
        return {"kind": self.kind, "scan_free": self.scan_free, "samplers": []}

    def __call__(self, dataset, **kwargs):
        from sentence_transformers.sampler import NoDuplicatesBatchSampler

        from retrievers.sampling import ScanFreeNoDuplicatesBatchSampler

        no_duplicates = ScanFreeNoDuplicatesBatchSampler if self.scan_free else NoDuplicatesBatchSampler
        sampler = (no_duplicates(dataset, **kwargs) if self.kind == "no_duplicates"
                   else _epoch_seeded_default(dataset, **kwargs))
        self.samplers.append(sampler)
        return sampler

    def callback(self):
        from transformers import TrainerCallback

        samplers = self.samplers

        class SamplerEpoch(TrainerCallback):
            def on_epoch_begin(self, args, state, control, **kwargs):
                for sampler in samplers:
                    sampler.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))

        return SamplerEpoch()


def _epoch_seeded_default(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
    import torch
    from sentence_transformers.sampler import DefaultBatchSampler
    from torch.utils.data import RandomSampler

    class EpochSeededBatchSampler(DefaultBatchSampler):
        def __iter__(self):
            self.generator.manual_seed(self.seed + self.epoch)
            return super().__iter__()

    generator = generator if generator is not None else torch.Generator()
    return EpochSeededBatchSampler(RandomSampler(dataset, generator=generator), batch_size=batch_size,
                                   drop_last=drop_last, valid_label_columns=valid_label_columns,
                                   generator=generator, seed=seed)


def make_resumable(trainer, batch_sampler: str, resume_from: str | None, temperature=None,
                   scan_free: bool = False) -> None:
    """Everything that makes a run resumed from a checkpoint continue as the uninterrupted run would: epoch-seeded
    batch sampling (``batch_sampler``: the phase's ``args.batch_sampler``), the model card's loss rows, sealed
    checkpoints holding the temperature and the collator's draw state, and the exact resume position.
    ``scan_free``: no_duplicates through retrievers.sampling's sampler (the same batches, no scan per batch)."""
    trainer.add_callback(model_card_logs_callback(trainer.model, resume_from, getattr(trainer, "evaluator", None)))
    sampling = EpochSeededBatchSampling(batch_sampler, scan_free)
    trainer.args.batch_sampler = sampling  # the trainer's own extension point: a batch-sampler factory
    trainer.add_callback(sampling.callback())
    trainer.add_callback(checkpoint_callback(temperature, trainer.data_collator))
    position = ResumePosition()  # the exact epoch and batch to resume at, and the collator's draws there
    position.install(trainer)
    trainer.add_callback(position.collator_callback(trainer.data_collator, resume_from))


CARD_LOGS = "model_card_logs.json"
CARD_EVALUATION = "model_card_evaluation.json"


def _pure(value):
    """A numpy or torch scalar as plain Python (as the model card's own formatting converts it)."""
    return value.item() if hasattr(value, "dtype") and hasattr(value, "item") else value


def _evaluator_objects(evaluator, path: str = "") -> list[tuple[object, str]]:
    """The in-training evaluator and the ones inside it (a NanoBEIR or sequential evaluator's ``evaluators``, which
    store their own results in the card), each with a name that is the same in every run of the phase."""
    if evaluator is None:
        return []
    name = f"{path}{type(evaluator).__name__}:{getattr(evaluator, 'name', '')}"
    found = [(evaluator, name)]
    for index, inner in enumerate(getattr(evaluator, "evaluators", None) or []):
        found += _evaluator_objects(inner, f"{name}/{index}/")
    return found


def _evaluator_names(evaluator) -> dict[int, str]:
    return {id(e): name for e, name in _evaluator_objects(evaluator)}


def model_card_logs_callback(model, checkpoint: str | None, evaluator=None):
    """A TrainerCallback that keeps the model card (the README.md sentence-transformers saves with the model) across
    a resume. The library collects its training-log rows (losses, the in-training evaluator's primary metrics, the
    validation loss) and the in-training ``evaluator``'s last results (``eval_results_dict``, the card's evaluation
    section) in memory as they come, so a resumed run's card would start at the checkpoint, and one resumed after
    the last evaluation would have no evaluation section. Each checkpoint stores both (``CARD_LOGS``,
    ``CARD_EVALUATION``: each evaluator's results, by its place in the evaluator); a resumed run starts from them,
    the results set in the card data's own ``eval_results_dict`` for this run's evaluator objects."""
    from transformers import TrainerCallback

    class KeepModelCardLogs(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            card = getattr(model, "model_card_data", None)
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if card is not None and folder.is_dir() and state.is_world_process_zero:
                write_json_atomic(folder / CARD_LOGS, card.training_logs, sort_keys=False)
                names = _evaluator_names(evaluator)
                results = [{"evaluator": names[id(e)], "primary_metric": getattr(e, "primary_metric", None),
                            "metrics": {k: _pure(v) for k, v in metrics.items()}}
                           for e, metrics in (getattr(card, "eval_results_dict", None) or {}).items()
                           if id(e) in names]
                if results:
                    write_json_atomic(folder / CARD_EVALUATION, results, sort_keys=False)

        def on_train_begin(self, args, state, control, **kwargs):
            card = getattr(model, "model_card_data", None)
            folder = Path(checkpoint) if checkpoint else None
            if card is None or folder is None:
                return
            if (folder / CARD_LOGS).exists() and not card.training_logs:
                card.training_logs.extend(json.loads((folder / CARD_LOGS).read_text()))
            results = getattr(card, "eval_results_dict", None)
            if results == {} and (folder / CARD_EVALUATION).exists():
                by_name = {name: e for e, name in _evaluator_objects(evaluator)}
                for saved in json.loads((folder / CARD_EVALUATION).read_text()):
                    if saved["evaluator"] in by_name:  # its primary metric (bold in the card) is set by its first
                        restored = by_name[saved["evaluator"]]  # run: as the uninterrupted run's had set it
                        if saved["primary_metric"] and not getattr(restored, "primary_metric", None):
                            restored.primary_metric = saved["primary_metric"]
                        results[restored] = saved["metrics"]

    return KeepModelCardLogs()


def step_kill_callback():
    """Kill points of the training loop: ``step:N`` after optimizer step N (see ``retrievers.killpoints``)."""
    from transformers import TrainerCallback

    from retrievers.killpoints import kill_point

    class StepKillPoints(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            kill_point(f"step:{state.global_step}")

    return StepKillPoints()


def loss_curve_callback(ws: Workspace, phase_key: str):
    """A TrainerCallback that writes the phase's training-loss curve (``dvc plots``) when training ends and logs
    it, with its figure, to the active MLflow run."""
    from transformers import TrainerCallback

    from retrievers.reports import log_plot, write_loss_curve

    class WriteLossCurve(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                log_plot(write_loss_curve(ws, phase_key, state.log_history), "loss", f"{phase_key}: training loss")

    return WriteLossCurve()


def restore_loss_state(temperature, checkpoint: str | None) -> float | None:
    """Load the temperature saved with ``checkpoint`` into the ``temperature`` Parameter; return it (None when
    there is nothing to restore)."""
    import torch

    if checkpoint is None:
        return None
    state_file = Path(checkpoint) / LOSS_STATE
    if not state_file.exists():
        return None
    with torch.no_grad():
        temperature.copy_(torch.load(state_file)["temperature"])
    return float(temperature)


def prepare_torchrun_rank() -> bool:
    """True in a process that torchrun started; on a machine without a GPU, its ranks join a CPU (gloo) group.

    ``ACCELERATE_USE_CPU`` rather than ``use_cpu=True``: SparseEncoderTrainer builds default training arguments
    of its own, which would otherwise re-initialise accelerate's state as one process per rank."""
    import torch

    if "LOCAL_RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
        accept_indexed_cpu_locations()
    return True


def _indexed_cpu(storage, location: str):
    return storage if location.startswith("cpu:") else None


@functools.cache  # register once per process
def accept_indexed_cpu_locations() -> None:
    """Let ``torch.load(..., map_location=torch.device("cpu", i))`` load onto the CPU. A resumed multi-process run
    loads its optimizer state with ``map_location=args.device``, which is ``cpu:<i>`` for CPU (gloo) ranks, and torch
    restores only ``cpu``: the resume failed with "don't know how to restore data location ... (tagged with cpu:0)".
    Through torch's own location registry (``torch.serialization.register_package``); saving is unaffected (the
    tagger names nothing)."""
    import torch.serialization

    torch.serialization.register_package(11, lambda obj: None, _indexed_cpu)


def launch_torchrun(ws: Workspace, phase_key: str, nproc_per_node: int) -> None:
    """Re-run this stage as ``torchrun --standalone --nproc_per_node N stages/train.py <phase> --workspace <root>``
    (DDP on one node)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
           str(ws.root / "stages" / "train.py"), phase_key, "--workspace", str(ws.root)]
    logger.info("launching %s", " ".join(cmd[1:]))
    result = subprocess.run(cmd)
    if result.returncode != 0:  # the ranks printed their own errors; end with one line, not a second traceback
        sys.exit(f"train@{phase_key}: error: torchrun exited with status {result.returncode} (ranks' logs above)")


def average_loss_gradients(loss, model) -> None:
    """Average across processes the gradients of parameters the loss owns beyond the model's: DDP all-reduces only
    the wrapped model's gradients, so each rank would otherwise drift. (The XTR temperature is registered on the
    model, as the fork does, so DDP averages it itself.)"""
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


def finish_checkpoints(ws: Workspace, phase_key: str) -> None:
    """After the final model is saved, the checkpoints are no longer needed."""
    shutil.rmtree(ws.checkpoint_dir(phase_key), ignore_errors=True)


def set_seed(seed: int) -> None:
    from transformers import set_seed as hf_set_seed

    hf_set_seed(seed)


def phase_of(params: Params, phase_key: str) -> PhaseBase:
    try:
        return params.phases[phase_key]
    except KeyError:
        raise KeyError(f"unknown phase {phase_key!r}; phases in params.yaml: {', '.join(params.phases)}") from None
