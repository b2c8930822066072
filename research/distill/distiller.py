"""Learners: what the training loop drives -- a model trained alone, or distilled from frozen teachers.

A learner (``research.train.Learner``) has ``model`` (what is evaluated and
saved), ``task`` (``research.tasks``: how the model is called and scored),
``param_groups()`` (what the optimizer may change, in groups), ``train(mode)``,
``to(device)``, ``epoch_values()`` (scalars logged once per epoch) and
``training_step(x, y, idx, progress)`` returning the logits and a dict of loss
terms whose ``"loss"`` entry is back-propagated. The contract follows
mdistiller's small ``Distiller``: teachers are always in eval mode and never
learn.

Every Distiller of a run is made from a config by :func:`build_distiller`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from ..tasks import Task, build_task
from .loss import masked_cross_entropy
from .objectives import Objective, Progress, build_objective

if TYPE_CHECKING:  # research.config imports this package (objective names); no import cycle at run time
    from ..config import DistillConfig


@dataclass
class StepOutput:
    logits: torch.Tensor
    losses: dict[str, torch.Tensor]  # "loss" is the one to back-propagate; the rest are detached terms


class Supervised:
    """Plain cross-entropy on the labels: the student-alone and teacher baseline."""

    def __init__(self, model: nn.Module, *, task: Task | None = None) -> None:
        self.model = model
        self.task = task or build_task("classification")

    def parameters(self):
        return self.model.parameters()

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.model.parameters())}]

    def train(self, mode: bool = True) -> "Supervised":
        self.model.train(mode)
        return self

    def to(self, device: torch.device | str) -> "Supervised":
        self.model.to(device)
        return self

    def epoch_values(self) -> dict[str, float]:
        return {}

    def training_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None,
                      progress: Progress | None = None) -> StepOutput:
        logits = self.task.forward(self.model, x, y)
        rows, labels = self.task.loss_rows(logits, y)
        if labels is None or (labels < 0).all():
            raise ValueError("a supervised batch holds no labelled sample (labels < 0 mark unlabeled data)")
        loss = masked_cross_entropy(rows, labels)
        return StepOutput(logits, {"loss": loss, "hard": loss.detach()})


SupervisedTask = Supervised  # the name before tasks existed (benchmarks and older notebooks import it)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no gradients: a teacher's weights and BatchNorm statistics stay as trained."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class Distiller:
    """A student distilled from one or several frozen teachers by an objective.

    ``objective``: a built :class:`~research.distill.objectives.Objective` for
    ``len(teachers)`` teachers. Without one, ``temperature``/``alpha``/
    ``teacher_weights``/``combine`` build the ``kd`` objective (a shortcut for
    notebooks and tests; runs build theirs with :func:`build_distiller`).

    ``cached_logits`` (one tensor per teacher, aligned with the sample indices
    of the training split, as ``task.predict`` returns them) replaces the
    teacher forward pass when the inputs are not augmented; with augmentation
    the teachers see each augmented batch, so their targets are never stale.
    """

    def __init__(
        self,
        student: nn.Module,
        teachers: nn.Module | Sequence[nn.Module],
        objective: Objective | None = None,
        *,
        task: Task | None = None,
        cached_logits: Sequence[torch.Tensor] | None = None,
        temperature: float | None = None,
        alpha: float | None = None,
        teacher_weights: Sequence[float] | None = None,
        combine: str | None = None,
    ) -> None:
        self.model = student
        # A plain list, not an nn.ModuleList: the teachers are not part of the
        # student's parameters or state_dict, so no optimizer can pick them up.
        self.teachers = [freeze(t) for t in ([teachers] if isinstance(teachers, nn.Module) else list(teachers))]
        if not self.teachers:
            raise ValueError("a Distiller needs at least one teacher")
        kd_knobs = {k: v for k, v in (("temperature", temperature), ("alpha", alpha), ("teacher_weights", teacher_weights),
                                      ("combine", combine)) if v is not None}
        if objective is None:
            if temperature is None or alpha is None:
                raise ValueError("give an objective, or temperature and alpha for the kd objective")
            objective = build_objective("kd", num_teachers=len(self.teachers), **kd_knobs)
        elif kd_knobs:
            raise ValueError(f"{', '.join(kd_knobs)} are the kd objective's knobs; with an objective given, set them on it")
        if objective.num_teachers != len(self.teachers):
            raise ValueError(f"the objective is built for {objective.num_teachers} teachers, the Distiller has {len(self.teachers)}")
        self.objective = objective
        self.task = task or build_task("classification")
        self.cached_logits = list(cached_logits) if cached_logits is not None else None
        if self.cached_logits is not None and len(self.cached_logits) != len(self.teachers):
            raise ValueError(f"{len(self.cached_logits)} cached logit tensors for {len(self.teachers)} teachers")

    @property
    def student(self) -> nn.Module:
        return self.model

    def parameters(self):
        """What the optimizer may change: the student's parameters, then the objective's own."""
        yield from self.model.parameters()
        yield from self.objective.parameters()

    def param_groups(self) -> list[dict[str, Any]]:
        """The student's parameters, and (when it has any) the objective's own as a second
        group with ``objective.optimizer_options`` (weight_decay 0 by default)."""
        groups: list[dict[str, Any]] = [{"params": list(self.model.parameters())}]
        own = list(self.objective.parameters())
        if own:
            groups.append({"params": own, **self.objective.optimizer_options})
        return groups

    def train(self, mode: bool = True) -> "Distiller":
        self.model.train(mode)
        self.objective.train(mode)
        for t in self.teachers:  # whatever mode the student is in, teachers stay in eval
            t.eval()
        return self

    def to(self, device: torch.device | str) -> "Distiller":
        self.model.to(device)
        self.objective.to(device)
        for t in self.teachers:
            t.to(device)
        if self.cached_logits is not None:
            self.cached_logits = [c.to(device) for c in self.cached_logits]
        return self

    def epoch_values(self) -> dict[str, float]:
        """The objective's per-epoch scalars, named ``objective_<name>``."""
        return {f"objective_{k}": float(v) for k, v in self.objective.epoch_values().items()}

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor, idx: torch.Tensor | None = None, y: torch.Tensor | None = None) -> list[torch.Tensor]:
        """One logits tensor per teacher for this batch: cached rows when ``idx`` is given and
        logits were cached, otherwise the teachers' forward pass (``y`` for tasks that read it)."""
        if self.cached_logits is not None and idx is not None:
            return [c[idx] for c in self.cached_logits]
        return [self.task.forward(t, x, y) for t in self.teachers]

    def training_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None,
                      progress: Progress | None = None) -> StepOutput:
        teacher_logits = self.teacher_logits(x, idx, y)
        logits = self.task.forward(self.model, x, y)
        rows, labels = self.task.loss_rows(logits, y)
        teacher_rows = [self.task.loss_rows(t, y)[0] for t in teacher_logits]
        terms = self.objective(rows, teacher_rows, labels, progress)
        if "loss" not in terms:
            raise ValueError(f"objective {type(self.objective).__name__} returned no 'loss' term (got {sorted(terms)})")
        return StepOutput(logits, {k: v if k == "loss" else v.detach() for k, v in terms.items()})


def build_distiller(
    student: nn.Module,
    teachers: Sequence[nn.Module],
    cfg: "DistillConfig",
    *,
    cached_logits: Sequence[torch.Tensor] | None = None,
    task: Task | None = None,
) -> Distiller:
    """The one way a run makes a Distiller: ``cfg``'s objective with its knobs for ALL ``teachers``.

    ``cached_logits``: one tensor per teacher (see :class:`Distiller`), or None for live teachers.
    Raises ValueError for an empty ``teachers``, teacher weights of the wrong length, or
    knobs the objective refuses.
    """
    teachers = list(teachers)
    if not teachers:
        raise ValueError("build_distiller needs at least one teacher")
    objective = build_objective(cfg.objective, num_teachers=len(teachers), **cfg.objective_knobs())
    return Distiller(student, teachers, objective, task=task, cached_logits=cached_logits)
