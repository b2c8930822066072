"""Metrics of a compressed model, measured as ``research.evaluate`` measures a distillation run.

Quality comes from the run's task (``research.tasks``: :meth:`Task.evaluate`, the
metrics of a finished run, as ``pipeline.evaluate_run`` asks it), unchanged. Deployment numbers keep the keys of
``research.evaluate.deployment_metrics`` with two variants that a compressed
model needs:

* ``size_bytes``: the bytes of its deployable form as written (compact file
  for sparse models, ONNX file for ONNX Runtime models), not ``torch.save``;
* ``payload_bytes``: the tensors of that form at their stored precision, sparse
  ones as values + indices (``CompressedModel.payload_bytes``), without the file's container;
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
from research.evaluate import ExampleInput, measure_latency_ms
from research.tasks import Task, build_task

from .runtime import RuntimeModule

if TYPE_CHECKING:
    from .base import CompressedModel


def compressed_deployment_metrics(cm: "CompressedModel", input_shape: Sequence[int], *, repeats: int = 30, threads: int = 1,
                                  example: ExampleInput | None = None) -> dict[str, float]:
    """The keys of ``research.evaluate.deployment_metrics``, measured for a compressed model.

    ``example(batch_size)`` gives the latency input of a torch-module model (a task's
    ``example_input``; default float noise [batch_size, *input_shape]); a runtime-backed model
    (ONNX Runtime, ExecuTorch) is timed on its runtime's own float batch."""
    runs = [(1, repeats), (256, max(3, repeats // 3))]  # the batch sizes and repeats of deployment_metrics
    if isinstance(cm.model, RuntimeModule):
        b1, b256 = cm.model.latencies_ms(input_shape, runs, threads=threads)
    else:
        b1, b256 = (measure_latency_ms(cm.model, input_shape, batch_size=b, repeats=r, threads=threads, example=example) for b, r in runs)
    return {
        "params": float(cm.params),
        "params_nonzero": float(cm.params_nonzero),
        "size_bytes": float(cm.size_bytes),
        **({} if cm.payload_bytes is None else {"payload_bytes": float(cm.payload_bytes)}),
        "flops": float(cm.flops),
        "latency_b1_ms": b1,
        "latency_b256_ms": b256,
        "latency_threads": float(threads),
    }


def evaluate_compressed(
    cm: "CompressedModel",
    data: DataBundle,
    *,
    task: Task | str = "classification",
    batch_size: int = 1024,
    ece_bins: int = 15,
    repeats: int = 30,
    threads: int = 1,
    with_deployment: bool = True,
) -> dict[str, float]:
    """``val_<m>`` and ``test_<m>`` for each metric ``m`` of ``task`` (a :class:`~research.tasks.Task`
    or its registered name: :meth:`Task.evaluate`, e.g. accuracy, errors, nll, ece for
    classification), the deployment metrics (latency on ``task.example_input``) and ``cm.extra``.
    Raises ValueError for an unknown task name."""
    task = build_task(task) if isinstance(task, str) else task
    out: dict[str, float] = {}
    for name, split in (("val", data.val), ("test", data.test)):
        m = task.evaluate(cm.model, split.x, split.y, batch_size=batch_size, ece_bins=ece_bins)
        out.update({f"{name}_{k}": v for k, v in m.items()})
    if with_deployment:
        out.update(compressed_deployment_metrics(cm, data.input_shape, repeats=repeats, threads=threads,
                                                 example=lambda b: task.example_input(data.input_shape, b)))
    out.update(cm.extra)
    return out
