"""Distillation objectives, registered by name: what a distilled student minimises.

    from research.distill.objectives import build_objective, register_objective, Objective
    objective = build_objective("kd", num_teachers=2, temperature=4.0, alpha=0.1)
    terms = objective(student_logits, [t0_logits, t1_logits], labels, progress)
    terms["loss"].backward()          # the other entries are detached, for logging

An objective is a small ``nn.Module`` (:class:`Objective`) registered with
``@register_objective("name")``. It maps

    student logits [B, C], a LIST of K teacher logit tensors [B, C],
    labels [B] (< 0: unlabeled), progress (:class:`Progress` or None)
    -> {"loss": back-propagated scalar, other terms: detached scalars}

Its knobs are the keyword parameters of its ``__init__`` after
``num_teachers`` (which the Distiller supplies). Every knob is typed and has a
default; pydantic constraints go into the annotation
(``alpha: Annotated[float, Field(ge=0, le=1)] = 0.1``). At registration the
signature becomes a pydantic model, so a config is checked (names, types,
ranges, one-line messages; rules across knobs in an optional ``check_knobs``
classmethod) before anything is built -- the way
``research.models.validate_model_args`` checks a model's arguments against its
factory's signature.

An objective's own parameters (a learned temperature, learned teacher weights)
are ordinary ``nn.Parameter`` attributes of the module: they move with ``.to()``, and
the Distiller hands them to the optimizer as a separate parameter group with
the options of :attr:`Objective.optimizer_options` (no weight decay by
default). :meth:`Objective.epoch_values` reports scalars (the current
temperature, say) that the training loop adds to each epoch's metrics.

Config, and why this shape. A run config says

    distill:
      objective: kd           # a registered name (default kd)
      temperature: 4.0        # the shared knobs: top level, as every study file,
      alpha: 0.1              #   search key (distill.temperature) and --set
      teacher_weights: null   #   override has always written them
      combine: probs
      cache_teacher_logits: true
      args: {}                # the objective's other knobs, e.g. {beta: 8.0}

The four shared knobs stay top-level so existing files, searches, logged
params and reports keep working unchanged; they reach an objective only when
its signature has a parameter of that name (and setting one that the chosen
objective lacks is an error, not silently ignored). Everything else an
objective needs sits under ``distill.args`` and is validated against its
signature, so a new objective adds its knobs next to its own code and no
config class changes.

A new objective: a file in this package with a subclass of :class:`Objective`
decorated with ``@register_objective``, plus its import line at the bottom of
this module. The contract tests (tests/test_objectives.py) parametrize over
:func:`available_objectives`, so they cover it without edits. A new
temperature rule or teacher-weighting rule is not a new objective but a
*kind* that ``kd`` composes: one file in ``objectives/temperature/`` or
``objectives/weighting/`` and its import line there (see
:mod:`research.distill.objectives.components`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from research.distill.objectives.components import knob_model

__all__ = [
    "Objective",
    "Progress",
    "available_objectives",
    "build_objective",
    "objective_knob_names",
    "register_objective",
    "validate_objective_args",
]


@dataclass(frozen=True)
class Progress:
    """Where training stands at one optimizer step (computed by ``research.train.fit``).

    ``epoch`` is 1-based (1 .. ``epochs``); ``step`` is the 1-based index of this
    optimizer step over the whole run (1 .. ``total_steps``).
    """

    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.steps_per_epoch < 1:
            raise ValueError(f"epochs and steps_per_epoch must be >= 1, got {self.epochs} and {self.steps_per_epoch}")
        if not 1 <= self.epoch <= self.epochs:
            raise ValueError(f"epoch must be in [1, {self.epochs}], got {self.epoch}")
        if not 1 <= self.step <= self.total_steps:
            raise ValueError(f"step must be in [1, {self.total_steps}], got {self.step}")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def fraction(self) -> float:
        """Share of the run's steps done before this one, in [0, 1)."""
        return (self.step - 1) / self.total_steps


