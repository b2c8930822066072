"""Int8 post-training quantization: dynamic for Linear layers, static (calibrated) for convolutions.

What was chosen, and why (tried on this machine: torch 2.14.1 on an x86 CPU,
torchao 0.18.0, onnxruntime 1.32.0, 1 thread):

* ``onnxruntime`` (the default): export to ONNX, then
  ``onnxruntime.quantization.quantize_dynamic`` (MatMul/Gemm only: int8
  weights, activations quantized on the fly) or ``quantize_static`` (QDQ
  format, int8 weights and int8 activations -- the S8S8 that ONNX Runtime
  recommends on x86 -- calibrated by min/max on training samples) after
  ``quant_pre_process``. Maintained, real int8 kernels on the CPU, and a
  deployable file whose bytes are what is counted. Per-tensor, not
  per-channel, weight scales: on the MNIST-1D CNN (89.4% float) per-channel
  lost 3 points (86.5%) where per-tensor kept 89.6%; percentile and entropy
  calibration gave the same accuracies as min/max.
* ``torch``: ``torch.ao.quantization`` eager mode -- ``quantize_dynamic`` for
  Linear, and for convolutions ``QuantWrapper`` + ``prepare``/``convert`` with
  the x86 qconfig, calibrated on training samples. Deprecated in this torch
  (it warns that it will be removed), but it still has real x86 int8 kernels
  and gives a module that saves whole and loads through MLflow (after a fix
  for torch 2.14's quantized convolutions, which do not unpickle otherwise:
  see ``_register_quantized_conv_pickling``). Eager static quantization cannot
  run models that add tensors (residual ResNets): that is reported as an
  error naming the onnxruntime backend.
* ``torchao`` (the maintained PyTorch path): ``quantize_`` with
  ``Int8DynamicActivationInt8WeightConfig`` on Linear layers. It runs on the
  CPU and is accurate, but on a 40-512-512-10 MLP it was 15x (batch 1) to 28x
  (batch 256) *slower* than float32 in eager mode, and still 27x slower at
  batch 256 under ``torch.compile``; its static path (pt2e with
  X86InductorQuantizer) was 2x slower than float32 on a CNN in eager mode and
  only matched it after ``torch.compile``; and neither result pickles whole
  (``torch.save`` fails on the int8 tensor subclass and on the exported
  graph), so its deployable form is a state_dict. Kept for comparison,
  dynamic Linear only; not the default.

Only 8 bits: the searchable ``bits`` knob exists for the study's sake.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .onnx_export import OrtModule, export_onnx

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd,)


@dataclass
class Quantized:
    model: nn.Module  # an OrtModule (onnxruntime), a TorchInt8 (torch) or the torchao-quantized module
    mode: str  # "dynamic" or "static"
    tags: dict[str, str] = field(default_factory=dict)


def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, CONV_TYPES) for m in model.modules())


def resolve_mode(model: nn.Module, mode: str) -> str:
    """``auto``: static (calibrated) when the model has convolutions, dynamic otherwise."""
    if mode == "auto":
        return "static" if has_convolutions(model) else "dynamic"
    if mode not in ("dynamic", "static"):
        raise ValueError(f"quant_mode must be auto, dynamic or static, got {mode!r}")
    return mode


def calibration_batch(x: torch.Tensor, samples: int, *, seed: int) -> torch.Tensor:
    """``samples`` rows of ``x`` drawn without replacement by ``seed`` (all of ``x`` if fewer)."""
    if samples >= len(x):
        return x
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:samples]
    return x[idx.sort().values]


def quantize_int8(
    model: nn.Module,
    *,
    input_shape: Sequence[int],
    calibration: torch.Tensor,
    backend: str = "onnxruntime",
    mode: str = "auto",
    threads: int = 1,
) -> Quantized:
    """An int8 copy of ``model`` (which is left unchanged). ``calibration``: float inputs for
    static quantization (training samples, never test ones)."""
    m = copy.deepcopy(model).cpu().eval()
    mode = resolve_mode(m, mode)
    calibration = calibration.detach().cpu().float()
    if backend == "onnxruntime":
        return _onnxruntime(m, input_shape, mode, calibration, threads)
    if backend == "torch":
        return _torch_ao(m, mode, calibration)
    if backend == "torchao":
        return _torchao(m, mode)
    raise ValueError(f"unknown quantization backend {backend!r}; choose onnxruntime, torch or torchao")


# ---------------------------------------------------------------- ONNX Runtime


class _Reader:
    """onnxruntime CalibrationDataReader over a tensor, in batches."""

    def __init__(self, input_name: str, x: torch.Tensor, batch_size: int = 64) -> None:
        self._batches = iter([{input_name: x[i : i + batch_size].numpy()} for i in range(0, len(x), batch_size)])

    def get_next(self):
        return next(self._batches, None)


def _onnxruntime(m: nn.Module, input_shape: Sequence[int], mode: str, calibration: torch.Tensor, threads: int) -> Quantized:
    import onnxruntime.quantization as oq
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType

    # Register our reader as a CalibrationDataReader (an ABC with get_next).
    CalibrationDataReader.register(_Reader)
    exp = export_onnx(m, input_shape)
    with tempfile.TemporaryDirectory() as tmp, _root_log_level(logging.ERROR):
        src, pre, out = (str(Path(tmp) / n) for n in ("float.onnx", "pre.onnx", "int8.onnx"))
        Path(src).write_bytes(exp.model_bytes)
        if mode == "dynamic":
            oq.quantize_dynamic(src, out, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        else:
            try:
                oq.quant_pre_process(src, pre, skip_symbolic_shape=False)
            except Exception:  # noqa: BLE001 - pre-processing only helps; quantize the export as it is
                pre = src
            name = _input_name(src)
            oq.quantize_static(
                pre, out, _Reader(name, calibration), quant_format=QuantFormat.QDQ, per_channel=False,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            )
        data = Path(out).read_bytes()
    return Quantized(
        OrtModule(data, threads=threads, description=f"int8 {mode} (onnxruntime)"), mode,
        {"exporter": exp.exporter},
    )


@contextlib.contextmanager
def _root_log_level(level: int):
    """onnxruntime.quantization logs its advice on the root logger: quiet it for a moment."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(old)


