"""``learnable``: a learned temperature trained adversarially (CTKD, Li et al., AAAI 2023,
"Curriculum Temperature for Knowledge Distillation"; as their official code computes it).

    T = t_min + t_range * sigmoid(theta)        one scalar theta, init 1 (T ~ 15.6 with 1 + 20 sigmoid)

theta reaches the loss through a gradient-reversal layer: the forward pass is
the identity, the backward pass multiplies theta's gradient by a factor

    lambda(e) = -(1 - cos(pi * min(e, W) / W)) / 2        0 at e = 0, -1 from e = W on

where e is the number of epochs done (fractional: (step - 1) / steps_per_epoch)
and W = ``warmup_epochs``. The optimizer minimises the loss, so with lambda < 0
theta moves to INCREASE it: the temperature learns to make distillation harder,
more so as the curriculum proceeds (the student's gradient is untouched). CTKD
steps lambda once per epoch; here it moves per step, so it is exactly 0 only at
the first step and the curriculum has no jumps. ``warmup_epochs: 0`` reverses
fully from the start. theta has no weight decay (the objective's parameter group).
The ramp is a curriculum only for an optimizer whose step scales with the
gradient (CTKD trains with SGD): Adam's steps ignore the gradient's scale, so
there lambda sets only the sign, and on MNIST-1D T reached its ceiling within
the first epoch (benchmarks/results/mnist1d_adaptive/).

Logs ``temperature`` (the value at the epoch's end), its range over the
epoch's steps, and ``grl_factor`` (the last lambda).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from research.distill.objectives.temperature import TEMPERATURES, Softened, Temperature

PositiveT = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class GradientReversal(torch.autograd.Function):
    """y = x; dL/dx = factor * dL/dy (Ganin & Lempitsky 2015's layer, with a signed factor)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.factor, None


def reversal_factor(epochs_done: float, warmup_epochs: float) -> float:
    """lambda: 0 at the start, -1 after ``warmup_epochs`` (a half cosine in between)."""
    if warmup_epochs <= 0:
        return -1.0
    e = min(max(epochs_done, 0.0), warmup_epochs)
    return -(1.0 - math.cos(math.pi * e / warmup_epochs)) / 2.0


@TEMPERATURES.register("learnable")
class Learnable(Temperature):
    """CTKD's global temperature; needs the training progress (for lambda)."""

    def __init__(self, num_teachers: int, *, t_min: PositiveT = 1.0, t_range: PositiveT = 20.0,
                 init: Annotated[float, Field(allow_inf_nan=False)] = 1.0,
                 warmup_epochs: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 10.0) -> None:
        super().__init__(num_teachers)
        self.t_min, self.t_range, self.warmup_epochs = float(t_min), float(t_range), float(warmup_epochs)
        self.theta = nn.Parameter(torch.tensor(float(init)))
        self.last_factor: float | None = None

    def value(self) -> torch.Tensor:
        """T now (no reversal, no graph): what is logged."""
        return (self.t_min + self.t_range * torch.sigmoid(self.theta)).detach()

    def forward(self, student_logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor], progress: Any = None) -> Softened:
        p = self.needs(progress)
        factor = reversal_factor((p.step - 1) / p.steps_per_epoch, self.warmup_epochs)
        self.last_factor = factor
        theta = GradientReversal.apply(self.theta, factor)
        T = (self.t_min + self.t_range * torch.sigmoid(theta)).to(student_logits.dtype)
        self.record(T, p)
        return Softened(student_logits, list(teacher_logits), T)

    def epoch_values(self) -> dict[str, float]:
        out = {**super().epoch_values(), "temperature": float(self.value())}
        if self.last_factor is not None:
            out["grl_factor"] = self.last_factor
        return out

    def extra_repr(self) -> str:
        return f"T = {self.t_min} + {self.t_range} * sigmoid(theta), warmup_epochs={self.warmup_epochs}"
