"""The searchable knobs of a compression baseline, validated like the run configs.

One :class:`CompressConfig` describes one method; fields a method does not
read are ignored by it (so a study can keep one flat search space). Ranges are
checked on construction and on assignment, each problem as a one-line error
naming the field (``research.config.parse`` turns them into a ``ConfigError``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from research.config import Strict, parse

Method = Literal["none", "prune", "quantize", "lowrank", "onnx", "transfer"]
METHODS: tuple[str, ...] = Method.__args__


class CompressConfig(Strict):
    method: Method = "prune"

    # prune: unstructured = fraction of the Linear/Conv weights set to zero (global magnitude,
    # exact to the weight); structured = fraction of the model's parameters removed
    # (whole neurons/channels; met from below as closely as channel counts allow).
    sparsity: float = Field(0.5, ge=0, lt=1)
    structured: bool = False
    schedule: Literal["one_shot", "iterative"] = "one_shot"
    iterative_steps: int = Field(3, ge=1, le=100)  # iterative: prune/fine-tune rounds

    # lowrank: one global rank (capped per layer) or the fraction of each factorised
    # layer's parameters kept; layers that would not shrink stay dense.
    rank: int | None = Field(None, ge=1)
    param_fraction: float | None = Field(None, gt=0, lt=1)

    # quantize
    bits: Literal[8] = 8
    backend: Literal["onnxruntime", "torch", "torchao"] = "onnxruntime"
    quant_mode: Literal["auto", "dynamic", "static"] = "auto"  # auto: static when the model has convs
    calibration_samples: int = Field(512, ge=1)

    # fine-tuning after prune / lowrank (0 = none), and the fine-tuning of `transfer`
    finetune_epochs: int = Field(0, ge=0)
    finetune_lr: float | None = Field(None, gt=0)  # None: the TrainConfig's lr

    # transfer: pretrain on a source task, then fine-tune on the real one
    source: Literal["mnist1d_seed", "label_subset"] = "mnist1d_seed"
    source_seed: int = 7  # mnist1d_seed: generation seed of the source task (42 is the target's)
    source_samples: int = Field(4000, ge=10)  # mnist1d_seed: labelled source samples generated
    source_classes: int = Field(5, ge=2)  # label_subset: pretrain on classes 0..source_classes-1
    pretrain_epochs: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> "CompressConfig":
        if self.method == "lowrank" and (self.rank is None) == (self.param_fraction is None):
            raise ValueError("lowrank needs exactly one of rank or param_fraction")
        if self.method == "transfer" and self.finetune_epochs < 1:
            raise ValueError("transfer needs finetune_epochs >= 1 (the fine-tuning on the target task)")
        if self.method == "transfer" and self.source == "mnist1d_seed" and self.source_seed == 42:
            raise ValueError("source_seed 42 is the seed of MNIST-1D's own samples; pick another")
        return self


def parse_compress_config(raw: dict[str, Any], source: str = "compress") -> CompressConfig:
    """Validate a mapping (e.g. from YAML) into a CompressConfig; a problem raises
    ``research.config.ConfigError`` with a one-line message naming the field."""
    return parse(CompressConfig, raw, source=source)
