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


def tensor_payload_bytes(t: torch.Tensor) -> int:
    """Bytes of one tensor's values at the precision it is stored in.

    * plain tensor: ``numel * element_size`` (float32 4, float16 2, int8 1 bytes an element);
    * torch quantized tensor (``torch.ao``, e.g. qint8 weights): its integer values at 1 byte an
      element plus its quantizer as torch keeps it: per-tensor one float64 scale and one int64
      zero point (8 + 8 bytes), per-channel a float64 scale and an int64 zero point per channel;
    * tensor subclass that flattens into inner tensors (torchao's ``Int8Tensor``: int8 ``qdata``,
      float32 ``scale``, int8 ``zero_point``): the sum over those inner tensors.
    """
    if t.is_quantized:
        values = t.numel() * t.element_size()
        if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            return values + 8 + 8  # q_scale() is a double, q_zero_point() an int64
        scales, zeros = t.q_per_channel_scales(), t.q_per_channel_zero_points()
        return values + scales.numel() * scales.element_size() + zeros.numel() * zeros.element_size()
    flatten = getattr(t, "__tensor_flatten__", None)
    if type(t) is not torch.Tensor and type(t) is not nn.Parameter and flatten is not None:
        names, _ = flatten()
        return sum(tensor_payload_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def _tensors_in(value) -> list[torch.Tensor]:
    """The tensors inside a state_dict value (packed int8 params are a (weight, bias) tuple)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors_in(v)]
    return []  # dtypes and other non-tensor entries (a packed params' dtype) hold no weights


def payload_bytes(model: nn.Module) -> int:
    """Bytes of the numbers the deployed ``model`` needs, each tensor at its stored precision
    (:func:`tensor_payload_bytes`), summed over its ``state_dict`` (parameters and persistent
    buffers, int8 packed params unpacked): what a model weighs, without ``torch.save``'s
    container (a 710-parameter MLP is 2,840 bytes of float32 in a ~9 KB file).

    Left out, as no deployed model needs them: BatchNorm's ``num_batches_tracked`` (a training
    counter), the unused output ``scale``/``zero_point`` of ``torch.ao`` dynamic int8 layers, and
    the masks of ``torch.nn.utils.prune`` reparametrisations (``weight_orig`` counts as the dense
    weight it becomes once pruning is made permanent; a format that stores sparsity counts it
    itself: ``research.compress.storage.compact_payload_bytes``).
    Example: ``nn.Linear(10, 5)`` in float32 is (50 + 5) * 4 = 220 bytes."""
    state = model.state_dict()
    dynamic_int8 = [name for name, m in model.named_modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
    skip = {f"{name}.{attr}" if name else attr for name in dynamic_int8 for attr in ("scale", "zero_point")}
    total = 0
    for key, value in state.items():
        if key in skip or key.endswith("num_batches_tracked"):
            continue
        if key.endswith("_mask") and key.removesuffix("_mask") + "_orig" in state:
            continue
        total += sum(tensor_payload_bytes(t) for t in _tensors_in(value))
    return total


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
    """Parameters, bytes as saved (``size_bytes``, the torch.save file) and as weighed
    (``payload_bytes``, :func:`payload_bytes`), FLOPs and CPU latency; ``example`` as in :func:`measure_latency_ms`."""
    return {
        "params": float(count_parameters(model)),
        "params_nonzero": float(count_parameters(model, nonzero=True)),
        "size_bytes": float(saved_model_bytes(model)),
        "payload_bytes": float(payload_bytes(model)),
        "flops": float(count_flops(model, input_shape, example=example)),
        "latency_b1_ms": measure_latency_ms(model, input_shape, batch_size=1, repeats=repeats, threads=threads, example=example),
        "latency_b256_ms": measure_latency_ms(model, input_shape, batch_size=256, repeats=max(3, repeats // 3), threads=threads,
                                              example=example),
        "latency_threads": float(threads),
    }
