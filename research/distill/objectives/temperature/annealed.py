"""``annealed``: the temperature moves from ``start`` to ``end`` over training.

With f = (step - 1) / total_steps in [0, 1) the share of the run's optimizer
steps done before this one (:attr:`Progress.fraction`):

    linear:  T(f) = end + (start - end) * (1 - f)
    cosine:  T(f) = end + (start - end) * (1 + cos(pi * f)) / 2

Source: a temperature schedule in the spirit of annealing KD (Jafari et al.,
EACL 2021, "Annealing Knowledge Distillation", where a high temperature early
gives the student a smooth target that sharpens as it learns); the cosine
form is the one of cosine learning-rate schedules. Either direction is
allowed (``start < end`` warms up). Needs the training progress.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from research.distill.objectives.temperature import TEMPERATURES, Softened, Temperature

PositiveT = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def annealed_temperature(start: float, end: float, fraction: float, schedule: str) -> float:
    """T at ``fraction`` in [0, 1] of training (see the module docstring)."""
    if schedule == "linear":
        return end + (start - end) * (1.0 - fraction)
    return end + (start - end) * (1.0 + math.cos(math.pi * fraction)) / 2.0


@TEMPERATURES.register("annealed")
class Annealed(Temperature):
    """T from ``start`` to ``end`` by ``schedule``; logs ``temperature`` (the last step's) and its epoch range."""

    def __init__(self, num_teachers: int, *, start: PositiveT = 8.0, end: PositiveT = 2.0,
                 schedule: Literal["linear", "cosine"] = "linear") -> None:
        super().__init__(num_teachers)
        self.start, self.end, self.schedule = float(start), float(end), schedule
        self.last: float | None = None

    def forward(self, student_logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor], progress: Any = None) -> Softened:
        p = self.needs(progress)
        T = annealed_temperature(self.start, self.end, p.fraction, self.schedule)
        self.last = T
        self.record(torch.tensor(T), p)
        return Softened(student_logits, list(teacher_logits), T)

    def epoch_values(self) -> dict[str, float]:
        out = super().epoch_values()
        if self.last is not None:
            out["temperature"] = self.last
        return out

    def extra_repr(self) -> str:
        return f"start={self.start}, end={self.end}, schedule={self.schedule!r}"
