"""Learnable temperatures for PyLate's XTR losses, as small extensions of its classes (not copies).

The XTR recipe (robro612/pylate fork) learns the softmax temperature in both phases. PyLate 1.6's
``Contrastive`` takes a fixed float and ``Distillation`` has none. The temperature is kept as a log so that
it stays positive; it is a parameter of the loss, which sentence-transformers' trainer optimises with the
model (``get_optimizer_cls_and_kwargs`` adds the loss's parameters).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pylate import losses


class LearnableTemperatureContrastive(losses.Contrastive):
    """``pylate.losses.Contrastive`` whose ``temperature`` is ``exp(log_temperature)``, a learnable parameter.

    ``Contrastive.forward`` divides the scores by ``self.temperature``; making that attribute a property
    backed by a parameter is the whole change."""

    def __init__(self, *args, temperature: float = 0.05, learnable: bool = True, **kwargs):
        self._learnable = learnable
        super().__init__(*args, temperature=temperature, **kwargs)  # type: ignore[misc]

    # A tensor where PyLate declares a float: the learnable parameter is the point of this class.
    @property  # type: ignore[override]
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.log_temperature = torch.nn.Parameter(torch.tensor(math.log(value)), requires_grad=self._learnable)


class _TemperatureScaled:
    """A score function divided by the loss's (learnable) temperature."""

    def __init__(self, score_metric: Callable, loss: LearnableTemperatureDistillation):
        self.score_metric, self.loss = score_metric, loss

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.score_metric(*args, **kwargs) / self.loss.temperature


class LearnableTemperatureDistillation(losses.Distillation):
    """``pylate.losses.Distillation`` with student scores divided by a learnable temperature before the
    KL divergence to the teacher's distribution.

    Min-max normalisation of the student scores is turned off: it would cancel any temperature."""

    def __init__(
        self, model, score_metric: Callable, temperature: float = 1.0, learnable: bool = True, size_average: bool = True
    ):
        super().__init__(model=model, score_metric=score_metric, size_average=size_average, normalize_scores=False)
        self.log_temperature = torch.nn.Parameter(torch.tensor(math.log(temperature)), requires_grad=learnable)
        self.score_metric = _TemperatureScaled(score_metric, self)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()
