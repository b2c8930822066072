"""``none``: the model as it is, the reference row of a comparison."""

from __future__ import annotations

from typing import Literal

from research.config import MethodConfig

from ..base import CompressContext, CompressedModel, CompressionMethod
from ..registry import register_method


class NoneConfig(MethodConfig):
    method: Literal["none"] = "none"


@register_method
class NoCompression(CompressionMethod):
    """The input model unchanged, saved whole with ``torch.save``."""

    name = "none"
    config = NoneConfig

    def apply(self, model, ctx: CompressContext) -> CompressedModel:
        return self.measured(model, ctx)
