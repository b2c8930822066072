"""Training tasks: a student trained alone, or distilled from frozen teachers.

A task is what the training loop drives: ``parameters()`` (what the optimizer
may change), ``train(mode)``, ``model`` (what is evaluated and saved) and
``training_step(x, y, idx)`` returning the logits and a dict of loss terms
whose ``"loss"`` entry is back-propagated. The contract follows mdistiller's
small ``Distiller``: teachers are always in eval mode and never learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .loss import kd_loss_terms, masked_cross_entropy, normalize_teacher_weights


@dataclass
class StepOutput:
    logits: torch.Tensor
    losses: dict[str, torch.Tensor]  # "loss" is the one to back-propagate; the rest are detached terms


class SupervisedTask:
    """Plain cross-entropy on the labels: the student-alone and teacher baseline."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def parameters(self):
        return self.model.parameters()

    def train(self, mode: bool = True) -> "SupervisedTask":
        self.model.train(mode)
        return self

    def to(self, device: torch.device | str) -> "SupervisedTask":
        self.model.to(device)
        return self

    def training_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None) -> StepOutput:
        logits = self.model(x)
        if (y < 0).all():
            raise ValueError("a supervised batch holds no labelled sample (labels < 0 mark unlabeled data)")
        loss = masked_cross_entropy(logits, y)
        return StepOutput(logits, {"loss": loss, "hard": loss.detach()})


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no gradients: a teacher's weights and BatchNorm statistics stay as trained."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class Distiller:
    """A student distilled from one or several frozen teachers.

    ``cached_logits`` (one [N, C] tensor per teacher, aligned with the sample
    indices of the training split) replaces the teacher forward pass when the
    inputs are not augmented; with augmentation the teachers see each
    augmented batch, so their targets are never stale.
    """

    def __init__(
        self,
        student: nn.Module,
        teachers: nn.Module | Sequence[nn.Module],
        *,
        temperature: float,
        alpha: float,
        teacher_weights: Sequence[float] | None = None,
        combine: str = "probs",
        cached_logits: Sequence[torch.Tensor] | None = None,
    ) -> None:
        self.model = student
        # A plain list, not an nn.ModuleList: the teachers are not part of the
        # student's parameters or state_dict, so no optimizer can pick them up.
        self.teachers = [freeze(t) for t in ([teachers] if isinstance(teachers, nn.Module) else list(teachers))]
        if not self.teachers:
            raise ValueError("a Distiller needs at least one teacher")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.teacher_weights = normalize_teacher_weights(teacher_weights, len(self.teachers))
        self.combine = combine
        self.cached_logits = list(cached_logits) if cached_logits is not None else None
        if self.cached_logits is not None and len(self.cached_logits) != len(self.teachers):
            raise ValueError(f"{len(self.cached_logits)} cached logit tensors for {len(self.teachers)} teachers")

    @property
    def student(self) -> nn.Module:
        return self.model

    def parameters(self):
        """The student's parameters only."""
        return self.model.parameters()

    def train(self, mode: bool = True) -> "Distiller":
        self.model.train(mode)
        for t in self.teachers:  # whatever mode the student is in, teachers stay in eval
            t.eval()
        return self

    def to(self, device: torch.device | str) -> "Distiller":
        self.model.to(device)
        for t in self.teachers:
            t.to(device)
        if self.cached_logits is not None:
            self.cached_logits = [c.to(device) for c in self.cached_logits]
        return self

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> list[torch.Tensor]:
        if self.cached_logits is not None and idx is not None:
            return [c[idx] for c in self.cached_logits]
        return [t(x) for t in self.teachers]

    def training_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None) -> StepOutput:
        teacher_logits = self.teacher_logits(x, idx)
        logits = self.model(x)
        terms = kd_loss_terms(
            logits,
            teacher_logits,
            y,
            temperature=self.temperature,
            alpha=self.alpha,
            teacher_weights=self.teacher_weights if len(self.teachers) > 1 else None,
            combine=self.combine,
        )
        return StepOutput(logits, {"loss": terms.loss, "hard": terms.hard, "soft": terms.soft})
