"""``kd``: Hinton et al. 2015 knowledge distillation, the workbench's one convention,
composed of a temperature kind and a teacher-weighting kind.

    L = alpha * CE(y, s) + (1 - alpha) * mean_i( T_i^2 * KL(p_teacher,i || softmax(s_i / T_i)) )

computed by :func:`research.distill.loss.kd_loss_terms` (golden-tested against
an independent NumPy formula in tests/test_loss.py). With a fixed temperature
T_i = T and this is the classic T^2 * KL(batchmean).

Three parts, each chosen by a knob:

- ``temperature``: a number (the ``fixed`` kind) or a spec ``{kind: ..., knobs}``
  of :mod:`research.distill.objectives.temperature` (annealed, standardized,
  normkd, learnable, entropy).
- ``weighting``: None (``fixed``, with ``teacher_weights``; uniform when those
  are None) or a spec of :mod:`research.distill.objectives.weighting` (ca_mkd,
  entropy, learned). Weights are computed from the raw teacher logits (T = 1).
- ``combine``: ``probs`` (mixture of the teachers' softened probabilities),
  ``logits`` (softmax of the mixed logits) or ``kl_sum`` (weighted sum of
  per-teacher KLs); how they differ as losses is in :mod:`research.distill.loss`.

A kind's own parameters (CTKD's theta, learned weights) are submodule
parameters of this objective, so the Distiller hands them to the optimizer
without weight decay. ``epoch_values()`` reports what the kinds did in the
last epoch (temperatures and weights as mean / min / max).

:meth:`KD.teacher_weights` remains the hook a subclass may override; a new
rule is better written as a weighting kind (one file plus its registration).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from research.distill.loss import kd_loss_terms
from research.distill.objectives import Objective, Progress, register_objective
from research.distill.objectives.temperature import TemperatureValue, build_temperature
from research.distill.objectives.weighting import WeightingValue, build_weighting


@register_objective("kd")
class KD(Objective):
    """alpha * CE + (1 - alpha) * T^2 * KL; terms ``loss``, ``hard`` (CE), ``soft`` (mean KL without T^2)."""

    def __init__(
        self,
        num_teachers: int,
        *,
        temperature: TemperatureValue = 4.0,
        alpha: Annotated[float, Field(ge=0, le=1)] = 0.1,
        teacher_weights: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = None,
        combine: Literal["probs", "logits", "kl_sum"] = "probs",
        weighting: WeightingValue = None,
    ) -> None:
        super().__init__(num_teachers)
        self.check_knobs({"teacher_weights": teacher_weights, "weighting": weighting})
        # The configured value (a number or a spec), as given; the module doing the work is temperature_kind.
        self.temperature = float(temperature) if isinstance(temperature, (int, float)) else dict(temperature)
        self.alpha = float(alpha)
        self.combine = combine
        self.temperature_kind = build_temperature(temperature, num_teachers=num_teachers)
        self.weighting_kind = build_weighting(weighting, num_teachers=num_teachers, teacher_weights=teacher_weights)

    @classmethod
    def check_knobs(cls, knobs: Mapping[str, Any]) -> None:
        """Fixed weights come from ``teacher_weights`` only, and only with the fixed weighting."""
        spec, weights = knobs.get("weighting"), knobs.get("teacher_weights")
        if spec is None:
            return
        if "weights" in spec:
            raise ValueError("weighting.weights: give fixed weights as teacher_weights")
        if weights is not None and spec.get("kind") != "fixed":
            raise ValueError(f"teacher_weights: only the fixed weighting takes given weights; "
                             f"weighting kind {spec.get('kind')!r} computes its own (drop one)")

    @property
    def fixed_weights(self) -> torch.Tensor | None:
        """The fixed kind's [K] weights on the simplex (float64); None for another weighting."""
        return getattr(self.weighting_kind, "fixed_weights", None)

    def teacher_weights(
        self, teacher_logits: Sequence[torch.Tensor], labels: torch.Tensor | None, progress: Progress | None
    ) -> torch.Tensor:
        """The teachers' mixing weights for this batch: [K], or [B, K] per sample (rows on the simplex)."""
        return self.weighting_kind(teacher_logits, labels, progress)

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: Sequence[torch.Tensor],
        labels: torch.Tensor | None,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:
        # Detached once here: no kind (a weighting rule, a standardisation, a per-sample scale) can
        # ever send a gradient into a teacher.
        logits = [t.detach() for t in self.check_teachers(teacher_logits)]
        weights = self.teacher_weights(logits, labels, progress) if self.num_teachers > 1 else None
        soft = self.temperature_kind(student_logits, logits, progress)
        terms = kd_loss_terms(
            student_logits, soft.teachers, labels,
            temperature=soft.temperature, alpha=self.alpha, teacher_weights=weights, combine=self.combine,
            kl_scale=soft.kl_scale, soft_student_logits=None if soft.student is student_logits else soft.student,
        )
        return {"loss": terms.loss, "hard": terms.hard, "soft": terms.soft}

    def epoch_values(self) -> dict[str, float]:
        return {**self.temperature_kind.epoch_values(), **(self.weighting_kind.epoch_values() if self.num_teachers > 1 else {})}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, combine={self.combine!r}"
