"""``executorch``: the model exported to an ExecuTorch program (``.pte``) for the XNNPACK backend,
run and timed in ExecuTorch's runtime from Python.

ExecuTorch is PyTorch's own runtime for phones and edge devices (the
``executorch`` package; 1.5.1 installs beside torch 2.14.1). The flow, as its
documentation gives it:

1. ``torch.export.export`` of the float model with a dynamic batch dimension
   (1 .. ``max_batch``: memory planning needs an upper bound; a larger batch is
   run in chunks of ``max_batch``, so evaluation and latency at any batch size
   use one program);
2. with ``quantize: true``, int8 through ExecuTorch's quantization flow: the
   exported graph is annotated by ``XNNPACKQuantizer`` (symmetric int8
   activations and weights, per-channel weight scales by default), calibrated
   on ``calibration_samples`` training samples (``prepare_pt2e`` /
   ``convert_pt2e``) and exported again;
3. ``to_edge_transform_and_lower`` with the ``XnnpackPartitioner`` (the
   supported subgraphs run as XNNPACK delegates, anything else in ExecuTorch's
   portable kernels: ``pte_ops_outside_delegates`` counts those), then
   ``to_executorch()``; the program's bytes are the deployable file.

:class:`EtModule` runs the program through ``executorch.runtime.Runtime``
behind the ``nn.Module`` interface, so accuracy is measured by the same
``predict``; its latency is measured in ExecuTorch with its thread pool set
to the requested threads, in a fresh process (:func:`pte_latency_ms`).
``params`` and ``flops`` are those of the float network that was exported.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Literal, Sequence

import torch
from pydantic import Field
from torch import nn

from research.config import MethodConfig

from ..base import CompressContext, CompressedModel, CompressionMethod
from ..onnx_export import max_abs_difference
from ..quantize import calibration_batch
from ..registry import register_method
from ..runtime import RuntimeModule
from ..storage import FileFormat


class ExecuTorchConfig(MethodConfig):
    method: Literal["executorch"] = "executorch"
    quantize: bool = False  # int8 (XNNPACKQuantizer, calibrated) instead of float32
    per_channel: bool = True  # int8: one weight scale per output channel (XNNPACK's usual setting)
    calibration_samples: int = Field(512, ge=1)  # int8: training samples for the activation ranges
    max_batch: int = Field(256, ge=2)  # the program's largest batch; larger inputs run in chunks


@register_method
class ExecuTorch(CompressionMethod):
    name = "executorch"
    config = ExecuTorchConfig
    cfg: ExecuTorchConfig

    @property
    def file_format(self) -> FileFormat:
        return PTE_FILE

    def apply(self, model, ctx: CompressContext) -> CompressedModel:
        c = self.cfg
        reference = model.cpu().eval()
        calib = calibration_batch(ctx.data.train.x, c.calibration_samples, seed=ctx.seed) if c.quantize else None
        program, info = export_pte(reference, ctx.data.input_shape, quantize=c.quantize, calibration=calib,
                                   per_channel=c.per_channel, max_batch=c.max_batch)
        payload = int(info.pop("pte_payload_bytes"))
        kind = "int8" if c.quantize else "float32"
        et = EtModule(program, threads=ctx.threads, description=f"{kind} xnnpack")
        extra = {"pte_max_abs_diff": max_abs_difference(et, reference, ctx.data.val.x[:512]), **info}
        return self.measured(et, ctx, reference=reference, extra=extra, payload_bytes=payload,
                             tags={"backend": "xnnpack", "dtype": kind, "executorch": _version("executorch")})

    def label(self) -> str:
        return "executorch_int8" if self.cfg.quantize else "executorch"


# ---------------------------------------------------------------- export


def export_pte(model: nn.Module, input_shape: Sequence[int], *, quantize: bool = False, calibration: torch.Tensor | None = None,
               per_channel: bool = True, max_batch: int = 256) -> tuple[bytes, dict[str, float]]:
    """The ExecuTorch program (bytes) of ``model`` (eval mode, CPU, not changed) for float inputs
    ``[batch, *input_shape]``, batch 1 .. ``max_batch``, lowered to XNNPACK; and
    ``{"pte_ops_outside_delegates", "pte_delegates", "pte_payload_bytes"}`` (the last:
    :func:`lowered_payload_bytes` of the network lowered). ``quantize``: int8 calibrated on ``calibration``."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    example = (torch.randn(2, *input_shape),)  # batch 2: torch.export specialises a batch of 1
    dims = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
    with torch.no_grad():
        if quantize:
            if calibration is None:
                raise ValueError("int8 ExecuTorch export needs calibration inputs")
            model = _quantized(model, example, dims, calibration, per_channel=per_channel, max_batch=max_batch)
        exported = torch.export.export(model, example, dynamic_shapes=dims)
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        program = edge.to_executorch()
    return bytes(program.buffer), {**_delegation(edge.exported_program().graph), "pte_payload_bytes": float(lowered_payload_bytes(model))}


