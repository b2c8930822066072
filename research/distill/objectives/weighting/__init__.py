"""Teacher-weighting kinds: how much each of K teachers counts, registered by name.

    distill:
      teacher_weights: [0.5, 0.3, 0.2]     # the fixed kind (the default; uniform when null)
      weighting: {kind: ca_mkd}            # or entropy, learned
      combine: probs                       # probs | logits | kl_sum: see research.distill.loss

A kind is a :class:`Weighting` module registered with
``@WEIGHTINGS.register("name")``. Called with the K teachers' logits (a list
of [B, C], at T = 1, before any temperature kind touches them), the labels [B]
(< 0: unlabeled) and the training progress, it returns the weights: [K] for
the whole batch or [B, K] per sample, rows on the simplex. The combination
rule then mixes the teachers with them.

=========== ================================================================== ==============
kind        w                                                                   file
=========== ================================================================== ==============
``fixed``   given (``distill.teacher_weights``, searched on the simplex)         fixed.py
``ca_mkd``  per sample (1 - softmax_k(CE_k)) / (K - 1) (Zhang et al. 2022)      ca_mkd.py
``entropy`` per sample proportional to 1 - H_k / sum_j H_j (no labels)          entropy.py
``learned`` softmax over K parameters trained with the student                 learned.py
=========== ================================================================== ==============

Per-sample weights are logged per epoch as ``weight_k_mean`` / ``_min`` /
``_max`` for each teacher k. A new kind: a file here with a subclass of
:class:`Weighting` decorated with ``@WEIGHTINGS.register``, plus its import
line at the bottom of this module; the contract suite covers it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import torch
from pydantic import PlainValidator
from torch import nn

from research.distill.objectives.components import ComponentRegistry, EpochStats

__all__ = ["WEIGHTINGS", "Weighting", "WeightingValue", "build_weighting", "parse_weighting"]


class Weighting(nn.Module):
    """Base class of a weighting kind; see the module docstring for the contract."""

    kind: str  # set by registration

    def __init__(self, num_teachers: int) -> None:
        super().__init__()
        self.num_teachers = num_teachers
        self.stats = EpochStats()  # per-sample weights of the current epoch, [B, K] rows

    def forward(self, teacher_logits: Sequence[torch.Tensor], labels: torch.Tensor | None, progress: Any = None) -> torch.Tensor:
        """[K] or [B, K] weights, rows on the simplex; no gradient into the teachers."""
        raise NotImplementedError

    def record(self, weights: torch.Tensor, progress: Any) -> None:
        if self.training:
            self.stats.add(weights, progress.epoch if progress is not None else None)

    def epoch_values(self) -> dict[str, float]:
        """``weight_k_mean`` / ``_min`` / ``_max`` per teacher over the last epoch's samples."""
        values = self.stats.values("weight")
        if self.num_teachers == 1:  # one column: name it weight_0_* as for K > 1
            values = {k.replace("weight_", "weight_0_", 1): v for k, v in values.items()}
        return values


class PerSampleWeighting(Weighting):
    """A weighting whose [B, K] rows come from a per-sample rule over K >= 2 teachers
    (:meth:`rows`); with one teacher every row is [1]."""

    def rows(self, teachers: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        """[B, K] weights of K >= 2 teachers' logits (each [B, C]), rows on the simplex."""
        raise NotImplementedError

    def forward(self, teacher_logits: Sequence[torch.Tensor], labels: torch.Tensor | None, progress: Any = None) -> torch.Tensor:
        teachers = list(teacher_logits)
        if len(teachers) == 1:
            w = torch.ones(teachers[0].shape[0], 1, dtype=teachers[0].dtype, device=teachers[0].device)
        else:
            w = self.rows(teachers, labels)
        self.record(w, progress)
        return w


WEIGHTINGS: ComponentRegistry[Weighting] = ComponentRegistry("weighting", Weighting)


def parse_weighting(value: Any) -> dict[str, Any] | None:
    """A config's weighting: None (the fixed kind) or a validated spec mapping; ValueError otherwise."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"Input should be a mapping {{kind: ...}} with kind one of {', '.join(WEIGHTINGS.available())}")
    return WEIGHTINGS.validate(value)


WeightingValue = Annotated[dict[str, Any] | None, PlainValidator(parse_weighting)]


def build_weighting(spec: Mapping[str, Any] | None, *, num_teachers: int, teacher_weights: Sequence[float] | None = None) -> Weighting:
    """The kind named by ``spec`` (None: fixed); ``teacher_weights`` are the fixed kind's weights."""
    spec = dict(parse_weighting(spec) or {"kind": "fixed"})
    if teacher_weights is not None:
        if spec["kind"] != "fixed":
            raise ValueError(f"teacher_weights are the fixed weighting's; weighting kind {spec['kind']!r} computes its own")
        spec["weights"] = list(teacher_weights)
    return WEIGHTINGS.build(spec, num_teachers=num_teachers)


# Imported last: these modules register their kinds in WEIGHTINGS above.
from research.distill.objectives.weighting import ca_mkd, entropy, fixed, learned  # noqa: E402, F401
