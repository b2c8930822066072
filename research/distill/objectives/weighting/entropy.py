"""``entropy``: per-sample teacher weights from the teachers' entropies, no labels needed.

For sample i, with H_ik the entropy of teacher k's prediction at T = 1,

    w_ik = (1 - H_ik / sum_j H_ij) / (K - 1)                rows sum to 1

so the more confident teacher (lower entropy) gets more weight. The rule is
"w_k proportional to 1 - H_k / sum_j H_j", in the family of entropy-based
multi-teacher weights (e.g. Kwon et al., ICASSP 2020, "Adaptive knowledge
distillation based on entropy"); the 1 / (K - 1) is that proportionality's
normaliser. With K = 2 it reduces to w_1 = H_2 / (H_1 + H_2). When every
teacher is certain (all H = 0) the weights are uniform. One teacher: w = 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from research.distill.objectives.weighting import WEIGHTINGS, PerSampleWeighting


@WEIGHTINGS.register("entropy")
class EntropyWeights(PerSampleWeighting):
    """Per-sample [B, K] weights, more for the lower-entropy teacher."""

    def rows(self, teachers: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        k = len(teachers)
        log_p = F.log_softmax(torch.stack([t.detach() for t in teachers]), dim=-1)  # [K, B, C]
        h = -(log_p.exp() * log_p).sum(-1)  # [K, B]
        total = h.sum(0, keepdim=True)
        return torch.where(total > 0, (1.0 - h / total.clamp_min(torch.finfo(h.dtype).tiny)) / (k - 1),
                           torch.full_like(h, 1.0 / k)).t()
