"""The one distillation loss of the workbench, and its single convention.

    L = alpha * CE(y, s)                                 mean over labelled samples
      + (1 - alpha) * T^2 * KL(p_teacher || softmax(s/T))  mean over all samples

KL is summed over classes and averaged over the batch ("batchmean"). ``alpha``
weighs the hard-label term. The T^2 factor is always applied (also at
alpha = 0 or 1), so the loss is continuous in alpha on [0, 1]; it keeps the
gradient of the soft term, T * (q - p) / B, on the scale of the hard term's
(Hinton et al. 2015, section 2).

With K teachers and weights w on the simplex, three combination rules, which
are different losses:

- ``combine="probs"``: KL(sum_k w_k p_k || q), the target is the mixture
  (arithmetic mean) of the teachers' softened probabilities p_k.
- ``combine="logits"``: KL(softmax(sum_k w_k t_k / T) || q), the softmax of the
  mixed logits, proportional to prod_k p_k^(w_k): a weighted geometric mean
  (product of experts), sharper than the mixture where the teachers agree and
  flatter where they disagree.
- ``combine="kl_sum"``: sum_k w_k KL(p_k || q), one KL per teacher. It equals
  the ``probs`` loss plus the Jensen gap sum_k w_k KL(p_k || p_mix), which does
  not depend on the student: for weights that do not depend on the student,
  ``kl_sum`` and ``probs`` give the SAME gradient to the student (q - p_mix at
  temperature T) and differ only in the value (always >= ``probs``). They
  differ in what learned weights see: under ``kl_sum`` each teacher's weight
  gets that teacher's own KL, so learned weights move towards the teacher the
  student already matches best.

Labels below zero mark unlabeled samples (a transfer set): they add
only the soft term, and a batch with no labelled sample has no hard term.

Shapes: logits are rows of class scores, [B, C] (a sequence task hands over
its positions as rows, [N, V], see ``research.tasks``). The teachers' logits
are a list of K tensors of the student's shape, one per teacher; a single
tensor is accepted as ONE teacher's logits for convenience, never read as K
stacked teachers (a [B, L, V] tensor would be ambiguous). Teacher weights
are [K] (one weight per teacher) or [B, K] (per sample, each row on the
simplex: an adaptive weighting rule's output).

The temperature is a number (or a 0-d tensor: a learned temperature), or one
temperature per row, [B] or [B, 1] (a per-sample rule). Each row's KL is then
multiplied by its own T_i^2, or by ``kl_scale`` [B] when a rule scales the
loss otherwise (NormKD), and averaged over the rows:

    L = alpha * CE + (1 - alpha) * mean_i( scale_i * KL_i ),  scale_i = T_i^2 by default

This module holds plain functions; the registered objective that the
training uses is ``research.distill.objectives.kd.KD``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F

COMBINE_MODES = ("probs", "logits", "kl_sum")

TeacherLogits = Union[torch.Tensor, Sequence[torch.Tensor]]  # one teacher's [B, C], or a list of K of them


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
    teacher_logits: TeacherLogits,
    temperature: float | torch.Tensor,
    teacher_weights: Sequence[float] | torch.Tensor | None = None,
    combine: str = "probs",
) -> torch.Tensor:
    """log p_teacher at temperature T, shaped like one teacher's logits, for one teacher or a weighted ensemble.

    ``teacher_weights``: None (uniform), [K] or [B, K] (per sample); see the module docstring.
    ``temperature``: a number, a 0-d tensor, or [B, 1] (per sample).
    The teachers' logits are detached: no gradient ever reaches a teacher. Weights and
    temperature are not detached, so an objective may learn them.
    For ``combine="kl_sum"`` this is the mixture (as ``probs``): the one distribution whose
    KL gradient the per-teacher KL sum shares, used where a single target is needed
    (agreement with the teachers at evaluation).
    """
    if combine not in COMBINE_MODES:
        raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
    logits = teacher_list(teacher_logits)
    if len(logits) == 1:  # one teacher: no mixing (and no per-step weight checks)
        return F.log_softmax(logits[0] / temperature, dim=-1)
    stacked = torch.stack(logits)  # [K, B, C]
    w = _mixing_weights(teacher_weights, stacked)  # [K, 1, 1] or [K, B, 1]
    if combine == "logits":
        mixed = (w * stacked).sum(0)
        return F.log_softmax(mixed / temperature, dim=-1)
    # Mixture of probabilities in log space: log sum_k w_k softmax(t_k / T).
    log_p = F.log_softmax(stacked / temperature, dim=-1) + torch.log(w)
    return torch.logsumexp(log_p, dim=0)


def teacher_list(teacher_logits: TeacherLogits) -> list[torch.Tensor]:
    """The teachers' logits as an explicit list of K detached tensors.

    A single tensor is one teacher's logits and must be [B, C]; K teachers come as a
    list (a 3-D tensor is refused rather than guessed to be K stacked teachers).
    """
    if isinstance(teacher_logits, torch.Tensor):
        if teacher_logits.dim() != 2:
            raise ValueError(
                f"a single tensor of teacher logits must be one teacher's [B, C], got {tuple(teacher_logits.shape)}; "
                "pass K teachers as a list of K tensors"
            )
        return [_upcast(teacher_logits.detach())]
    logits = [_upcast(t.detach()) for t in teacher_logits]
    if not logits:
        raise ValueError("at least one teacher's logits are needed")
    shapes = {tuple(t.shape) for t in logits}
    if len(shapes) > 1:
        raise ValueError(f"the teachers' logits differ in shape: {sorted(shapes)}")
    return logits


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 logits as float32, before any division by T: in float16, z / T at a small T
    overflows past 65504 to inf and the softmax gives NaN; bfloat16 keeps 3 significant digits."""
    return logits.float() if logits.is_floating_point() and torch.finfo(logits.dtype).bits < 32 else logits


