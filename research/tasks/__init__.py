"""Tasks, registered by name: what a batch is and how a model is scored on it.

    from research.tasks import build_task, available_tasks
    task = build_task("classification")
    logits = task.forward(model, x, y)              # training: model in train mode
    rows, labels = task.loss_rows(logits, y)        # what a loss is taken over
    task.epoch_metrics(model, val.x, val.y)         # {"accuracy": ..., "nll": ...}
    task.validation_metric, task.direction          # "accuracy", "maximize"

A batch is ``(x, y)``: the same rows of a split's inputs and targets, drawn by
index by the training loop. The task says what they are and how a model is
called on them:

* ``classification`` (:mod:`.classification`): x float [B, *input_shape],
  y int [B] (-1 marks an unlabeled sample), logits [B, C];
* ``g2p`` (:mod:`.sequence`): x int tokens [B, L], y int targets [B, L]
  (padding marked by its pad id; [B, R, L] for several references), a
  teacher-forced model called on (x, y) for logits [B, L, V], the
  non-padding positions handed to the losses as rows [N, V] through
  :meth:`Task.loss_rows` -- so objectives stay defined on rows of class
  scores and padding never enters a loss or a metric.

Everything downstream asks the task instead of assuming [B, C] logits, float
inputs or accuracy: the training loop (its per-epoch validation, via
:meth:`Task.epoch_metrics`), the Learners (``Supervised``, ``Distiller``:
:meth:`Task.forward`, :meth:`Task.loss_rows`), the teacher-logit cache and
``pipeline.evaluate_run`` (:meth:`Task.predict`, :meth:`Task.evaluate`) and
the deployment measurements (:meth:`Task.example_input`).

A new task: a module in this package with a :class:`Task` subclass decorated
with ``@register_task("name")`` and its import line at the bottom of this
file; tests/test_tasks.py parametrizes over :func:`available_tasks`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import nn

__all__ = ["Task", "Toy", "available_tasks", "build_task", "register_task"]


class Toy(NamedTuple):
    """A tiny problem of a task's kind: an untrained model and a batch of valid (x, y)."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int


class Task:
    """Base class of a task. Subclasses set the class attributes and implement the methods.

    Class attributes:
        validation_metric: key of :meth:`epoch_metrics` (and of :meth:`evaluate`) that
            studies optimise and prune on; logged as ``val_<name>``.
        direction: "maximize" or "minimize" for ``validation_metric``.
        epoch_metric_names: keys of :meth:`epoch_metrics` (the per-epoch validation).
        metric_names: keys of :meth:`evaluate` without teachers.
        teacher_metric_names: keys :meth:`evaluate` adds when given the teachers' prediction.
    """

    name: ClassVar[str]
    validation_metric: ClassVar[str]
    direction: ClassVar[Literal["maximize", "minimize"]]
    epoch_metric_names: ClassVar[tuple[str, ...]]
    metric_names: ClassVar[tuple[str, ...]]
    teacher_metric_names: ClassVar[tuple[str, ...]] = ()

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The logits of ``model`` on a batch, in whatever mode the model is (training)."""
        raise NotImplementedError

    def loss_rows(self, logits: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The positions a loss is taken over: logits as rows [N, C] and their labels [N]
        (< 0: no label). Applied with the same ``y`` to the student's and every teacher's
        logits, so their rows align."""
        raise NotImplementedError

    def predict(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, batch_size: int = 1024,
                device: torch.device | str | None = None) -> torch.Tensor:
        """Logits for every row of ``x`` in eval mode, in batches, returned on the CPU
        (the model's mode is restored)."""
        raise NotImplementedError

    def epoch_metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                      device: torch.device | str | None = None) -> dict[str, float]:
        """The cheap per-epoch validation metrics (keys ``epoch_metric_names``)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, teacher_logits: torch.Tensor | None = None,
                 batch_size: int = 1024, ece_bins: int = 15) -> dict[str, float]:
        """The metrics of a finished run on one split (keys ``metric_names``, plus
        ``teacher_metric_names`` when ``teacher_logits``, the teachers' combined
        prediction as :meth:`predict` shapes it, is given)."""
        raise NotImplementedError

    def evaluate_logits(self, logits: torch.Tensor, y: torch.Tensor, *, teacher_logits: torch.Tensor | None = None,
                        ece_bins: int = 15) -> dict[str, float]:
        """:meth:`evaluate` from the model's logits on the split (as :meth:`predict` gives them),
        for callers that computed them another way (a population's stacked pass). Tasks whose
        metrics need more than the logits (decoding) raise NotImplementedError."""
        raise NotImplementedError(f"task {self.name!r} has no metrics from logits alone")

    def example_input(self, input_shape: Sequence[int], batch_size: int = 1) -> torch.Tensor:
        """A batch of valid inputs [batch_size, *input_shape] for latency, FLOPs and export."""
        raise NotImplementedError

    def toy(self, *, seed: int = 0, n: int = 16) -> Toy:
        """A tiny model of this task's kind and ``n`` valid labelled samples, built from ``seed``
        without touching the global RNG: what the task contract tests (tests/test_tasks.py)
        and smoke checks run, so a new task needs no test code of its own."""
        raise NotImplementedError


_REGISTRY: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator registering a :class:`Task` subclass as ``name``."""

    def decorator(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise ValueError(f"task {name!r} must be a subclass of Task, got {cls!r}")
        if name in _REGISTRY:
            raise ValueError(f"task {name!r} is already registered")
        missing = [a for a in ("validation_metric", "direction", "epoch_metric_names", "metric_names") if not hasattr(cls, a)]
        if missing:
            raise ValueError(f"task {name!r} must set {', '.join(missing)}")
        if cls.direction not in ("maximize", "minimize"):
            raise ValueError(f"task {name!r}: direction must be maximize or minimize, got {cls.direction!r}")
        if cls.validation_metric not in cls.epoch_metric_names or cls.validation_metric not in cls.metric_names:
            raise ValueError(f"task {name!r}: validation_metric {cls.validation_metric!r} must be among its epoch and run metrics")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def available_tasks() -> list[str]:
    """Sorted names of all registered tasks."""
    return sorted(_REGISTRY)


def build_task(name: str) -> Task:
    """A task by name; ValueError naming the available ones when unknown."""
    try:
        return _REGISTRY[name]()
    except (KeyError, TypeError):  # TypeError: unhashable name from a bad config
        raise ValueError(f"unknown task {name!r}; available: {', '.join(available_tasks())}") from None


# Imported last: these modules register their tasks via register_task above.
from research.tasks import classification, sequence  # noqa: E402,F401
