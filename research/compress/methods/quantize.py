"""``quantize``: int8 post-training quantization by ONNX Runtime (default), torch.ao or torchao.

The algorithms and the reasons for the default are in :mod:`research.compress.quantize`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from research.config import MethodConfig

from ..base import CompressContext, CompressedModel, CompressionMethod
from ..onnx_export import ONNX_FILE
from ..quantize import calibration_batch, quantize_int8
from ..registry import register_method
from ..storage import STATE_DICT, TORCH, FileFormat


class QuantizeConfig(MethodConfig):
    method: Literal["quantize"] = "quantize"
    bits: Literal[8] = 8  # only 8; a knob for the study's sake
    backend: Literal["onnxruntime", "torch", "torchao"] = "onnxruntime"
    quant_mode: Literal["auto", "dynamic", "static"] = "auto"  # auto: static when the model has convolutions
    calibration_samples: int = Field(512, ge=1)  # training samples for static calibration

    @model_validator(mode="after")
    def _torchao_has_no_static_path(self) -> "QuantizeConfig":
        # Refused when the config is read, not by quantize_int8 after the teacher has trained.
        if self.backend == "torchao" and self.quant_mode == "static":
            raise ValueError("backend torchao has no static int8 path; use quant_mode dynamic or backend onnxruntime")
        return self


@register_method
class Quantize(CompressionMethod):
    """Dynamic int8 for Linear layers, static (calibrated on training samples) for convolutions."""

    name = "quantize"
    config = QuantizeConfig
    cfg: QuantizeConfig

    @property
    def file_format(self) -> FileFormat:
        # ONNX Runtime: the int8 ONNX file; torch.ao: the whole module; torchao: a state_dict
        # (its int8 tensor subclasses do not pickle whole).
        return {"onnxruntime": ONNX_FILE, "torch": TORCH, "torchao": STATE_DICT}[self.cfg.backend]

    def apply(self, model, ctx: CompressContext) -> CompressedModel:
        c = self.cfg
        reference = model.cpu().eval()
        calib = calibration_batch(ctx.data.train.x, c.calibration_samples, seed=ctx.seed)
        q = quantize_int8(reference, input_shape=ctx.data.input_shape, calibration=calib, backend=c.backend, mode=c.quant_mode,
                          threads=ctx.threads)
        extra = {"bits": float(c.bits), "float_size_bytes": float(TORCH.size_bytes(reference))}
        return self.measured(q.model, ctx, reference=reference, extra=extra, tags={**q.tags, "backend": c.backend, "quant_mode": q.mode})

    def label(self) -> str:
        return f"int8_{self.cfg.backend}"
