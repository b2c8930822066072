"""``fixed``: given teacher weights, the same for every sample (today's rule).

    w = weights / sum(weights)       uniform when none are given

The weights are ``distill.teacher_weights`` (a study searches them on the
simplex: K positive draws, normalised). Without a weighting kind this is the
default, and the loss is bit for bit what it was before weighting kinds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import torch
from pydantic import Field

from research.distill.loss import normalize_teacher_weights
from research.distill.objectives.weighting import WEIGHTINGS, Weighting


@WEIGHTINGS.register("fixed")
class FixedWeights(Weighting):
    """[K] float64 weights on the simplex (cast to the logits' dtype where used)."""

    def __init__(self, num_teachers: int, *,
                 weights: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = None) -> None:
        super().__init__(num_teachers)
        # A plain attribute, not a buffer: fixed weights are configuration, not state to save.
        self.fixed_weights = normalize_teacher_weights(weights, num_teachers)

    def forward(self, teacher_logits: Sequence[torch.Tensor], labels: torch.Tensor | None, progress: Any = None) -> torch.Tensor:
        return self.fixed_weights

    def epoch_values(self) -> dict[str, float]:
        return {}  # constant: in the run's parameters

    def extra_repr(self) -> str:
        return f"weights={self.fixed_weights.tolist()}"
