"""The built-in compression methods, one module each; importing a module registers its method.

A new method is one module here (its config, its class under ``@register_method``)
and one import line below; ``tests/test_compress_contract.py`` then runs the
shared contract suite on it.
"""

from .executorch_pte import ExecuTorch, ExecuTorchConfig
from .lowrank import LowRank, LowRankConfig
from .none import NoCompression, NoneConfig
from .onnx import Onnx, OnnxConfig
from .prune import Prune, PruneConfig
from .prune_structured import StructuredPrune, StructuredPruneConfig
from .quantize import Quantize, QuantizeConfig
from .transfer import Transfer, TransferConfig

__all__ = [
    "ExecuTorch", "ExecuTorchConfig", "LowRank", "LowRankConfig", "NoCompression", "NoneConfig", "Onnx", "OnnxConfig",
    "Prune", "PruneConfig", "Quantize", "QuantizeConfig", "StructuredPrune", "StructuredPruneConfig", "Transfer", "TransferConfig",
]
