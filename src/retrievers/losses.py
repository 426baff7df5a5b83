"""The XTR losses' temperatures as the robro612/pylate fork has them, on PyLate 1.6's own loss classes.

The fork (``examples/train/hydra_train.py``, the same at every stored commit: 5e5db09, b19321b, 38a83bd, f142d23)
makes the temperature a plain ``torch.nn.Parameter`` holding the temperature itself (not its log), registers it
on the ColBERT model as ``learnable_temperature`` and passes it to the loss, which divides the scores by it.
Being a model parameter (and, through ``Contrastive.__init__``'s ``self.temperature = ...``, a parameter of the
loss too), the sentence-transformers trainer puts it in the model's optimizer group with weight decay
(``get_decay_parameter_names`` excludes only bias/norm names), at ``args.learning_rate`` and
``args.weight_decay``, and the trainer's gradient clipping over ``model.parameters()`` includes it.

``SentenceTransformer.save_pretrained`` saves its modules, not a parameter registered on the model itself, so
the fork's phase 2, which loads phase 1's ``final`` folder, finds no ``learnable_temperature`` and starts afresh
at its config's value. Ours does the same (it builds every phase from a saved folder).

PyLate 1.6's ``Contrastive`` takes the parameter as its ``temperature`` unchanged. Its ``Distillation`` has no
temperature and min-max normalises the student only; :class:`TemperatureDistillation` adds the fork's
temperature and its ``normalize_scores=True`` ("both": student and teacher min-max normalised, the student
then divided by the temperature).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pylate import losses

TEMPERATURE_NAME = "learnable_temperature"  # the fork's attribute name on the model
MINMAX_EPSILON = 1e-8  # the fork's Distillation._minmax_normalize


def register_temperature(model: torch.nn.Module, initial: float, learnable: bool) -> torch.nn.Parameter | float:
    """The temperature a loss divides its scores by: with ``learnable``, a parameter registered on ``model`` as
    the fork registers it (an existing one is reused, as the fork does); otherwise the plain float."""
    if not learnable:
        return float(initial)
    existing = getattr(model, TEMPERATURE_NAME, None)
    if isinstance(existing, torch.nn.Parameter):
        return existing
    device = next(model.parameters()).device
    temperature = torch.nn.Parameter(torch.tensor(float(initial), device=device))
    model.register_parameter(TEMPERATURE_NAME, temperature)
    # Checkpoints hold the saved modules only (the temperature is stored beside them, train.common): loading one
    # back into this model (the trainer's resume does, strictly) must not count the temperature as missing.
    model.register_load_state_dict_post_hook(_temperature_is_not_in_checkpoints)
    return temperature


def _temperature_is_not_in_checkpoints(module: torch.nn.Module, incompatible_keys: Any) -> None:
    if TEMPERATURE_NAME in incompatible_keys.missing_keys:
        incompatible_keys.missing_keys.remove(TEMPERATURE_NAME)


def temperature_parameter(loss: torch.nn.Module) -> torch.nn.Parameter | None:
    """The loss's learnable temperature, or None when it has none (a fixed float, or a loss without one)."""
    temperature = getattr(loss, "temperature", None)
    return temperature if isinstance(temperature, torch.nn.Parameter) else None


def minmax_normalize(scores: torch.Tensor) -> torch.Tensor:
    """Each row scaled to [0, 1] by its own min and max, as the fork's ``Distillation._minmax_normalize``."""
    high = scores.max(dim=1, keepdim=True).values
    low = scores.min(dim=1, keepdim=True).values
    return (scores - low) / (high - low + MINMAX_EPSILON)


class _StudentLogits:
    """The student's scores as the fork feeds them to ``log_softmax``: min-max normalised when the loss says so,
    then divided by the loss's temperature (read at each call: it is learnt)."""

    def __init__(self, score_metric: Callable, loss: TemperatureDistillation):
        self.score_metric, self.loss = score_metric, loss

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        scores = self.score_metric(*args, **kwargs)
        if self.loss.minmax_normalize_scores:
            scores = minmax_normalize(scores)
        return scores / self.loss.temperature

    def __getattr__(self, name: str) -> Any:  # attributes PyLate may read from the score function
        if name in ("score_metric", "loss"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.score_metric, name)


class TemperatureDistillation(losses.Distillation):
    """``pylate.losses.Distillation`` with the fork's temperature and min-max normalisation:

    ``KL(log_softmax(t) || log_softmax(s / T))`` with ``s`` the student's scores and ``t`` the teacher's
    (``labels``), both min-max normalised per query first when ``minmax_normalize_scores`` is set (the fork's
    ``normalize_scores=True``, i.e. "both"), neither otherwise. The teacher is never divided by ``T``."""

    def __init__(
        self,
        model,
        score_metric: Callable,
        temperature: torch.nn.Parameter | float = 1.0,
        minmax_normalize_scores: bool = True,
        size_average: bool = True,
    ):
        super().__init__(model=model, score_metric=score_metric, size_average=size_average, normalize_scores=False)
        self.temperature = temperature
        self.minmax_normalize_scores = minmax_normalize_scores
        self.score_metric = _StudentLogits(score_metric, self)

    def forward(self, sentence_features, labels: torch.Tensor) -> torch.Tensor:
        teacher = labels.float()
        if self.minmax_normalize_scores:
            teacher = minmax_normalize(teacher)
        return super().forward(sentence_features, teacher)

