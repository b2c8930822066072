"""``transfer``: a student pretrained on a source task, then fine-tuned on the real one.

Sources and the training are in :mod:`research.compress.finetune`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from ..base import CompressContext, CompressedModel, CompressionMethod, FinetuneKnobs
from ..finetune import finetune_config, label_subset_source, mnist1d_source, pretrain_then_finetune
from ..registry import register_method


class TransferConfig(FinetuneKnobs):
    method: Literal["transfer"] = "transfer"
    sources: ClassVar[tuple[str, ...]] = ("student",)  # it trains a fresh student
    finetune_epochs: int = Field(20, ge=1)  # the fine-tuning on the target task
    source: Literal["mnist1d_seed", "label_subset"] = "mnist1d_seed"
    source_seed: int = 7  # mnist1d_seed: generation seed of the source task (42 is the target's)
    source_samples: int = Field(4000, ge=10)  # mnist1d_seed: labelled source samples generated
    source_classes: int = Field(5, ge=2)  # label_subset: pretrain on classes 0..source_classes-1
    pretrain_epochs: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _seed(self) -> "TransferConfig":
        if self.source == "mnist1d_seed" and self.source_seed == 42:
            raise ValueError("source_seed 42 is the seed of MNIST-1D's own samples; pick another")
        return self


@register_method
class Transfer(CompressionMethod):
    name = "transfer"
    config = TransferConfig
    cfg: TransferConfig

    def apply(self, model, ctx: CompressContext) -> CompressedModel:
        c, data = self.cfg, ctx.data
        if c.source == "mnist1d_seed":
            if not data.name.startswith("mnist1d"):
                raise ValueError(f"transfer source 'mnist1d_seed' needs the mnist1d dataset, not {data.name!r}; use 'label_subset'")
            source = mnist1d_source(ctx.cache_dir, seed=c.source_seed, num_samples=c.source_samples)
        else:
            source = label_subset_source(data, c.source_classes)
        pre, _ = pretrain_then_finetune(
            model, source, data, seed=ctx.seed, teachers=ctx.teachers, distill=ctx.distill, progress=ctx.progress,
            pretrain_cfg=finetune_config(ctx.finetune_cfg, epochs=c.pretrain_epochs, lr=c.finetune_lr),
            finetune_cfg=finetune_config(ctx.finetune_cfg, epochs=c.finetune_epochs, lr=c.finetune_lr),
        )
        extra = {"source_val_accuracy": pre.last.get("val_accuracy", float("nan")), "source_train_samples": float(len(source.train))}
        return self.measured(model, ctx, extra=extra, tags={"source": source.name})
