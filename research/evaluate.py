"""Every metric, in one place: quality (accuracy, NLL, calibration, agreement
with the teacher) and deployment (parameters, bytes on disk, CPU latency, FLOPs).
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models.outputs import select_output, to_model_input


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024, device: torch.device | str | None = None) -> torch.Tensor:
    """Logits float32 [N, ...] for all rows of ``x`` in eval mode, returned on the CPU (the model's mode is restored).

    Each batch goes to the model's own device, wherever ``x`` lies (``device`` is ignored) and, when
    floating, to the model's floating dtype (a float16 model on float32 data). Raises
    :class:`~research.models.outputs.ModelOutputError` when the model returns a tuple or dict
    (wrap it in ``research.models.outputs.LogitsOf`` with the output to read).
    """
    del device  # kept for callers; a batch must be where the model is, so the model's device decides
    was_training = model.training
    model.eval()
    try:
        out = [select_output(model(to_model_input(x[i : i + batch_size], model)), what=f"the model {type(model).__name__}",
                             how="teachers.<i>.output").float().cpu()
               for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017): sum_b |B|/N * |acc_b - conf_b|."""
    conf, pred = probs.max(1)
    correct = pred.eq(labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.float().mean() * (correct[in_bin].mean() - conf[in_bin].mean()).abs()
    return float(ece)


def classification_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    teacher_logits: torch.Tensor | None = None,
    ece_bins: int = 15,
) -> dict[str, float]:
    """accuracy, errors, nll, ece; with teacher logits also agreement and kl_to_teacher (at T=1)."""
    logits, labels = logits.float().cpu(), labels.cpu()
    pred = logits.argmax(1)
    out = {
        "accuracy": float(pred.eq(labels).float().mean()),
        "errors": float(pred.ne(labels).sum()),
        "nll": float(F.cross_entropy(logits, labels)),
        "ece": expected_calibration_error(logits.softmax(1), labels, ece_bins),
    }
    if teacher_logits is not None:
        t = teacher_logits.float().cpu()
        out["agreement"] = float(pred.eq(t.argmax(1)).float().mean())
        out["kl_to_teacher"] = float(F.kl_div(logits.log_softmax(1), t.log_softmax(1), reduction="batchmean", log_target=True))
    return out


def count_parameters(model: nn.Module, *, nonzero: bool = False) -> int:
    if nonzero:
        return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


def saved_model_bytes(model: nn.Module | dict) -> int:
    """Bytes of the whole model (or a state_dict) as ``torch.save`` really writes it."""
    fd, path = tempfile.mkstemp(suffix=".pt")
    os.close(fd)
    try:
        # Through a file object: torch.save(model, path) stores the file name inside the archive,
        # so the same model would count different bytes under different names.
        with open(path, "wb") as f:
            torch.save(model, f)
        return os.path.getsize(path)
    finally:
        os.remove(path)


def _cpu_copy(model: nn.Module) -> nn.Module:
    if all(p.device.type == "cpu" for p in model.parameters()):
        return model
    return copy.deepcopy(model).cpu()


ExampleInput = Callable[[int], torch.Tensor]  # batch size -> a batch of valid inputs (a Task's example_input)


@torch.inference_mode()
def measure_latency_ms(model: nn.Module, input_shape: Sequence[int], *, batch_size: int, repeats: int = 30, threads: int = 1, warmup: int = 3,
                       example: ExampleInput | None = None) -> float:
    """Median CPU latency in milliseconds of one forward pass, with ``threads`` torch threads.

    The input is ``example(batch_size)`` (e.g. int tokens for a sequence task), by default
    float noise of shape [batch_size, *input_shape]."""
    model = _cpu_copy(model)
    was_training = model.training
    model.eval()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = to_model_input(example(batch_size) if example is not None else torch.randn(batch_size, *input_shape), model)
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    return statistics.median(times)


def count_flops(model: nn.Module, input_shape: Sequence[int], *, example: ExampleInput | None = None) -> int:
    """FLOPs of one sample's forward pass by torch's own counter (a multiply-add counts 2);
    the sample is ``example(1)``, by default zeros of shape [1, *input_shape]."""
    model = _cpu_copy(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(to_model_input(example(1) if example is not None else torch.zeros(1, *input_shape), model))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def deployment_metrics(model: nn.Module, input_shape: Sequence[int], *, repeats: int = 30, threads: int = 1,
                       example: ExampleInput | None = None) -> dict[str, float]:
    """Parameters, bytes as saved, FLOPs and CPU latency; ``example`` as in :func:`measure_latency_ms`."""
    return {
        "params": float(count_parameters(model)),
        "params_nonzero": float(count_parameters(model, nonzero=True)),
        "size_bytes": float(saved_model_bytes(model)),
        "flops": float(count_flops(model, input_shape, example=example)),
        "latency_b1_ms": measure_latency_ms(model, input_shape, batch_size=1, repeats=repeats, threads=threads, example=example),
        "latency_b256_ms": measure_latency_ms(model, input_shape, batch_size=256, repeats=max(3, repeats // 3), threads=threads,
                                              example=example),
        "latency_threads": float(threads),
    }
