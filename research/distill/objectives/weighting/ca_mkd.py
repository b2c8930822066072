"""``ca_mkd``: confidence-aware per-sample teacher weights (CA-MKD: Zhang, Chen and Wang,
ICASSP 2022, "Confidence-Aware Multi-Teacher Knowledge Distillation"; as their code computes it).

For sample i with label y_i and teacher k's logits t_k (at T = 1),

    CE_ik = -log softmax(t_k)_i[y_i]
    w_ik  = (1 - softmax_k(CE_i)_k) / (K - 1)               rows sum to 1

so a teacher with a higher cross-entropy on the label (less right) gets less
weight. Unlabeled samples (label < 0, a transfer set) have no CE: their score
is each teacher's own entropy H_ik = -sum_c p log p instead -- the CE a
teacher expects to pay under its own prediction, so a teacher unsure of a
sample gets less weight. This is the workbench's extension (CA-MKD trains on
labelled data only): it keeps the rule defined on a transfer set, where most
samples are unlabeled; mixing CE rows and entropy rows in one batch is fine
since the softmax runs over the teachers of one sample. One teacher: w = 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from research.distill.objectives.weighting import WEIGHTINGS, PerSampleWeighting


def teacher_scores(teacher_logits: Sequence[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
    """[K, B]: each teacher's CE on the label where there is one, its entropy elsewhere."""
    scores = []
    for t in teacher_logits:
        log_p = F.log_softmax(t.detach(), dim=-1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        if labels is None:
            scores.append(entropy)
            continue
        labelled = labels >= 0
        ce = -log_p.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        scores.append(torch.where(labelled, ce, entropy))
    return torch.stack(scores)


@WEIGHTINGS.register("ca_mkd")
class CAMKD(PerSampleWeighting):
    """Per-sample [B, K] weights from the teachers' CE on the label (entropy when unlabeled)."""

    def rows(self, teachers: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        k = len(teachers)
        return ((1.0 - torch.softmax(teacher_scores(teachers, labels), dim=0)) / (k - 1)).t()  # [B, K]