class Objective(nn.Module):
    """Base class of a distillation objective; see the module docstring for the contract.

    Subclasses implement :meth:`forward` and take ``num_teachers`` as the first
    argument of ``__init__`` (pass it on to ``super().__init__``), followed by
    their typed knobs, each with a default.
    """

    # Options of the objective's own parameter group (torch optimizer keys): a learned
    # temperature or mixing weight is not a weight to shrink towards zero.
    optimizer_options: ClassVar[dict[str, Any]] = {"weight_decay": 0.0}

    def __init__(self, num_teachers: int) -> None:
        super().__init__()
        if not isinstance(num_teachers, int) or num_teachers < 1:
            raise ValueError(f"num_teachers must be a positive int, got {num_teachers!r}")
        self.num_teachers = num_teachers

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: Sequence[torch.Tensor],
        labels: torch.Tensor | None,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:
        """``student_logits`` [B, C]; ``teacher_logits`` a list of K [B, C] tensors (no gradient
        must flow into them); ``labels`` [B] (< 0: unlabeled) or None; ``progress`` None outside
        a training loop (an objective that needs it raises ValueError). Returns the loss terms,
        ``"loss"`` the one to back-propagate."""
        raise NotImplementedError

    def epoch_values(self) -> dict[str, float]:
        """Scalars worth logging once per epoch (e.g. a learned temperature); none by default."""
        return {}

    def check_teachers(self, teacher_logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``teacher_logits`` as a list of exactly ``num_teachers`` tensors, or ValueError."""
        if isinstance(teacher_logits, torch.Tensor):
            raise ValueError("an objective takes a list of K teacher logit tensors, not one tensor")
        logits = list(teacher_logits)
        if len(logits) != self.num_teachers:
            raise ValueError(f"{len(logits)} teacher logit tensors for an objective built for {self.num_teachers} teachers")
        return logits


@dataclass(frozen=True)
class _Entry:
    cls: type[Objective]
    knobs: type[BaseModel]  # the knobs of __init__ as a pydantic model (extra keys forbidden)


_REGISTRY: dict[str, _Entry] = {}


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator registering an :class:`Objective` subclass as ``name``.

    Raises ValueError when the name is taken or the signature breaks the contract
    (no ``num_teachers``, ``*args``/``**kwargs``, a knob without annotation or default).
    """

    def decorator(cls: type[Objective]) -> type[Objective]:
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise ValueError(f"objective {name!r} must be a subclass of Objective, got {cls!r}")
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} is already registered")
        _REGISTRY[name] = _Entry(cls, _knob_model(name, cls))
        cls.registered_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def _knob_model(name: str, cls: type[Objective]) -> type[BaseModel]:
    return knob_model(f"objective {name!r}", cls)


def available_objectives() -> list[str]:
    """Sorted names of all registered objectives."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):  # TypeError: unhashable name from a bad config
        raise ValueError(f"unknown objective {name!r}; available: {', '.join(available_objectives())}") from None


def objective_class(name: str) -> type[Objective]:
    return _entry(name).cls


def objective_knob_names(name: str) -> list[str]:
    """The knobs objective ``name`` accepts, in signature order."""
    return list(_entry(name).knobs.model_fields)


def validate_objective_args(name: str, knobs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check ``knobs`` against objective ``name``'s signature without building it.

    Returns the given knobs with their validated values (defaults are not added).
    Raises ValueError with one line naming the objective and the knob.
    """
    entry = _entry(name)
    knobs = dict(knobs or {})
    accepted = list(entry.knobs.model_fields)
    unknown = [k for k in knobs if k not in accepted]
    if unknown:
        raise ValueError(
            f"objective {name!r} got unknown knob(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(accepted) or '(none)'}"
        )
    try:
        validated = entry.knobs.model_validate(knobs)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        raise ValueError(f"objective {name!r}: {loc}: {err['msg'].removeprefix('Value error, ')}{shown}") from None
    check = getattr(entry.cls, "check_knobs", None)
    if check is not None:  # rules across knobs (a classmethod of the objective), defaults filled in
        try:
            check(validated.model_dump())
        except ValueError as e:
            raise ValueError(f"objective {name!r}: {e}") from None
    return {k: getattr(validated, k) for k in knobs}


def build_objective(name: str, *, num_teachers: int, **knobs: Any) -> Objective:
    """Objective ``name`` for ``num_teachers`` teachers with ``knobs`` (validated first)."""
    values = validate_objective_args(name, knobs)
    return _entry(name).cls(num_teachers, **values)


# Imported last: these modules register their objectives via register_objective above.
from research.distill.objectives import kd  # noqa: E402,F401