def lowered_payload_bytes(model: nn.Module) -> int:
    """Payload of the network lowered into a ``.pte``, each tensor at its dtype there
    (``research.evaluate.tensor_payload_bytes``).

    Measured on the source network, not parsed out of the program: XNNPACK keeps the weights
    inside its delegate's own serialized blob, which ExecuTorch's Python API does not expose
    as tensors. Float: the module's ``payload_bytes`` (float32 weights). Int8 (the pt2e
    ``GraphModule`` of :func:`_quantized`): the constants its graph reads (``get_attr``): int8
    weights, their float32 per-channel scales and int64 zero points, float32 biases; its
    state_dict would also hold the float weights that quantization left unused. Per-tensor
    activation scales are numbers inside the graph, not tensors, and are not counted (a few
    bytes a layer)."""
    from research.evaluate import payload_bytes, tensor_payload_bytes

    if not isinstance(model, torch.fx.GraphModule):
        return payload_bytes(model)
    total, seen = 0, set()
    for node in model.graph.nodes:
        if node.op != "get_attr" or node.target in seen:
            continue
        seen.add(node.target)
        value = model
        for part in node.target.split("."):
            value = getattr(value, part)
        if isinstance(value, torch.Tensor):
            total += tensor_payload_bytes(value)
    return total


def _quantized(model: nn.Module, example, dims, calibration: torch.Tensor, *, per_channel: bool, max_batch: int) -> nn.Module:
    """``model`` through ExecuTorch's pt2e int8 flow (XNNPACKQuantizer), calibrated on ``calibration``."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    prepared = prepare_pt2e(torch.export.export(model, example, dynamic_shapes=dims).module(), quantizer)
    x = calibration.detach().cpu().float()
    for i in range(0, len(x), max_batch):
        prepared(x[i : i + max_batch])
    return convert_pt2e(prepared)


def _delegation(graph) -> dict[str, float]:
    calls = [n for n in graph.nodes if n.op == "call_function" and "getitem" not in str(n.target)]
    delegates = sum("executorch_call_delegate" in str(n.target) for n in calls)
    return {"pte_delegates": float(delegates), "pte_ops_outside_delegates": float(len(calls) - delegates)}


# ---------------------------------------------------------------- the runtime


class EtModule(RuntimeModule):
    """An ExecuTorch program run by ExecuTorch's runtime (``executorch.runtime.Runtime``) on the CPU.

    Inference only; inputs are taken to the CPU as float32 and run in chunks of at most the
    program's largest batch (its dynamic batch bound, read from the program itself).
    """

    runtime = "executorch"

    def _open(self, threads: int):
        from executorch.runtime import Runtime

        with _native_stderr_captured():  # the runtime prints CPU probing notes on its first load
            program = Runtime.get().load_program(self.model_bytes)
            method = program.load_method("forward")
        max_batch = method.metadata.input_tensor_meta(0).sizes()[0]
        return program, method, max_batch  # the program must outlive its method

    @property
    def max_batch(self) -> int:
        return self.session[2]

    def _run(self, session, x: torch.Tensor) -> torch.Tensor:
        _, method, step = session
        outs = [method.execute((x[i : i + step],))[0].clone() for i in range(0, len(x), step)]
        return torch.cat(outs) if len(outs) != 1 else outs[0]

    def latency_ms(self, input_shape: Sequence[int], *, batch_size: int, repeats: int = 30, threads: int = 1, warmup: int = 3) -> float:
        """Median latency (ms) of one batch in ExecuTorch with ``threads`` threads, measured in a
        fresh Python process (see :func:`pte_latency_ms`)."""
        return self.latencies_ms(input_shape, [(batch_size, repeats)], threads=threads, warmup=warmup)[0]

    def latencies_ms(self, input_shape: Sequence[int], runs: Sequence[tuple[int, int]], *, threads: int = 1, warmup: int = 3) -> list[float]:
        return pte_latency_ms(self.model_bytes, input_shape, runs, threads=threads, warmup=warmup)


# ExecuTorch's CPU thread pool is one per process, sized to the cores; its Python hook
# (_unsafe_reset_threadpool) leaves programs loaded before a reset hanging on their next run
# (seen here: load, reset to 1, reset back to 2, run -> deadlock). So the latency is measured in a
# fresh process whose pool is sized once, before its program is loaded. The same protocol as
# research.evaluate.measure_latency_ms: warmup runs, then the median of `repeats` timed runs on a
# standard normal batch (numpy default_rng(0)); a batch past the program's bound runs in chunks.
_LATENCY_SCRIPT = """
import json, statistics, sys, time
import numpy as np, torch
from executorch.extension.pybindings import portable_lib
from executorch.runtime import Runtime
a = json.loads(sys.argv[1])
if portable_lib._threadpool_get_thread_count() != a["threads"]:
    portable_lib._unsafe_reset_threadpool(a["threads"])
