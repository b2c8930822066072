"""Models run by an inference runtime other than torch, behind the ``nn.Module`` interface.

A :class:`RuntimeModule` carries the bytes of its model file (an ONNX model, an
ExecuTorch program) and opens its runtime session lazily: it pickles
(``torch.save`` whole, MLflow's pickle format) by carrying the bytes and
reopening the session on first use after loading. ``research.evaluate.predict``
and ``classification_metrics`` work on it unchanged (inference only, float32
inputs on the CPU). Its latency is measured in its own runtime by
:meth:`RuntimeModule.latency_ms`, with the protocol of
``research.evaluate.measure_latency_ms`` (median of ``repeats`` runs after
``warmup``, ``threads`` intra-op threads).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn


class RuntimeModule(nn.Module):
    """Base of the runtime-backed modules (``OrtModule``, ``EtModule``); subclasses open a session
    (``_open``) and run one batch on it (``_run``)."""

    runtime = "runtime"  # its name in descriptions

    def __init__(self, model_bytes: bytes, *, threads: int = 1, description: str = "") -> None:
        super().__init__()
        self.model_bytes = bytes(model_bytes)
        self.threads = threads
        self.description = description
        self._session: Any = None

    def _open(self, threads: int) -> Any:
        """A new session on ``self.model_bytes`` with ``threads`` intra-op threads."""
        raise NotImplementedError

    def _run(self, session: Any, x: torch.Tensor) -> torch.Tensor:
        """Logits of one float32 CPU batch ``x`` from ``session``."""
        raise NotImplementedError

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = self._open(self.threads)
        return self._session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.session, x.detach().cpu().float().contiguous())

    def latency_ms(self, input_shape: Sequence[int], *, batch_size: int, repeats: int = 30, threads: int = 1, warmup: int = 3) -> float:
        """Median latency (ms) of one batch of ``batch_size`` in this runtime, on a fresh session with ``threads`` threads."""
        session = self._open(threads)
        x = torch.from_numpy(random_batch(batch_size, input_shape))
        return median_ms(lambda: self._run(session, x), repeats=repeats, warmup=warmup)

    def latencies_ms(self, input_shape: Sequence[int], runs: Sequence[tuple[int, int]], *, threads: int = 1, warmup: int = 3) -> list[float]:
        """:meth:`latency_ms` for each ``(batch_size, repeats)`` of ``runs`` (a runtime with a
        costly start measures them all in one go)."""
        return [self.latency_ms(input_shape, batch_size=b, repeats=r, threads=threads, warmup=warmup) for b, r in runs]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_session"] = None  # sessions do not pickle; reopened from model_bytes on first use
        return state

    def extra_repr(self) -> str:
        return f"{self.description or self.runtime}, {len(self.model_bytes)} bytes, threads={self.threads}"


def random_batch(batch_size: int, input_shape: Sequence[int]):
    """A float32 standard normal batch `[batch_size, *input_shape]` drawn by numpy default_rng(0) (the latency input)."""
    import numpy as np

    return np.random.default_rng(0).standard_normal((batch_size, *input_shape)).astype(np.float32)


def median_ms(call: Callable[[], object], *, repeats: int, warmup: int = 3) -> float:
    """Median wall time in milliseconds of ``call()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)
