"""Small registered parts of an objective: a temperature kind, a teacher-weighting kind.

An objective such as ``kd`` is composed of parts rather than written once per
combination: the ``kd`` objective takes a temperature kind (``temperature``
registry, :mod:`research.distill.objectives.temperature`) and a weighting kind
(``weighting`` registry, :mod:`research.distill.objectives.weighting`). A kind
is an ``nn.Module`` whose ``__init__`` takes ``num_teachers`` and then typed
knobs with defaults, exactly like an objective; its own parameters (a learned
temperature, learned weights) are parameters of the objective, so they reach
the optimizer with the objective's options.

A kind is named in a config by a mapping, its *spec*:

    {kind: annealed, start: 8, end: 2, schedule: cosine}

``kind`` picks the registered class; the other keys are its knobs, checked
against its signature with one-line errors before anything is built (and by
the class's ``check_knobs(knobs)`` classmethod, when it has one, for rules
across knobs such as ``t_min <= t_max``).

A kind collects what it did during training (per-sample temperatures or
weights) into :class:`EpochStats`, which the objective's ``epoch_values()``
reports once per epoch as mean / min / max.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from torch import nn

__all__ = ["ComponentRegistry", "EpochStats", "knob_model"]


def knob_model(what: str, cls: type, fixed: tuple[str, ...] = ("self", "num_teachers")) -> type[BaseModel]:
    """The knobs of ``cls.__init__`` (after ``num_teachers``) as a pydantic model (extra keys forbidden).

    ``what`` names the thing in errors, e.g. ``"objective 'kd'"``. Raises ValueError when
    ``num_teachers`` is not the first argument, or a knob is ``*args``/``**kwargs``, has no
    annotation or no default (a config may name only the kind).
    """
    params = list(inspect.signature(cls.__init__).parameters.values())
    if len(params) < 2 or params[1].name != fixed[1]:
        raise ValueError(f"{what}: __init__ must take {fixed[1]} as its first argument")
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    fields: dict[str, Any] = {}
    for p in params[2:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ValueError(f"{what}: knobs must be named parameters, not *{p.name}")
        if p.name not in hints:
            raise ValueError(f"{what}: knob {p.name!r} needs a type annotation")
        if p.default is p.empty:
            raise ValueError(f"{what}: knob {p.name!r} needs a default (a config may name only the {what.split()[0]})")
        fields[p.name] = (hints[p.name], p.default)
    return create_model(f"{cls.__name__}Knobs", __config__=ConfigDict(extra="forbid"), **fields)


def first_error(e: ValidationError) -> str:
    """Pydantic's first error as ``knob: message (got value)``."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}"


M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class _Kind:
    cls: type
    knobs: type[BaseModel]


