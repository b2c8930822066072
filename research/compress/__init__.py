"""Compression baselines, measured like a distillation run.

    from research.compress import compress, evaluate_compressed
    cm = compress(trained_model, {"method": "prune", "sparsity": 0.9, "finetune_epochs": 5},
                  data, seed=0, finetune_cfg=train_cfg)
    metrics = evaluate_compressed(cm, data)   # test_accuracy, size_bytes, latency_b1_ms, ...

Each method is one class with its own config, registered by name
(:mod:`research.compress.base` shows the shape, :mod:`research.compress.methods`
holds one module per method):

* ``none``: the model as it is (the reference row of a comparison);
* ``prune``: global magnitude pruning, exact sparsity, stored compactly;
  ``prune_structured`` (written ``method: prune, structured: true``): channels
  removed; both one-shot or iterative, with fine-tuning (:mod:`.prune`);
* ``quantize``: int8, dynamic for Linear / static calibrated for convolutions,
  by ONNX Runtime, torch.ao or torchao (:mod:`.quantize`);
* ``lowrank``: truncated SVD of Linear layers, channel decomposition of
  convolutions, with fine-tuning (:mod:`.lowrank`);
* ``onnx``: the float model exported to ONNX and run by ONNX Runtime (:mod:`.onnx_export`);
* ``executorch``: the model exported to an ExecuTorch program for XNNPACK,
  float32 or int8, run by ExecuTorch's runtime (:mod:`.methods.executorch_pte`);
* ``transfer``: pretrain on a source task, fine-tune on the real one (:mod:`.finetune`).

Every method takes any ``nn.Module`` (a distilled student included), never
changes it, and returns a new model: "distil then quantize / prune" is
``compress(distilled_student, ...)``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from research.config import DistillConfig, MethodConfig, TrainConfig
from research.data import DataBundle

from . import methods  # noqa: F401 - registers the built-in methods
from .base import CompressContext, CompressedModel, CompressionMethod, FinetuneKnobs
from .metrics import compressed_deployment_metrics, evaluate_compressed
from .onnx_export import OrtModule, ort_latency_ms
from .registry import METHODS, compression_method, parse_compress_config, register_method
from .runtime import RuntimeModule
from .storage import FileFormat, load_compact, save_compact

__all__ = [
    "METHODS",
    "CompressContext",
    "CompressedModel",
    "CompressionMethod",
    "FileFormat",
    "FinetuneKnobs",
    "MethodConfig",
    "OrtModule",
    "RuntimeModule",
    "compress",
    "compressed_deployment_metrics",
    "compression_method",
    "evaluate_compressed",
    "load_compact",
    "ort_latency_ms",
    "parse_compress_config",
    "register_method",
    "save_compact",
]


def compress(
    model: nn.Module,
    cfg: MethodConfig | Mapping[str, Any] | str,
    data: DataBundle,
    *,
    seed: int,
    finetune_cfg: TrainConfig | None = None,
    teachers: Sequence[nn.Module] = (),
    distill: DistillConfig | None = None,
    cache_dir: str | Path = ".cache",
    threads: int = 1,
    progress: bool = False,
) -> CompressedModel:
    """Apply the method of ``cfg`` (a method's config, a ``compress:`` mapping, or a method
    name with its defaults) to a copy of ``model``; ``model`` itself is not changed.

    Fine-tuning (prune, lowrank, transfer) trains with ``finetune_cfg`` (default
    TrainConfig()) for the config's ``finetune_epochs`` at its ``finetune_lr`` (if
    set) on ``data.train``, validating on ``data.val``; with ``teachers`` it distils
    from all of them as ``distill`` says (``research.distill.build_distiller``: objective,
    weights, combine, logit cache). Calibration (static int8) uses training
    samples. ``threads``: intra-op threads of runtime-backed results (ONNX Runtime,
    ExecuTorch). ``cache_dir``: where MNIST-1D's cached arrays live (transfer from
    ``mnist1d_seed``). Raises ``ConfigError`` for an invalid mapping and
    ``ValueError`` when the method cannot meet its knobs on this model.
    """
    method = compression_method(cfg)
    work = copy.deepcopy(model)
    work.requires_grad_(True)  # a frozen teacher is a valid input; its copy must be fine-tunable
    ctx = CompressContext(data=data, seed=seed, finetune_cfg=finetune_cfg, teachers=teachers, distill=distill,
                          cache_dir=Path(cache_dir), threads=threads, progress=progress, was_training=model.training)
    return method.apply(work, ctx)
