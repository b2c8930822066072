"""``kd``: Hinton et al. 2015 knowledge distillation, the workbench's one convention.

    L = alpha * CE(y, s) + (1 - alpha) * T^2 * KL(p_teacher || softmax(s / T))

computed by :func:`research.distill.loss.kd_loss_terms` (golden-tested against
an independent NumPy formula in tests/test_loss.py). K teachers are combined
by the mixture of their softened probabilities (``combine: probs``) or the
softmax of their weighted logits (``combine: logits``), with weights on the
simplex.

:meth:`KD.teacher_weights` is the hook for a teacher-weighting rule: a
subclass overriding it (fixed, learned or computed per sample from the
teachers' logits and the labels) is a new rule, registered under its own name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import torch
from pydantic import Field

from research.distill.loss import kd_loss_terms, normalize_teacher_weights
from research.distill.objectives import Objective, Progress, register_objective


@register_objective("kd")
class KD(Objective):
    """alpha * CE + (1 - alpha) * T^2 * KL(batchmean); terms ``loss``, ``hard`` (CE), ``soft`` (KL without T^2)."""

    def __init__(
        self,
        num_teachers: int,
        *,
        temperature: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 4.0,
        alpha: Annotated[float, Field(ge=0, le=1)] = 0.1,
        teacher_weights: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = None,
        combine: Literal["probs", "logits"] = "probs",
    ) -> None:
        super().__init__(num_teachers)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.combine = combine
        # float64 on the simplex; cast to the logits' dtype and device where used. A plain
        # attribute, not a buffer: fixed weights are configuration, not state to save.
        self.fixed_weights = normalize_teacher_weights(teacher_weights, num_teachers)

    def teacher_weights(
        self, teacher_logits: Sequence[torch.Tensor], labels: torch.Tensor | None, progress: Progress | None
    ) -> torch.Tensor:
        """The teachers' mixing weights for this batch: [K], or [B, K] per sample (rows on the simplex)."""
        return self.fixed_weights

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: Sequence[torch.Tensor],
        labels: torch.Tensor | None,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:
        logits = self.check_teachers(teacher_logits)
        weights = self.teacher_weights(logits, labels, progress) if self.num_teachers > 1 else None
        terms = kd_loss_terms(
            student_logits, logits, labels,
            temperature=self.temperature, alpha=self.alpha, teacher_weights=weights, combine=self.combine,
        )
        return {"loss": terms.loss, "hard": terms.hard, "soft": terms.soft}

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, weights={self.fixed_weights.tolist()}, combine={self.combine!r}"