method = Runtime.get().load_program(a["path"]).load_method("forward")
step = method.metadata.input_tensor_meta(0).sizes()[0]
out = []
for batch, repeats in a["runs"]:
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, *a["shape"])).astype(np.float32))
    chunks = [x[i : i + step] for i in range(0, len(x), step)]
    def run():
        for c in chunks:
            method.execute((c,))
    for _ in range(a["warmup"]):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1000)
    out.append(statistics.median(times))
print(json.dumps(out))
"""


def pte_latency_ms(program: bytes, input_shape: Sequence[int], runs: Sequence[tuple[int, int]], *, threads: int = 1,
                   warmup: int = 3, timeout_s: float = 600) -> list[float]:
    """Median latency (ms) of one batch through the ExecuTorch ``program`` with a thread pool of
    ``threads``, for each ``(batch_size, repeats)`` of ``runs``, in one fresh Python process (a few
    seconds to start). Raises ``RuntimeError`` with the process's output if it fails."""
    import json
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pte"
        path.write_bytes(program)
        args = {"path": str(path), "runs": [list(r) for r in runs], "shape": list(input_shape), "threads": threads, "warmup": warmup}
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run([sys.executable, "-c", _LATENCY_SCRIPT, json.dumps(args)], capture_output=True, text=True,
                              timeout=timeout_s, env=env)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"ExecuTorch latency run failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")
    return [float(v) for v in json.loads(done.stdout.strip().splitlines()[-1])]


@contextlib.contextmanager
def _native_stderr_captured():
    """The runtime logs from C++ straight to file descriptor 2 (CPU probing, thread pool resets):
    keep those notes off the terminal, and attach them to an error if one is raised."""
    with tempfile.TemporaryFile() as sink:
        try:
            saved = os.dup(2)
        except OSError:  # no usable stderr: nothing to capture
            yield
            return
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except Exception as e:
            os.dup2(saved, 2)
            sink.seek(0)
            notes = sink.read().decode(errors="replace").strip()
            if notes:
                e.add_note(f"executorch runtime log:\n{notes[-2000:]}")
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class PteFile(FileFormat):
    """The ExecuTorch program file (``.pte``) of an :class:`EtModule`; reloads as an ``EtModule``."""

    name, suffix = "pte", ".pte"

    def write(self, model: nn.Module, path: Path) -> None:
        path.write_bytes(model.model_bytes)

    def load(self, path, *, template=None) -> EtModule:
        return EtModule(Path(path).read_bytes(), description="pte file")

    def payload_bytes(self, model: nn.Module) -> int:
        raise ValueError("the payload of a .pte is measured on the network lowered into it (export_pte's "
                         "pte_payload_bytes), not read back from the program")


PTE_FILE = PteFile()


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)
