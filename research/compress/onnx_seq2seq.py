"""A seq2seq student in ONNX Runtime: two exported graphs and the greedy loop around them.

What was chosen, and why: the decoding loop (a data-dependent number of steps, stopping
at EOS) stays in Python, and two graphs are exported with dynamic batch and lengths
(``torch.onnx.export(..., dynamo=True)``, the maintained exporter; the legacy TorchScript
exporter bakes the attention's reshape sizes in and fails on other lengths):

* ``encoder``: src int64 [B, Ls] -> memory float32 [B, Ls, d], pad bool [B, Ls];
* ``decoder``: (tgt_in int64 [B, t], memory, pad) -> logits float32 [B, V] of the LAST
  position: the whole prefix is recomputed each step (no key/value cache in the graph).

:class:`OrtGreedy` runs :func:`research.decoding.greedy_decode`'s rule (PAD and BOS never
generated, EOS forced after ``max_len`` tokens) on the CPU with ``threads`` threads;
tests/test_g2p_onnx.py checks it gives the same outputs as the PyTorch model.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .onnx_export import DEFAULT_OPSET, ort_session

__all__ = ["OrtGreedy", "Seq2SeqOnnx", "export_seq2seq_onnx"]

PAD, BOS, EOS = 0, 1, 2


class _Encoder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(src)


class _LastStep(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tgt_in: torch.Tensor, memory: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return self.model.decode(tgt_in, memory, pad)[:, -1]


@dataclass
class Seq2SeqOnnx:
    encoder: bytes
    decoder: bytes

    @property
    def size_bytes(self) -> int:
        return len(self.encoder) + len(self.decoder)


def _export(module: nn.Module, args: tuple, names: tuple[list[str], list[str]], dynamic: dict, opset: int) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, input_names=names[0], output_names=names[1], dynamic_axes=dynamic,
                          opset_version=opset, dynamo=True)
    return buf.getvalue()


def export_seq2seq_onnx(model: nn.Module, *, opset: int = DEFAULT_OPSET) -> Seq2SeqOnnx:
    """The encoder and last-step decoder graphs of an encoder-decoder model (``encode``/``decode``,
    ``research.models.seq2seq``), exported from a CPU eval copy."""
    m = copy.deepcopy(model).cpu().eval()
    src = torch.tensor([[3, 4, 5, PAD], [5, 6, 3, 4]])
    memory, pad = m.encode(src)
    enc = _export(_Encoder(m), (src,), (["src"], ["memory", "pad"]), {"src": {0: "batch", 1: "src_len"}}, opset)
    dec = _export(_LastStep(m), (torch.full((2, 3), BOS), memory, pad), (["tgt_in", "memory", "pad"], ["logits"]),
                  {"tgt_in": {0: "batch", 1: "tgt_len"}, "memory": {0: "batch", 1: "src_len"},
                   "pad": {0: "batch", 1: "src_len"}}, opset)
    return Seq2SeqOnnx(enc, dec)


class OrtGreedy:
    """Greedy decoding with the exported graphs in ONNX Runtime (CPU)."""

    def __init__(self, exported: Seq2SeqOnnx, *, threads: int = 1) -> None:
        self.encoder = ort_session(exported.encoder, threads=threads)
        self.decoder = ort_session(exported.decoder, threads=threads)

    def decode(self, src: torch.Tensor | np.ndarray, *, max_len: int) -> list[tuple[int, ...]]:
        """Output tokens (without EOS) for each row of ``src`` [B, Ls]."""
        x = src.numpy() if isinstance(src, torch.Tensor) else np.asarray(src)
        memory, pad = self.encoder.run(None, {"src": x.astype(np.int64)})
        b = x.shape[0]
        prefix = np.full((b, 1), BOS, dtype=np.int64)
        out: list[list[int]] = [[] for _ in range(b)]
        done = np.zeros(b, dtype=bool)
        for step in range(max_len + 1):
            logits = self.decoder.run(None, {"tgt_in": prefix, "memory": memory, "pad": pad})[0]
            if step == max_len:
                tok = np.full(b, EOS, dtype=np.int64)
            else:
                logits[:, [PAD, BOS]] = -np.inf
                tok = logits.argmax(-1)
            for i in np.nonzero(~done & (tok != EOS))[0]:
                out[i].append(int(tok[i]))
            done |= tok == EOS
            if done.all():
                break
            prefix = np.concatenate([prefix, np.where(done, EOS, tok)[:, None]], axis=1)
        return [tuple(o) for o in out]