def _input_name(path: str) -> str:
    import onnx

    return onnx.load(path, load_external_data=False).graph.input[0].name


# ---------------------------------------------------------------- torch.ao (eager)


def _torch_ao(m: nn.Module, mode: str, calibration: torch.Tensor) -> Quantized:
    from torch.ao import quantization as tq

    _register_quantized_conv_pickling()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation warnings, on every call
        if mode == "dynamic":
            q = tq.quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)
        else:
            fuse_conv_bn_relu(m)
            wrapped = tq.QuantWrapper(m)
            wrapped.qconfig = tq.get_default_qconfig(torch.backends.quantized.engine)
            wrapped.eval()
            prepared = tq.prepare(wrapped)
            with torch.no_grad():
                for i in range(0, len(calibration), 256):
                    TorchInt8(prepared)(calibration[i : i + 256])
            q = tq.convert(prepared)
            try:
                with torch.no_grad():
                    TorchInt8(q)(calibration[:2])
            except (NotImplementedError, RuntimeError) as e:
                first = str(e).splitlines()[0][:160]
                raise ValueError(
                    f"backend 'torch' cannot run {type(m).__name__} statically quantized ({first}); "
                    "use backend 'onnxruntime' or quant_mode 'dynamic'"
                ) from None
    return Quantized(TorchInt8(q), mode, {"engine": torch.backends.quantized.engine})


