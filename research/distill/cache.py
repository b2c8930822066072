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
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


class MemoryDiskCache:
    """Values by key, in memory and (when ``directory`` is given) as ``<key>.pt`` files; what the
    teacher-logit and teacher-beam caches share. Counts ``hits`` and ``misses``."""

    what = "cache"  # named in the warning when a file cannot be written

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0

    def _cached(self, key: str, compute: Callable[[], Any], *, to_file: Callable[[Any], Any] = lambda v: v,
                from_file: Callable[[Any], Any] = lambda v: v) -> Any:
        """The value under ``key``: from memory, else from its file, else ``compute()`` (then
        written, atomically; a failed write warns and keeps the value in memory only)."""
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        path = self.directory / f"{key}.pt" if self.directory is not None else None
        if path is not None and path.exists():
            self.hits += 1
            value = from_file(torch.load(path, weights_only=True, map_location="cpu"))
        else:
            self.misses += 1
            value = compute()
            if path is not None:
                try:
                    _atomic_save(to_file(value), path)
                except OSError as e:  # a full disk or read-only cache: the value is still right, kept in memory
                    warnings.warn(f"{self.what} not written to {path.parent}: {e.strerror or e}", RuntimeWarning, stacklevel=3)
        self._memory[key] = value
        return value


class TeacherLogitCache(MemoryDiskCache):
    """In-memory and (when ``directory`` is given) on-disk cache of teacher logits."""

    what = "teacher-logit cache"

    def __init__(self, directory: str | Path | None = None) -> None:
        super().__init__(directory)
        self._predictions: dict[tuple, _Prediction] = {}  # predictions(): by identity, see there
        self.prediction_hits = 0
        self.prediction_misses = 0

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
        def compute() -> torch.Tensor:
            if task is None:
                return predict(teacher, x, batch_size=batch_size, device=device)
            return task.predict(teacher, x, y, batch_size=batch_size, device=device)

        return self._cached(self.key(teacher, data_fingerprint), compute)


    def predictions(self, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, task: "Task",
                    batch_size: int = 1024) -> torch.Tensor:
        """``task.predict(teacher, x, y, batch_size=batch_size)``, computed once per process for
        the same teacher object with unchanged weights on the same split tensors, then reused
        (memory only): a study's trials evaluate every member against the teachers' predictions
        on val and test, which are the same each time.

        The key cannot serve a wrong value: the teacher's weights by content
        (:func:`model_fingerprint`, so a write through ``.data``, which bypasses torch's version
        counter, still misses), the split tensors by identity (the entry holds weak references to
        ``x`` and ``y``, so a freed tensor's reused id cannot match) plus their storage pointer and
        in-place version counter, the task class and the batch size. Unlike :meth:`logits` the
        data are not hashed each call (a pass over the whole split) and nothing goes to disk.
        The raw per-teacher logits are cached; weights and combination are the caller's.
        """
        key = (id(teacher), id(x), id(y), type(task), batch_size)
        stamp = (model_fingerprint(teacher), _tensor_stamp(x), _tensor_stamp(y))
        entry = self._predictions.get(key)
        if (entry is not None and entry.holds(teacher, x, y) and entry.stamp == stamp
                and entry.value._version == entry.value_version):  # and nobody wrote into the logits handed out
            self.prediction_hits += 1
            return entry.value
        self.prediction_misses += 1
        value = task.predict(teacher, x, y, batch_size=batch_size)
        # Entries whose teacher or split is gone (a fold's val split, a finished trial's) go, so
        # the memo does not grow with the trials of a long study.
        self._predictions = {k: e for k, e in self._predictions.items() if e.alive()}
        self._predictions[key] = _Prediction(teacher, x, y, stamp, value)
        return value


class _Prediction:
    """One memo entry of :meth:`TeacherLogitCache.predictions`: weak references to what it was
    computed from (an id is reused once its object is freed; a dead reference matches nothing)."""

    def __init__(self, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor | None, stamp: tuple, value: torch.Tensor) -> None:
        self._refs = [weakref.ref(teacher), weakref.ref(x), None if y is None else weakref.ref(y)]
        self.stamp, self.value, self.value_version = stamp, value, value._version

    def holds(self, *objects: object) -> bool:
        """Whether the entry was computed from these very objects (``is``, never ``==``)."""
        return all((r is None and o is None) or (r is not None and r() is o) for r, o in zip(self._refs, objects))

    def alive(self) -> bool:
        return all(r is None or r() is not None for r in self._refs)


def _tensor_stamp(t: torch.Tensor | None) -> tuple | None:
    """(storage pointer, in-place version counter, shape, dtype, device) of ``t``: changes when
    ``t`` is written in place or its storage replaced."""
    return None if t is None else (t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device)


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
