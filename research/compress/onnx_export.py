"""The edge path: ONNX export of any model, and ONNX Runtime inference wrapped as a module.

Export uses torch's maintained exporter (``torch.onnx.export(..., dynamo=True)``,
which needs ``onnxscript``) with a dynamic batch dimension; a model it cannot
trace falls back to the legacy TorchScript exporter (deprecated, still shipped
in torch 2.14). Which one ran is reported.

:class:`OrtModule` is an ``nn.Module`` whose forward runs an ONNX Runtime
session on the CPU: ``research.evaluate.predict`` and ``classification_metrics``
work on it unchanged, and it pickles (``torch.save`` whole, MLflow's pickle
format) by carrying the ONNX bytes and rebuilding its session on load (a
:class:`research.compress.runtime.RuntimeModule`). Its latency is measured in
ONNX Runtime itself, with the same protocol as
``research.evaluate.measure_latency_ms``. Its deployable file is the ONNX
model (:data:`ONNX_FILE`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .runtime import RuntimeModule, median_ms, random_batch
from .storage import FileFormat

DEFAULT_OPSET = 18


@dataclass
class OnnxExport:
    model_bytes: bytes
    exporter: str  # "dynamo" or "torchscript"


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).cpu()
    m.eval()
    return m


def export_onnx(model: nn.Module, input_shape: Sequence[int], *, opset: int = DEFAULT_OPSET) -> OnnxExport:
    """The ONNX model (bytes) of ``model`` for float inputs ``[batch, *input_shape]``, batch dynamic."""
    from research.models.outputs import LogitsOf, needs_adapter

    m = _cpu_eval_copy(model)
    example = torch.randn(2, *input_shape)
    if needs_adapter(m, None, example):
        # Half-precision weights: float32 in, float32 logits out, as the rest of the workbench sees the
        # model; a tuple/dict output stops here with the one line that says how to pick the logits.
        m = LogitsOf(m)
        m(example)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                m, (example,), input_names=["x"], output_names=["logits"], opset_version=opset,
                dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False,
            )
        buf = io.BytesIO()
        program.save(buf)
        return OnnxExport(buf.getvalue(), "dynamo")
    except Exception as dynamo_error:  # noqa: BLE001 - any tracing failure: try the legacy exporter
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    m, (example,), buf, input_names=["x"], output_names=["logits"], opset_version=opset,
                    dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
                )
        except Exception as legacy_error:
            raise RuntimeError(f"ONNX export of {type(model).__name__} failed: dynamo: {dynamo_error}; torchscript: {legacy_error}") from legacy_error
        return OnnxExport(buf.getvalue(), "torchscript")


def ort_session(model_bytes: bytes, *, threads: int = 1):
    """A CPU ONNX Runtime session with ``threads`` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


class OrtModule(RuntimeModule):
    """An ONNX model run by ONNX Runtime on the CPU, behind the ``nn.Module`` interface.

    Inference only (no gradients); inputs are taken to the CPU as float32.
    """

    runtime = "onnx"

    def _open(self, threads: int):
        return ort_session(self.model_bytes, threads=threads)

    def _run(self, session, x: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x.numpy())})[0]
        return torch.from_numpy(out)

    def latency_ms(self, input_shape: Sequence[int], *, batch_size: int, repeats: int = 30, threads: int = 1, warmup: int = 3) -> float:
        """Median latency (ms) of one ``session.run`` on a prepared numpy feed, on a fresh session
        with ``threads`` intra-op threads (no torch conversion inside the timed call)."""
        s = self._open(threads)
        feed = {s.get_inputs()[0].name: random_batch(batch_size, input_shape)}
        return median_ms(lambda: s.run(None, feed), repeats=repeats, warmup=warmup)


class OnnxFile(FileFormat):
    """The ONNX model file of an :class:`OrtModule` (its ``model_bytes``); reloads as an ``OrtModule``."""

    name, suffix = "onnx", ".onnx"

    def write(self, model: nn.Module, path: Path) -> None:
        path.write_bytes(model.model_bytes)

    def load(self, path, *, template=None) -> OrtModule:
        return OrtModule(Path(path).read_bytes(), description="onnx file")

    def payload_bytes(self, model: nn.Module) -> int:
        return onnx_payload_bytes(model.model_bytes)


def onnx_payload_bytes(model_bytes: bytes) -> int:
    """Bytes of the tensors an ONNX model stores, each at its ONNX data type: the graph's
    initializers (weights; for int8 models the int8 weights and their scale and zero-point
    tensors) and the values of its ``Constant`` nodes, subgraphs included;
    ``numel * itemsize`` each. Not the protobuf's framing, names or graph."""
    import onnx
    from onnx import helper

    def graph_bytes(graph) -> int:
        tensors = list(graph.initializer)
        total = 0
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    tensors.append(attr.t)
                elif attr.type == onnx.AttributeProto.GRAPH:
                    total += graph_bytes(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    total += sum(graph_bytes(g) for g in attr.graphs)
        for t in tensors:
            numel = int(np.prod(t.dims)) if len(t.dims) else 1
            total += numel * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        return total

    return graph_bytes(onnx.load_from_string(model_bytes).graph)


ONNX_FILE = OnnxFile()


def onnx_model(model: nn.Module, input_shape: Sequence[int], *, threads: int = 1) -> tuple[OrtModule, str]:
    """``model`` exported to ONNX and wrapped for ONNX Runtime; also returns the exporter used."""
    exp = export_onnx(model, input_shape)
    return OrtModule(exp.model_bytes, threads=threads, description=f"float32 ({exp.exporter} export)"), exp.exporter


def max_abs_difference(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference between the outputs of two modules on ``x`` (eval mode)."""
    from research.evaluate import predict

    return float((predict(a, x) - predict(b, x)).abs().max())


def ort_latency_ms(model: OrtModule | bytes, input_shape: Sequence[int], *, batch_size: int, repeats: int = 30,
                   threads: int = 1, warmup: int = 3) -> float:
    """Median latency (ms) of one ``session.run`` in ONNX Runtime with ``threads`` intra-op threads."""
    module = model if isinstance(model, OrtModule) else OrtModule(model)
    return module.latency_ms(input_shape, batch_size=batch_size, repeats=repeats, threads=threads, warmup=warmup)
