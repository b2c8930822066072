"""Teacher logits computed once per (teacher weights, data) and reused.

The key is a hash of the teacher's class and every tensor of its state_dict
together with the data's fingerprint, so a teacher whose weights changed
(or other data) never hits an old entry. Only valid for inputs that are not
augmented: with augmentation the Distiller calls the teachers per batch.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..evaluate import predict

if TYPE_CHECKING:
    from ..tasks import Task


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the class name and every state_dict tensor (name, dtype, shape, bytes)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # reshape: 0-d buffers (BN counters)
    return h.hexdigest()[:24]


class TeacherLogitCache:
    """In-memory and (when ``directory`` is given) on-disk cache of teacher logits."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def key(self, teacher: nn.Module, data_fingerprint: str) -> str:
        return f"{model_fingerprint(teacher)}-{data_fingerprint}"

    def logits(
        self,
        teacher: nn.Module,
        x: torch.Tensor,
        data_fingerprint: str,
        *,
        batch_size: int = 1024,
        device: str | torch.device = "cpu",
        task: "Task | None" = None,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The teacher's logits for every row of ``x``, as ``task.predict`` computes them
        (default: the model called on the inputs, ``research.evaluate.predict``); ``y`` for
        tasks whose forward reads the targets. The data fingerprint must cover ``y`` then."""
        key = self.key(teacher, data_fingerprint)
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        path = self.directory / f"{key}.pt" if self.directory is not None else None
        if path is not None and path.exists():
            self.hits += 1
            value = torch.load(path, weights_only=True, map_location="cpu")
        else:
            self.misses += 1
            if task is None:
                value = predict(teacher, x, batch_size=batch_size, device=device)
            else:
                value = task.predict(teacher, x, y, batch_size=batch_size, device=device)
            if path is not None:
                try:
                    _atomic_save(value, path)
                except OSError as e:  # a full disk or read-only cache: the logits are still right, kept in memory
                    warnings.warn(f"teacher-logit cache not written to {path.parent}: {e.strerror or e}", RuntimeWarning, stacklevel=2)
        self._memory[key] = value
        return value


def _atomic_save(value: torch.Tensor, path: Path) -> None:
    # Write then rename, so an interrupted run never leaves a truncated entry.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(value, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