def _mixing_weights(weights: Sequence[float] | torch.Tensor | None, stacked: torch.Tensor) -> torch.Tensor:
    """Weights on the simplex, broadcastable against ``stacked`` [K, B, ..., C]."""
    k = stacked.shape[0]
    if isinstance(weights, torch.Tensor) and weights.dim() == 2:  # per sample, [B, K]
        if weights.shape != (stacked.shape[1], k):
            raise ValueError(f"per-sample teacher weights must be [B, K] = {(stacked.shape[1], k)}, got {tuple(weights.shape)}")
        if not torch.isfinite(weights).all() or (weights < 0).any() or (weights.sum(1) <= 0).any():
            raise ValueError("per-sample teacher weights must be finite, non-negative, with a positive sum in every row")
        w = (weights / weights.sum(1, keepdim=True)).to(stacked).t()  # [K, B]
        return w.reshape(k, stacked.shape[1], *([1] * (stacked.dim() - 2)))
    w = normalize_teacher_weights(weights, k).to(stacked)
    return w.reshape(k, *([1] * (stacked.dim() - 1)))


def kd_loss_terms(
    student_logits: torch.Tensor,
    teacher_logits: TeacherLogits,
    labels: torch.Tensor | None,
    *,
    temperature: float | torch.Tensor,
    alpha: float,
    teacher_weights: Sequence[float] | torch.Tensor | None = None,
    combine: str = "probs",
    kl_scale: torch.Tensor | None = None,
    soft_student_logits: torch.Tensor | None = None,
) -> KDTerms:
    """The loss with its terms; see the module docstring for the convention.

    ``temperature`` may be a 0-d tensor (a learned temperature): the gradient then
    reaches it through both softmaxes and the T^2 factor; or one temperature per row
    ([B] or [B, 1]), each row's KL then scaled by its own T_i^2. ``kl_scale`` [B]
    replaces that T^2 factor row by row. ``soft_student_logits``: the student's logits
    that the soft term compares with the teachers' (default ``student_logits``); a
    temperature rule that standardises logits passes them here, while the hard term
    keeps the raw ``student_logits``. ``soft`` is the plain mean KL (no scale).
    """
    temperature = _check_temperature(temperature, student_logits.shape[0])
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    student_logits = _upcast(student_logits)  # differentiable: the gradient flows back in the student's dtype
    soft_logits = student_logits if soft_student_logits is None else _upcast(soft_student_logits)
    if soft_logits.shape != student_logits.shape:
        raise ValueError(f"soft_student_logits {tuple(soft_logits.shape)} do not match student logits {tuple(student_logits.shape)}")
    scalar_t = not (isinstance(temperature, torch.Tensor) and temperature.dim() > 0)
    if scalar_t and kl_scale is None and combine != "kl_sum":
        # The one-number path, unchanged since the first release (same operations, same bits).
        log_p = teacher_log_probs(teacher_logits, temperature, teacher_weights, combine)
        if log_p.shape != soft_logits.shape:
            raise ValueError(f"teacher logits {tuple(log_p.shape)} do not match student logits {tuple(soft_logits.shape)}")
        log_q = F.log_softmax(soft_logits / temperature, dim=-1)
        # kl_div(input=log q, target=log p, log_target=True) = p * (log p - log q), summed over classes.
        soft = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
        hard = masked_cross_entropy(student_logits, labels)
        loss = alpha * hard + (1.0 - alpha) * temperature**2 * soft
        return KDTerms(loss=loss, hard=hard.detach(), soft=soft.detach())
    kl = per_sample_kl(soft_logits, teacher_logits, temperature, teacher_weights, combine)  # [B]
    if kl_scale is None:
        scale = temperature.reshape(-1) ** 2 if not scalar_t else temperature**2
    else:
        scale = _check_kl_scale(kl_scale, kl.shape[0])
    hard = masked_cross_entropy(student_logits, labels)
    loss = alpha * hard + (1.0 - alpha) * (scale * kl).mean()
    return KDTerms(loss=loss, hard=hard.detach(), soft=kl.mean().detach())


