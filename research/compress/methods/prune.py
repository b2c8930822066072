"""``prune``: global magnitude pruning to an exact sparsity, one-shot or iterative, stored compactly.

The algorithm is :func:`research.compress.prune.global_magnitude_prune`; the
zeros pay off on disk through the compact file format
(:class:`research.compress.storage.CompactFile`).
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import Field

from ..base import CompressContext, CompressedModel, CompressionMethod, FinetuneKnobs
from ..prune import global_magnitude_prune, measured_sparsity
from ..registry import register_method
from ..storage import COMPACT, TORCH


class PruneKnobs(FinetuneKnobs):
    """What unstructured and structured pruning share."""

    method: Literal["prune"] = "prune"
    # unstructured: the fraction of the Linear/Conv weights set to zero (global magnitude, exact to the
    # weight); structured: the fraction of the model's parameters removed (whole neurons/channels).
    sparsity: float = Field(0.5, ge=0, lt=1)
    schedule: Literal["one_shot", "iterative"] = "one_shot"
    iterative_steps: int = Field(3, ge=1, le=100)  # iterative: prune/fine-tune rounds

    @property
    def steps(self) -> int:
        return self.iterative_steps if self.schedule == "iterative" else 1


class PruneConfig(PruneKnobs):
    structured: Literal[False] = False

    @classmethod
    def claims(cls, raw: Mapping[str, Any]) -> bool:
        return super().claims(raw) and not raw.get("structured", False)


@register_method
class Prune(CompressionMethod):
    """Unstructured global magnitude pruning (Han et al. 2015), fine-tuned with the masks fixed."""

    name = "prune"
    config = PruneConfig
    file_format = COMPACT
    cfg: PruneConfig

    def apply(self, model, ctx: CompressContext) -> CompressedModel:
        c = self.cfg
        work = global_magnitude_prune(model, c.sparsity, steps=c.steps, finetune=ctx.finetuner(c.finetune_lr),
                                      finetune_epochs=c.finetune_epochs)
        extra = {**measured_sparsity(work), "target_sparsity": c.sparsity, "dense_size_bytes": float(TORCH.size_bytes(work))}
        return self.measured(work, ctx, extra=extra, tags={"pruning": "unstructured", "schedule": c.schedule})

    def label(self) -> str:
        return "prune_iterative" if self.cfg.schedule == "iterative" else "prune"

    def at_budget(self, budget: float) -> PruneConfig:
        return self.with_knobs(sparsity=1.0 - 1.0 / budget)
