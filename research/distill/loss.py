"""The one distillation loss of the workbench, and its single convention.

    L = alpha * CE(y, s)                                 mean over labelled samples
      + (1 - alpha) * T^2 * KL(p_teacher || softmax(s/T))  mean over all samples

KL is summed over classes and averaged over the batch ("batchmean"). ``alpha``
weighs the hard-label term. The T^2 factor is always applied (also at
alpha = 0 or 1), so the loss is continuous in alpha on [0, 1]; it keeps the
gradient of the soft term, T * (q - p) / B, on the scale of the hard term's
(Hinton et al. 2015, section 2).

With K teachers the target distribution is either the weighted mixture of
their softened probabilities (``combine="probs"``) or the softmax of their
weighted logits (``combine="logits"``); weights are normalised onto the
simplex. Labels below zero mark unlabeled samples (a transfer set): they add
only the soft term, and a batch with no labelled sample has no hard term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

COMBINE_MODES = ("probs", "logits")


@dataclass(frozen=True)
class KDTerms:
    """The loss and its two terms (unweighted), for logging term by term."""

    loss: torch.Tensor
    hard: torch.Tensor  # mean CE over labelled samples (0 when none)
    soft: torch.Tensor  # mean KL(p_teacher || q_student) at temperature T, without T^2

    def as_floats(self) -> dict[str, float]:
        return {"loss": float(self.loss), "hard": float(self.hard), "soft": float(self.soft)}


def normalize_teacher_weights(weights: Sequence[float] | torch.Tensor | None, k: int) -> torch.Tensor:
    """Weights on the simplex: uniform when None; non-negative with a positive sum otherwise."""
    if weights is None:
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.numel() != k:
        raise ValueError(f"teacher_weights has {w.numel()} values for {k} teachers")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"teacher_weights must be finite and non-negative, got {w.tolist()}")
    if w.sum() <= 0:
        raise ValueError("teacher_weights must not all be zero")
    return w / w.sum()  # float64; callers cast to the logits dtype


def teacher_log_probs(
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    temperature: float,
    teacher_weights: Sequence[float] | torch.Tensor | None = None,
    combine: str = "probs",
) -> torch.Tensor:
    """log p_teacher at temperature T, [B, C], for one teacher or a weighted ensemble."""
    if combine not in COMBINE_MODES:
        raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
    stacked = _stack(teacher_logits)  # [K, B, C]
    if stacked.shape[0] == 1:  # one teacher: no mixing (and no per-step weight checks)
        return F.log_softmax(stacked[0] / temperature, dim=-1)
    w = normalize_teacher_weights(teacher_weights, stacked.shape[0]).to(stacked)
    if combine == "logits":
        mixed = (w.view(-1, 1, 1) * stacked).sum(0)
        return F.log_softmax(mixed / temperature, dim=-1)
    # Mixture of probabilities in log space: log sum_k w_k softmax(t_k / T).
    log_p = F.log_softmax(stacked / temperature, dim=-1) + torch.log(w).view(-1, 1, 1)
    return torch.logsumexp(log_p, dim=0)


def kd_loss_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor | None,
    *,
    temperature: float,
    alpha: float,
    teacher_weights: Sequence[float] | torch.Tensor | None = None,
    combine: str = "probs",
) -> KDTerms:
    """The loss with its terms; see the module docstring for the convention."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    log_p = teacher_log_probs(teacher_logits, temperature, teacher_weights, combine).detach()
    if log_p.shape != student_logits.shape:
        raise ValueError(f"teacher logits {tuple(log_p.shape)} do not match student logits {tuple(student_logits.shape)}")
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    # kl_div(input=log q, target=log p, log_target=True) = p * (log p - log q), summed over classes.
    soft = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    hard = masked_cross_entropy(student_logits, labels)
    loss = alpha * hard + (1.0 - alpha) * temperature**2 * soft
    return KDTerms(loss=loss, hard=hard.detach(), soft=soft.detach())


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Mean CE over the samples with a label (>= 0); 0 when there are none."""
    if labels is None:
        return logits.new_zeros(())
    n_labelled = int((labels >= 0).sum())
    if n_labelled == len(labels):  # the common case, without a gather/scatter
        return F.cross_entropy(logits, labels)
    if n_labelled == 0:
        return logits.new_zeros(())
    labelled = labels >= 0
    return F.cross_entropy(logits[labelled], labels[labelled])


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor | None,
    *,
    temperature: float,
    alpha: float,
    teacher_weights: Sequence[float] | torch.Tensor | None = None,
    combine: str = "probs",
) -> torch.Tensor:
    """Scalar distillation loss (Hinton et al. 2015) in the workbench's convention.

    ``teacher_logits`` is one [B, C] tensor or a sequence of K of them. Use
    :func:`kd_loss_terms` to get the hard and soft terms as well.
    """
    return kd_loss_terms(
        student_logits,
        teacher_logits,
        labels,
        temperature=temperature,
        alpha=alpha,
        teacher_weights=teacher_weights,
        combine=combine,
    ).loss


def _stack(teacher_logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    if isinstance(teacher_logits, torch.Tensor):
        if teacher_logits.dim() == 2:
            return teacher_logits.unsqueeze(0)
        if teacher_logits.dim() == 3:
            return teacher_logits
        raise ValueError(f"teacher logits must be [B, C] or [K, B, C], got {tuple(teacher_logits.shape)}")
    logits = list(teacher_logits)
    if not logits:
        raise ValueError("at least one teacher's logits are needed")
    if len(logits) == 1:  # a view, no copy
        return logits[0].detach().unsqueeze(0)
    return torch.stack([t.detach() for t in logits])
