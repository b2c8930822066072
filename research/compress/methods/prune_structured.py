"""Structured pruning: whole neurons and channels removed, so the network really shrinks.

Written ``compress: {method: prune, structured: true, ...}`` (or ``method:
prune_structured``). The algorithm is
:func:`research.compress.prune.structured_prune` (torch-pruning).
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import model_validator

from research.evaluate import count_parameters

from ..base import CompressContext, CompressedModel, CompressionMethod
from ..prune import structured_prune
from ..registry import register_method
from .prune import PruneKnobs


class StructuredPruneConfig(PruneKnobs):
    structured: Literal[True] = True

    @model_validator(mode="before")
    @classmethod
    def _by_name(cls, raw: Any) -> Any:
        # method: prune_structured is the registered name; the file keeps the historical spelling
        if isinstance(raw, Mapping) and raw.get("method") == "prune_structured":
            return {**raw, "method": "prune", "structured": True}
        return raw

    @classmethod
    def claims(cls, raw: Mapping[str, Any]) -> bool:
        return raw.get("method") == "prune_structured" or (super().claims(raw) and raw.get("structured") is True)


@register_method
class StructuredPrune(CompressionMethod):
    """Channels ranked by the L2 norm of their weight group, the same fraction removed from every
    layer (never from the classifier), that fraction bisected to meet the parameter budget."""

    name = "prune_structured"
    config = StructuredPruneConfig
    cfg: StructuredPruneConfig

    def apply(self, model, ctx: CompressContext) -> CompressedModel:
        c, before = self.cfg, count_parameters(model)
        work, info = structured_prune(model, c.sparsity, ctx.data.train.x, ctx.data.num_classes, steps=c.steps,
                                      finetune=ctx.finetuner(c.finetune_lr), finetune_epochs=c.finetune_epochs)
        extra = {**info, "target_sparsity": c.sparsity, "params_before": float(before)}
        return self.measured(work, ctx, extra=extra, tags={"pruning": "structured", "schedule": c.schedule})

    def label(self) -> str:
        return "prune_structured_iterative" if self.cfg.schedule == "iterative" else "prune_structured"

    def at_budget(self, budget: float) -> StructuredPruneConfig:
        return self.with_knobs(sparsity=1.0 - 1.0 / budget)
