"""``fixed``: one constant temperature (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network").

    p = softmax(t / T),  q = softmax(s / T),  loss term T^2 * KL(p || q)

A number in a config (``distill.temperature: 4.0``) is this kind; so is
``{kind: fixed, value: 4.0}``. The logits go to the loss unchanged, so the
result is the same, bit for bit, as before temperature kinds existed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import torch
from pydantic import Field

from research.distill.objectives.temperature import TEMPERATURES, Softened, Temperature


@TEMPERATURES.register("fixed")
class Fixed(Temperature):
    """T = ``value`` throughout; nothing to log per epoch (it is in the run's parameters)."""

    def __init__(self, num_teachers: int, *, value: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 4.0) -> None:
        super().__init__(num_teachers)
        self.value = float(value)

    def forward(self, student_logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor], progress: Any = None) -> Softened:
        return Softened(student_logits, list(teacher_logits), self.value)

    def epoch_values(self) -> dict[str, float]:
        return {}

    def extra_repr(self) -> str:
        return f"T={self.value}"