def per_sample_kl(
    student_logits: torch.Tensor,
    teacher_logits: TeacherLogits,
    temperature: float | torch.Tensor,
    teacher_weights: Sequence[float] | torch.Tensor | None = None,
    combine: str = "probs",
) -> torch.Tensor:
    """KL(target || softmax(s / T)) of each row, [B], summed over classes, for a combination rule.

    ``temperature``: a number, a 0-d tensor or [B, 1]. ``kl_sum`` is sum_k w_k KL(p_k || q) per row.
    """
    if combine not in COMBINE_MODES:
        raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    if combine != "kl_sum":
        log_p = teacher_log_probs(teacher_logits, temperature, teacher_weights, combine)
        if log_p.shape != student_logits.shape:
            raise ValueError(f"teacher logits {tuple(log_p.shape)} do not match student logits {tuple(student_logits.shape)}")
        return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    stacked = torch.stack(teacher_list(teacher_logits))  # [K, B, C]
    if stacked.shape[1:] != student_logits.shape:
        raise ValueError(f"teacher logits {tuple(stacked.shape[1:])} do not match student logits {tuple(student_logits.shape)}")
    w = _mixing_weights(teacher_weights, stacked).squeeze(-1)  # [K, 1] or [K, B]
    log_p = F.log_softmax(stacked / temperature, dim=-1)
    kl_each = F.kl_div(log_q.expand_as(log_p), log_p, reduction="none", log_target=True).sum(-1)  # [K, B]
    return (w * kl_each).sum(0)


def _check_temperature(temperature: float | torch.Tensor, rows: int | None = None) -> float | torch.Tensor:
    """The temperature as the loss uses it: a number, a 0-d tensor, or [rows, 1]; ValueError otherwise."""
    if isinstance(temperature, torch.Tensor):
        t = temperature.detach()
        if t.dim() > 0:
            if rows is None or t.numel() != rows or t.shape not in ((rows,), (rows, 1)):
                raise ValueError(f"a per-sample temperature must be [B] or [B, 1] with B = {rows}, got {tuple(t.shape)}")
            if not (torch.isfinite(t).all() and (t > 0).all()):
                raise ValueError("a per-sample temperature must be finite and > 0 in every row")
            return temperature.reshape(rows, 1)
        ok = bool(torch.isfinite(t)) and float(t) > 0
    else:
        ok = isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
    if not ok:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return temperature


def _check_kl_scale(scale: torch.Tensor, rows: int) -> torch.Tensor:
    if not isinstance(scale, torch.Tensor) or scale.numel() != rows:
        raise ValueError(f"kl_scale must be a tensor of {rows} values (one per row), got {getattr(scale, 'shape', scale)}")
    s = scale.reshape(rows)
    if not (torch.isfinite(s.detach()).all() and (s.detach() >= 0).all()):
        raise ValueError("kl_scale must be finite and non-negative")
    return s


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
    teacher_logits: TeacherLogits,
    labels: torch.Tensor | None,
    *,
    temperature: float | torch.Tensor,
    alpha: float,
    teacher_weights: Sequence[float] | torch.Tensor | None = None,
    combine: str = "probs",
) -> torch.Tensor:
    """Scalar distillation loss (Hinton et al. 2015) in the workbench's convention.

    ``teacher_logits`` is a list of K [B, C] tensors, or for convenience one
    [B, C] tensor (one teacher; a 3-D tensor is refused, never read as K
    teachers). Use :func:`kd_loss_terms` to get the hard and soft terms as well.
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
