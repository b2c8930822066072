"""``onnx``: the float model exported to ONNX and run (and timed) in ONNX Runtime."""

from __future__ import annotations

from typing import Literal

from research.config import MethodConfig

from ..base import CompressContext, CompressedModel, CompressionMethod
from ..onnx_export import ONNX_FILE, max_abs_difference, onnx_model
from ..registry import register_method


class OnnxConfig(MethodConfig):
    method: Literal["onnx"] = "onnx"


@register_method
class Onnx(CompressionMethod):
    name = "onnx"
    config = OnnxConfig
    file_format = ONNX_FILE

    def apply(self, model, ctx: CompressContext) -> CompressedModel:
        reference = model.cpu().eval()
        ort, exporter = onnx_model(reference, ctx.data.input_shape, threads=ctx.threads)
        extra = {"onnx_max_abs_diff": max_abs_difference(ort, reference, ctx.data.val.x[:512])}
        return self.measured(ort, ctx, reference=reference, extra=extra, tags={"exporter": exporter})
