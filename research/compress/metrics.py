"""Metrics of a compressed model, measured as ``research.evaluate`` measures a distillation run.

Quality comes from ``research.evaluate.predict`` + ``classification_metrics``
unchanged. Deployment numbers keep the keys of
``research.evaluate.deployment_metrics`` with two variants that a compressed
model needs:

* ``size_bytes``: the bytes of its deployable form as written (compact file
  for sparse models, ONNX file for ONNX Runtime models), not ``torch.save``;
* latency of a runtime-backed model (ONNX Runtime, ExecuTorch): measured in
  that runtime itself (:meth:`research.compress.runtime.RuntimeModule.latency_ms`),
  same protocol.

``params``, ``params_nonzero`` and ``flops`` are those the ``CompressedModel``
recorded (int8 forms hide their weights from ``nn.Module.parameters()`` and
from torch's FLOP counter: they report the float network they compute).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from research.data import DataBundle
from research.evaluate import classification_metrics, measure_latency_ms, predict

from .runtime import RuntimeModule

if TYPE_CHECKING:
    from .base import CompressedModel


def latency_ms(model, input_shape: Sequence[int], *, batch_size: int, repeats: int = 30, threads: int = 1) -> float:
    """CPU latency (median ms) in the runtime the model is deployed with."""
    if isinstance(model, RuntimeModule):
        return model.latency_ms(input_shape, batch_size=batch_size, repeats=repeats, threads=threads)
    return measure_latency_ms(model, input_shape, batch_size=batch_size, repeats=repeats, threads=threads)


def compressed_deployment_metrics(cm: "CompressedModel", input_shape: Sequence[int], *, repeats: int = 30, threads: int = 1) -> dict[str, float]:
    """The keys of ``research.evaluate.deployment_metrics``, measured for a compressed model."""
    runs = [(1, repeats), (256, max(3, repeats // 3))]  # the batch sizes and repeats of deployment_metrics
    if isinstance(cm.model, RuntimeModule):
        b1, b256 = cm.model.latencies_ms(input_shape, runs, threads=threads)
    else:
        b1, b256 = (measure_latency_ms(cm.model, input_shape, batch_size=b, repeats=r, threads=threads) for b, r in runs)
    return {
        "params": float(cm.params),
        "params_nonzero": float(cm.params_nonzero),
        "size_bytes": float(cm.size_bytes),
        "flops": float(cm.flops),
        "latency_b1_ms": b1,
        "latency_b256_ms": b256,
        "latency_threads": float(threads),
    }


def evaluate_compressed(
    cm: "CompressedModel",
    data: DataBundle,
    *,
    batch_size: int = 1024,
    ece_bins: int = 15,
    repeats: int = 30,
    threads: int = 1,
    with_deployment: bool = True,
) -> dict[str, float]:
    """val_* and test_* quality metrics, the deployment metrics and ``cm.extra``."""
    out: dict[str, float] = {}
    for name, split in (("val", data.val), ("test", data.test)):
        logits = predict(cm.model, split.x, batch_size=batch_size)
        out.update({f"{name}_{k}": v for k, v in classification_metrics(logits, split.y, ece_bins=ece_bins).items()})
    if with_deployment:
        out.update(compressed_deployment_metrics(cm, data.input_shape, repeats=repeats, threads=threads))
    out.update(cm.extra)
    return out