class ComponentRegistry(Generic[M]):
    """Kinds of one part (``what``: "temperature", "weighting") registered by name."""

    def __init__(self, what: str, base: type[M]) -> None:
        self.what = what
        self.base = base
        self._kinds: dict[str, _Kind] = {}

    def register(self, name: str) -> Callable[[type[M]], type[M]]:
        """Class decorator: register a subclass of the base class as kind ``name``."""

        def decorator(cls: type[M]) -> type[M]:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise ValueError(f"{self.what} kind {name!r} must be a subclass of {self.base.__name__}, got {cls!r}")
            if name in self._kinds:
                raise ValueError(f"{self.what} kind {name!r} is already registered")
            self._kinds[name] = _Kind(cls, knob_model(f"{self.what} kind {name!r}", cls))
            cls.kind = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def available(self) -> list[str]:
        return sorted(self._kinds)

    def _kind(self, name: Any) -> _Kind:
        try:
            return self._kinds[name]
        except (KeyError, TypeError):  # TypeError: unhashable kind from a bad config
            raise ValueError(f"unknown {self.what} kind {name!r}; available: {', '.join(self.available())}") from None

    def kind_class(self, name: str) -> type[M]:
        return self._kind(name).cls

    def knob_names(self, name: str) -> list[str]:
        """The knobs kind ``name`` accepts, in signature order."""
        return list(self._kind(name).knobs.model_fields)

    def validate(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """``spec`` ({kind: name, knob: value, ...}) checked against the kind's signature.

        Returns ``{"kind": name, **given knobs with validated values}`` (defaults are not
        added, so a config round-trips as written). Raises ValueError with one line.
        """
        if not isinstance(spec, Mapping):
            raise ValueError(f"a {self.what} spec is a mapping {{kind: ..., knob: value}}, got {spec!r}")
        knobs = dict(spec)
        if "kind" not in knobs:
            raise ValueError(f"a {self.what} spec needs kind: one of {', '.join(self.available())}")
        name = knobs.pop("kind")
        entry = self._kind(name)
        accepted = list(entry.knobs.model_fields)
        unknown = [k for k in knobs if k not in accepted]
        if unknown:
            raise ValueError(f"{self.what} kind {name!r} got unknown knob(s) {', '.join(map(repr, unknown))}; "
                             f"accepted: {', '.join(accepted) or '(none)'}")
        try:
            validated = entry.knobs.model_validate(knobs)
        except ValidationError as e:
            raise ValueError(f"{self.what} kind {name!r}: {first_error(e)}") from None
        check = getattr(entry.cls, "check_knobs", None)
        if check is not None:  # rules across knobs, with the defaults filled in
            try:
                check(validated.model_dump())
            except ValueError as e:
                raise ValueError(f"{self.what} kind {name!r}: {e}") from None
        return {"kind": name, **{k: getattr(validated, k) for k in knobs}}

    def build(self, spec: Mapping[str, Any], *, num_teachers: int) -> M:
        """The kind named by ``spec``, for ``num_teachers`` teachers (validated first)."""
        values = self.validate(spec)
        name = values.pop("kind")
        return self._kind(name).cls(num_teachers, **values)


class EpochStats:
    """Mean, min and max of per-sample values (temperatures, or weights per teacher) over one epoch.

    ``add(values [B] or [B, K])`` during the epoch's steps; a step of a new epoch
    (``epoch`` differs from the last one seen) starts a fresh window, so
    ``values()`` read after an epoch describes that epoch alone and reading it
    changes nothing. Accumulated as detached tensors (no host sync per step).
    """

    def __init__(self) -> None:
        self.epoch: int | None = None
        self._sum: torch.Tensor | None = None
        self._min: torch.Tensor | None = None
        self._max: torch.Tensor | None = None
        self._n = 0

    def add(self, values: torch.Tensor, epoch: int | None) -> None:
        v = values.detach().to(torch.float64)
        v = v.reshape(v.shape[0], -1) if v.dim() > 0 else v.reshape(1, 1)
        if epoch != self.epoch or self._sum is None:
            self.epoch, self._n = epoch, 0
            self._sum, self._min, self._max = v.sum(0), v.min(0).values, v.max(0).values
        else:
            self._sum = self._sum + v.sum(0)
            self._min = torch.minimum(self._min, v.min(0).values)
            self._max = torch.maximum(self._max, v.max(0).values)
        self._n += v.shape[0]

    def values(self, name: str) -> dict[str, float]:
        """``{name_mean, name_min, name_max}`` for one column, or ``name_k_mean`` ... per column k."""
        if self._sum is None or self._n == 0:
            return {}
        mean, lo, hi = (self._sum / self._n).tolist(), self._min.tolist(), self._max.tolist()
        if len(mean) == 1:
            return {f"{name}_mean": mean[0], f"{name}_min": lo[0], f"{name}_max": hi[0]}
        out: dict[str, float] = {}
        for k, (m, a, b) in enumerate(zip(mean, lo, hi)):
            out.update({f"{name}_{k}_mean": m, f"{name}_{k}_min": a, f"{name}_{k}_max": b})
        return out
