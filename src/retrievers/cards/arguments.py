"""The trainer arguments of a phase as the trainer builds them: the card's hyperparameter lists.

Read from the real ``(Sentence|SparseEncoder)TrainingArguments`` object that ``train@<phase>`` builds, not from
params.yaml directly, so defaults the trainer fills in are listed too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retrievers import models
from retrievers.config import Params


def trainer_hyperparameters(params: Params, phase_key: str) -> dict[str, Any]:
    from retrievers.train.common import trainer_arguments

    phase = params.phases[phase_key]
    cls = models.for_phase(phase).training_arguments_class()
    # TrainingArguments refuses fp16/bf16 on a machine without a GPU: build with them off, report the config.
    cpu_safe = phase.args.model_copy(update={"fp16": False, "bf16": False})
    values = trainer_arguments(cls, cpu_safe, Path("/tmp/compare"), params.seed).to_dict()
    return values | {"fp16": phase.args.fp16, "bf16": phase.args.bf16}


RUN_SPECIFIC = ("output_dir", "logging_dir", "local_rank")


def card_hyperparameters_of(params: Params, phase_key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(non-default, all) trainer arguments of a phase, as the published cards list them: the real
    TrainingArguments, compared with the class's defaults; run-specific folders and tokens left out."""
    cls = models.for_phase(params.phases[phase_key]).training_arguments_class()
    defaults = cls(output_dir="/tmp/compare").to_dict()
    ours = {k: (v.value if hasattr(v, "value") else v) for k, v in trainer_hyperparameters(params, phase_key).items()
            if k not in RUN_SPECIFIC and not k.endswith("token")}
    defaults = {k: (v.value if hasattr(v, "value") else v) for k, v in defaults.items()}
    return {k: v for k, v in ours.items() if k not in defaults or defaults[k] != v}, ours
