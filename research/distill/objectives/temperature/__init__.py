"""Temperature kinds: how the ``kd`` objective softens the logits, registered by name.

    distill:
      temperature: 4.0                                              # a number: the fixed kind
      temperature: {kind: annealed, start: 8, end: 2, schedule: cosine}

A kind is a :class:`Temperature` module registered with
``@TEMPERATURES.register("name")``. Called with the student's logits [B, C],
the list of K teachers' logits [B, C] and the training :class:`Progress`, it
returns a :class:`Softened`: the logits to soften (a kind may standardise
them), the temperature (a number, a 0-d tensor when learned, or [B, 1] per
sample) and optionally a per-sample factor replacing T^2 on each row's KL. The
loss itself stays in :func:`research.distill.loss.kd_loss_terms`.

Kinds (each file holds its formula and source):

=============== ================================================================ ==============================
kind            T                                                                 file
=============== ================================================================ ==============================
``fixed``       a constant (Hinton et al. 2015)                                   fixed.py
``annealed``    ``start`` -> ``end`` over training, linear or cosine              annealed.py
``standardized`` KD on (z - mean) / (std + 1e-7) at ``base`` (Sun et al. 2024)     standardized.py
``normkd``      per sample T_norm * std(z): the same softmax, another scale       standardized.py
``learnable``   T_min + T_range * sigmoid(theta), gradient reversal (CTKD)        learnable.py
``entropy``     per sample, from the teachers' normalised entropy                 entropy.py
=============== ================================================================ ==============================

A new kind: a file in this package with a subclass of :class:`Temperature`
decorated with ``@TEMPERATURES.register``, plus its import line at the bottom
of this module. Its knobs are its ``__init__``'s typed keyword parameters with
defaults (checked like an objective's); cross-knob rules go in a
``check_knobs(knobs)`` classmethod. tests/test_objectives.py runs the contract
suite over every registered kind without edits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from pydantic import PlainValidator
from torch import nn

from research.distill.objectives.components import ComponentRegistry, EpochStats

__all__ = ["TEMPERATURES", "Softened", "Temperature", "TemperatureValue", "build_temperature", "parse_temperature"]


@dataclass(frozen=True)
class Softened:
    """What the loss softens: ``student`` [B, C] and ``teachers`` (K x [B, C]) are divided by
    ``temperature`` (a number, a 0-d tensor, or [B, 1]); ``kl_scale`` [B], when given, replaces
    T_i^2 as the factor of each row's KL."""

    student: torch.Tensor
    teachers: list[torch.Tensor]
    temperature: float | torch.Tensor
    kl_scale: torch.Tensor | None = None


class Temperature(nn.Module):
    """Base class of a temperature kind; see the module docstring for the contract."""

    kind: str  # set by registration

    def __init__(self, num_teachers: int) -> None:
        super().__init__()
        self.num_teachers = num_teachers
        self.stats = EpochStats()  # per-sample (or per-step) temperatures of the current epoch

    def forward(self, student_logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor],
                progress: Any = None) -> Softened:
        raise NotImplementedError

    @classmethod
    def check_knobs(cls, knobs: Mapping[str, Any]) -> None:
        """Rules across knobs (all knobs given, defaults filled); raise ValueError with one line."""

    def record(self, values: torch.Tensor, progress: Any) -> None:
        """Collect this step's temperatures ([B] per sample, or 0-d) for the epoch's distribution."""
        if self.training:
            self.stats.add(values, progress.epoch if progress is not None else None)

    def epoch_values(self) -> dict[str, float]:
        """``temperature_mean``, ``_min``, ``_max`` over the last epoch's samples (or steps)."""
        return self.stats.values("temperature")

    def needs(self, progress: Any) -> Any:
        if progress is None:
            raise ValueError(f"temperature kind {self.kind!r} needs the training progress (call the objective with progress)")
        return progress


TEMPERATURES: ComponentRegistry[Temperature] = ComponentRegistry("temperature", Temperature)


def parse_temperature(value: Any) -> float | dict[str, Any]:
    """A config's temperature: a number > 0 (the fixed kind) or a validated spec mapping.

    Raises ValueError with one line (pydantic shows it at ``distill.temperature``).
    """
    if isinstance(value, Mapping):
        return TEMPERATURES.validate(value)
    if isinstance(value, bool) or value is None:
        raise ValueError("Input should be a number > 0 or a mapping {kind: ..., knob: value}")
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ValueError("Input should be a number > 0 or a mapping {kind: ..., knob: value}") from None
    if not math.isfinite(t) or t <= 0:
        raise ValueError("Input should be greater than 0")
    return t


# The annotation of a temperature knob: a number or a spec, validated by parse_temperature.
TemperatureValue = Annotated[float | dict[str, Any], PlainValidator(parse_temperature)]


def build_temperature(value: float | Mapping[str, Any], *, num_teachers: int) -> Temperature:
    """The kind for a config value: a number builds ``fixed``, a mapping the kind it names."""
    parsed = parse_temperature(value)
    spec = {"kind": "fixed", "value": parsed} if isinstance(parsed, float) else parsed
    return TEMPERATURES.build(spec, num_teachers=num_teachers)


# Imported last: these modules register their kinds in TEMPERATURES above.
from research.distill.objectives.temperature import (  # noqa: E402, F401
    annealed,
    entropy,
    fixed,
    learnable,
    standardized,
)
