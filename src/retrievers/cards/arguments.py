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

