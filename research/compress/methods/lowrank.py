"""``lowrank``: truncated SVD of Linear layers and channel decomposition of convolutions, fine-tuned.

The algorithm is :func:`research.compress.lowrank.low_rank_factorize`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from research.evaluate import count_parameters

from ..base import CompressContext, CompressedModel, CompressionMethod, FinetuneKnobs
from ..lowrank import low_rank_factorize
from ..registry import register_method


class LowRankConfig(FinetuneKnobs):
    method: Literal["lowrank"] = "lowrank"
    # one global rank (capped per layer), or the fraction of the model's parameters kept (ranks by one
    # shared singular-value energy threshold); layers that would not shrink stay dense.
    rank: int | None = Field(None, ge=1)
    param_fraction: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one(self) -> "LowRankConfig":
        if (self.rank is None) == (self.param_fraction is None):
            raise ValueError("lowrank needs exactly one of rank or param_fraction")
        return self


@register_method
class LowRank(CompressionMethod):
    name = "lowrank"
    config = LowRankConfig
    cfg: LowRankConfig

    def apply(self, model, ctx: CompressContext) -> CompressedModel:
        c, before = self.cfg, count_parameters(model)
        ranks = low_rank_factorize(model, rank=c.rank, param_fraction=c.param_fraction)
        if c.finetune_epochs:
            ctx.finetuner(c.finetune_lr)(model, c.finetune_epochs)
        extra = {
            "layers_factorized": float(len(ranks)),
            "rank_min": float(min(ranks.values())) if ranks else 0.0,
            "rank_max": float(max(ranks.values())) if ranks else 0.0,
            "param_fraction": count_parameters(model) / before,
        }
        return self.measured(model, ctx, extra=extra, tags={"ranks": ",".join(f"{k}={v}" for k, v in ranks.items())})

    def at_budget(self, budget: float) -> LowRankConfig:
        return self.with_knobs(param_fraction=1.0 / budget, rank=None)