FUSABLE_CONV: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def conv_bn_relu_groups(model: nn.Module) -> list[list[str]]:
    """Names of every Conv -> BatchNorm (-> ReLU) chain of ``model``, as ``fuse_modules`` takes them.

    Found in the model's traced graph (``torch.fx``): a convolution whose only user is a
    BatchNorm, optionally followed by an ``nn.ReLU`` that only it uses, each module called once
    (a ReLU module shared by two places, as in a residual block, is left out: fusing would
    turn its other call into an identity). Models that do not trace fall back to consecutive
    children of ``nn.Sequential`` containers, whose order is their call order."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - data-dependent control flow: fall back to Sequential order
        return _sequential_groups(model)
    modules = dict(model.named_modules())
    calls = collections.Counter(n.target for n in graph.nodes if n.op == "call_module")

    def only_user_of_type(node, types):
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or calls[users[0].target] != 1:
            return None
        return users[0] if isinstance(modules[users[0].target], types) else None

    groups = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1 or not isinstance(modules[node.target], FUSABLE_CONV):
            continue
        bn = only_user_of_type(node, nn.modules.batchnorm._BatchNorm)
        if bn is None:
            continue
        relu = only_user_of_type(bn, nn.ReLU)
        groups.append([node.target, bn.target] + ([relu.target] if relu is not None else []))
    return groups


def _sequential_groups(model: nn.Module) -> list[list[str]]:
    groups = []
    for prefix, container in model.named_modules():
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules)
        i = 0
        while i < len(names) - 1:
            a, b = container._modules[names[i]], container._modules[names[i + 1]]
            if isinstance(a, FUSABLE_CONV) and isinstance(b, nn.modules.batchnorm._BatchNorm):
                group = [names[i], names[i + 1]]
                if i + 2 < len(names) and isinstance(container._modules[names[i + 2]], nn.ReLU):
                    group.append(names[i + 2])
                groups.append([f"{prefix}.{n}" if prefix else n for n in group])
                i += len(group)
            else:
                i += 1
    return groups


def fuse_conv_bn_relu(model: nn.Module) -> nn.Module:
    """Fold each BatchNorm into the convolution before it (and its ReLU into the same int8 kernel),
    in place, in eval mode: unfused, static int8 quantizes the convolution's output and then the
    BatchNorm's again, two roundings where one suffices (on a Conv-BN-ReLU MNIST-1D model the
    relative output error was 12% unfused, 5% fused, issue 12). Returns ``model``."""
    from torch.ao import quantization as tq

    groups = conv_bn_relu_groups(model)
    if groups:
        model.eval()
        tq.fuse_modules(model, groups, inplace=True)
    return model


def _rebuild_quantized_conv(cls: type, state: tuple) -> nn.Module:
    """Unpickle a torch.ao quantized convolution the way its own ``__deepcopy__`` does."""
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    module.__setstate__(state)
    return module


def _reduce_quantized_conv(module: nn.Module):
    return _rebuild_quantized_conv, (type(module), module.__getstate__())


def _register_quantized_conv_pickling() -> None:
    """torch 2.14's quantized convolutions do not unpickle: their ``__setstate__`` sets
    attributes before ``nn.Module.__init__`` has run ("'Conv1d' object has no attribute
    '_modules'"), so ``torch.save``/``torch.load`` and MLflow's pickle format fail on them.
    Registered with ``copyreg`` (which pickle and cloudpickle both consult), they are
    rebuilt as ``__deepcopy__`` rebuilds them."""
    import copyreg

    from torch.ao.nn import quantized as nnq

    for name in ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"):
        cls = getattr(nnq, name, None)
        if cls is not None:
            copyreg.pickle(cls, _reduce_quantized_conv)


class TorchInt8(nn.Module):
    """A torch.ao int8 module. Its quantized kernels allocate through ``quantized_resize_cpu_``,
    which warns on every call while ``torch.use_deterministic_algorithms`` is on (as
    ``research.train.fit`` leaves it); the int8 arithmetic itself is deterministic, so the
    check is lifted for the duration of a forward pass."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.are_deterministic_algorithms_enabled():
            return self.module(x)
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(False)
        try:
            return self.module(x)
        finally:
            torch.use_deterministic_algorithms(True, warn_only=warn_only)


# ---------------------------------------------------------------- torchao


def _torchao(m: nn.Module, mode: str) -> Quantized:
    if mode == "static":
        raise ValueError(
            "backend 'torchao' has no CPU static int8 path usable in eager mode (pt2e needs torch.compile "
            "and does not pickle); use backend 'onnxruntime' or quant_mode 'dynamic'"
        )
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantize_(m, Int8DynamicActivationInt8WeightConfig())
    return Quantized(m, mode, {"torchao": _version("torchao")})


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)
