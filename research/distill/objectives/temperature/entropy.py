"""``entropy``: a per-sample temperature from the teachers' confidence.

With H_i the entropy of the teachers' prediction on sample i at T = 1,
normalised by its maximum log C into [0, 1] (the mean over the K teachers of
each teacher's normalised entropy),

    T_i = t_max - (t_max - t_min) * H_i / log C          in [t_min, t_max]

and each row's KL is scaled by its own T_i^2 (the usual gradient-scale
argument of Hinton et al. 2015, sample by sample).

Direction, and why: a CONFIDENT teacher (low entropy) gets a HIGH temperature,
an uncertain one a low temperature. A confident teacher's distribution is
nearly one-hot: its dark knowledge (how the wrong classes rank) sits in tiny
probabilities that only a high T brings out. An uncertain teacher's
distribution is already soft; a high T would flatten it towards uniform and
erase what it knows. This evens out the entropy of the targets across samples,
the same direction as NormKD (a sample with widely spread logits gets a
larger T). The opposite mapping (confident -> low T) would sharpen the easy
samples, which the hard-label term already teaches.

The mapping is the workbench's (an entropy-to-temperature rule in the family
of instance-wise temperatures such as CTKD's instance variant and NormKD);
logs the per-sample T as a distribution per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field

from research.distill.objectives.temperature import TEMPERATURES, Softened, Temperature

PositiveT = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(z)) / log C per row, [B], in [0, 1]."""
    log_p = F.log_softmax(logits, dim=-1)
    h = -(log_p.exp() * log_p).sum(-1)
    return h / math.log(logits.shape[-1])


@TEMPERATURES.register("entropy")
class EntropyTemperature(Temperature):
    """T_i from the teachers' normalised entropy, confident -> ``t_max``, uncertain -> ``t_min``."""

    def __init__(self, num_teachers: int, *, t_min: PositiveT = 1.0, t_max: PositiveT = 8.0) -> None:
        super().__init__(num_teachers)
        self.t_min, self.t_max = float(t_min), float(t_max)

    @classmethod
    def check_knobs(cls, knobs: Mapping[str, Any]) -> None:
        if knobs["t_min"] > knobs["t_max"]:
            raise ValueError(f"t_min ({knobs['t_min']}) must not exceed t_max ({knobs['t_max']})")

    def forward(self, student_logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor], progress: Any = None) -> Softened:
        teachers = list(teacher_logits)
        h = torch.stack([normalized_entropy(t.detach()) for t in teachers]).mean(0).clamp(0.0, 1.0)  # [B]
        T = self.t_max - (self.t_max - self.t_min) * h
        self.record(T, progress)
        return Softened(student_logits, teachers, T.to(student_logits.dtype).unsqueeze(-1))

    def extra_repr(self) -> str:
        return f"t_min={self.t_min}, t_max={self.t_max}"
