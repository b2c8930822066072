"""``learned``: global teacher weights learned with the student.

    w = softmax(a),   a: K parameters (init 0: uniform), in the objective's parameter group (no weight decay)

The weights get the distillation loss's gradient, so they move towards the
teachers whose targets the student matches most easily -- which is not the
same as the most correct teacher. Under ``combine: kl_sum`` the loss is linear
in w, and w drifts to the single teacher with the smallest KL; under ``probs``
or ``logits`` the pull is the same in kind but softer. Compare with searched
fixed weights (chosen on validation) before trusting them. Logs ``weight_k``,
the weights at the epoch's end.

This kind is the workbench's simplest learned rule (a softmax-parametrised
mixture, as in learned ensemble weights); no paper's recipe is claimed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from research.distill.objectives.weighting import WEIGHTINGS, Weighting


@WEIGHTINGS.register("learned")
class LearnedWeights(Weighting):
    """[K] weights = softmax of K parameters."""

    def __init__(self, num_teachers: int) -> None:
        super().__init__(num_teachers)
        self.logits = nn.Parameter(torch.zeros(num_teachers))

    def forward(self, teacher_logits: Sequence[torch.Tensor], labels: torch.Tensor | None, progress: Any = None) -> torch.Tensor:
        dtype = teacher_logits[0].dtype
        return torch.softmax(self.logits.to(dtype), dim=0)

    def epoch_values(self) -> dict[str, float]:
        w = torch.softmax(self.logits.detach(), dim=0).tolist()
        return {f"weight_{k}": v for k, v in enumerate(w)}
