"""``standardized`` and ``normkd``: KD on per-sample standardised logits; one computation, two loss scales.

Logit standardisation (Sun et al., CVPR 2024, "Logit Standardization in
Knowledge Distillation"; as their official code computes it): each sample's
logits are standardised over the classes, for the teacher and the student
separately,

    Z(z) = (z - mean(z)) / (std(z) + 1e-7)         std with Bessel's correction (torch.std)

then KD at a base temperature: KL(softmax(Z(t) / T) || softmax(Z(s) / T)) * T^2.
The student no longer has to match the teacher's logit range, only its shape.
Their CIFAR runs use T = 2 with a KD weight of 9 (part of the published gain
may come from that weight: search alpha too).

NormKD (Chi et al., 2023, "NormKD: Normalized Logits for Knowledge
Distillation") gives each sample its own temperature T_i = T_norm * std(z_i)
(the teacher's from the teacher's logits, the student's from the student's).
Since softmax ignores a shift, softmax(z / (T_norm std(z))) = softmax(Z(z) /
T_norm) up to the 1e-7: the same softened distributions as ``standardized``
at base T_norm. What differs is the loss scale: NormKD multiplies each
sample's KL by the teacher's (T_norm * std(t_i))^2 instead of a constant T^2.
With K teachers each teacher is standardised by its own std, and the scale
uses the mean of the teachers' std for that sample.

Both log the per-sample temperature that the raw teacher logits effectively
see, T_i = T * std(t_i) (mean over teachers), as a distribution per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import torch
from pydantic import Field

from research.distill.objectives.temperature import TEMPERATURES, Softened, Temperature

PositiveT = Annotated[float, Field(gt=0, allow_inf_nan=False)]
EPS = 1e-7  # as in Sun et al.'s code: keeps a constant row finite


def standardize(z: torch.Tensor) -> torch.Tensor:
    """(z - mean) / (std + 1e-7) over the last dimension (classes); std with Bessel's correction."""
    return (z - z.mean(-1, keepdim=True)) / (z.std(-1, keepdim=True) + EPS)


def standardized_logits(student_logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor]):
    """Standardised student and teachers, and the teachers' per-sample std [B] (mean over teachers)."""
    teachers = [t.detach() for t in teacher_logits]
    teacher_std = torch.stack([t.std(-1) for t in teachers]).mean(0)
    return standardize(student_logits), [standardize(t) for t in teachers], teacher_std


@TEMPERATURES.register("standardized")
class Standardized(Temperature):
    """Sun et al. 2024: KD on standardised logits at ``base``, scaled by base^2."""

    def __init__(self, num_teachers: int, *, base: PositiveT = 2.0) -> None:
        super().__init__(num_teachers)
        self.base = float(base)

    def forward(self, student_logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor], progress: Any = None) -> Softened:
        s, ts, teacher_std = standardized_logits(student_logits, teacher_logits)
        self.record(self.base * teacher_std, progress)
        return Softened(s, ts, self.base)

    def extra_repr(self) -> str:
        return f"base={self.base}"


@TEMPERATURES.register("normkd")
class NormKD(Temperature):
    """NormKD: the softmax of ``standardized`` at T_norm, each row's KL scaled by (T_norm * std(t_i))^2."""

    def __init__(self, num_teachers: int, *, t_norm: PositiveT = 1.5) -> None:
        super().__init__(num_teachers)
        self.t_norm = float(t_norm)

    def forward(self, student_logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor], progress: Any = None) -> Softened:
        s, ts, teacher_std = standardized_logits(student_logits, teacher_logits)
        per_sample_t = self.t_norm * teacher_std  # [B]
        self.record(per_sample_t, progress)
        return Softened(s, ts, self.t_norm, kl_scale=per_sample_t**2)

    def extra_repr(self) -> str:
        return f"t_norm={self.t_norm}"
