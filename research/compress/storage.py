"""Bytes actually written: a compact file format for sparse models, and file sizes.

A magnitude-pruned model saved with ``torch.save`` is as large as the dense one
(its zeros are stored). Its deployable form here is a *compact* file: one
``torch.save`` of

    {"format": "research.compact/1",
     "module": the whole module with each compacted parameter emptied,
     "tensors": {parameter name: {"kind", "shape", ...}}}

where each parameter is stored in whichever of three encodings is smallest:

* ``dense``  (left in the module): numel x itemsize bytes;
* ``bitmask``: one bit per element (``numpy.packbits``) + the non-zero values,
  ceil(numel/8) + nnz x itemsize -- wins for densities between ~3% and ~97%;
* ``index``: int16 (tensors up to 65,536 elements) or int32 flat positions + the non-zero values,
  nnz x (index size + itemsize) -- wins at very high sparsity.

``load_compact`` rebuilds the whole module, bit-identical to the one saved.
Sizes are always ``os.path.getsize`` of a file really written; payloads
(``FileFormat.payload_bytes``) count only the tensors' bytes in it, the sparse
ones as values + indices (``compact_payload_bytes``).

The deployable file of every compression method is a :class:`FileFormat`
(how it is written, sized and reloaded): :data:`TORCH`, :data:`COMPACT` and
:data:`STATE_DICT` here; the runtimes' files (``ONNX_FILE``, ``PTE_FILE``) live
with their runtimes.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

FORMAT = "research.compact/1"
# Per-tensor cost of one more storage record in torch.save's zip (name, header,
# alignment); a compact encoding must save at least this much to be chosen.
_RECORD_OVERHEAD = 256


def file_bytes(path: str | os.PathLike) -> int:
    """Size in bytes of a file as it lies on disk (os.path.getsize)."""
    return os.path.getsize(path)


def torch_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` through an open file: the zip's record names are then always
    ``archive/...``, not derived from the file name, so the size does not depend on the path."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def _bytes_written(write) -> int:
    fd, path = tempfile.mkstemp(suffix=".bin")
    os.close(fd)
    try:
        write(path)
        return file_bytes(path)
    finally:
        os.remove(path)


def _index_dtype(numel: int) -> torch.dtype:
    # int16 holds positions 0..65535 stored as position - 32768
    return torch.int16 if numel <= 65536 else torch.int32


def encode_tensor(t: torch.Tensor) -> dict | None:
    """The smallest sparse encoding of ``t``, or None when storing it dense is as small."""
    t = t.detach().cpu().contiguous()
    flat = t.reshape(-1)
    numel, item = flat.numel(), flat.element_size()
    nz = torch.nonzero(flat, as_tuple=False).reshape(-1)
    nnz = nz.numel()
    idx_dtype = _index_dtype(numel)
    dense = numel * item
    bitmask = (numel + 7) // 8 + nnz * item
    index = nnz * (torch.empty((), dtype=idx_dtype).element_size() + item)
    best = min(bitmask, index)
    if best + _RECORD_OVERHEAD >= dense:
        return None
    values = flat[nz].clone()
    if bitmask <= index:
        mask = np.packbits((flat != 0).numpy())
        return {"kind": "bitmask", "shape": tuple(t.shape), "mask": torch.from_numpy(mask), "values": values}
    if idx_dtype == torch.int16:
        pos = (nz - 32768).to(torch.int16)
    else:
        pos = nz.to(torch.int32)
    return {"kind": "index", "shape": tuple(t.shape), "numel": numel, "index": pos, "values": values}


def decode_tensor(e: dict) -> torch.Tensor:
    shape = tuple(e["shape"])
    numel = int(np.prod(shape)) if shape else 1
    values = e["values"]
    out = torch.zeros(numel, dtype=values.dtype)
    if e["kind"] == "bitmask":
        mask = np.unpackbits(e["mask"].numpy(), count=numel).astype(bool)
        out[torch.from_numpy(mask)] = values
    elif e["kind"] == "index":
        pos = e["index"].to(torch.int64)
        if e["index"].dtype == torch.int16:
            pos = pos + 32768
        out[pos] = values
    else:
        raise ValueError(f"unknown compact tensor kind {e['kind']!r}")
    return out.reshape(shape)


def _without_pruning_hooks(model: nn.Module) -> nn.Module:
    from .prune import make_pruning_permanent  # local: prune imports nothing from here

    return make_pruning_permanent(model)


def _copy_module(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also for a model with pruning reparametrisations: their
    ``weight`` is a tensor computed from ``weight_orig * weight_mask`` (not a leaf), which
    deepcopy refuses; the copy gets a detached clone, recomputed when the hooks are removed."""
    from torch.nn.utils import prune

    memo: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                computed = getattr(module, hook._tensor_name)
                memo[id(computed)] = computed.detach().clone()
    return copy.deepcopy(model, memo)


def save_compact(model: nn.Module, path: str | os.PathLike) -> int:
    """Write ``model`` whole in the compact format; returns the bytes written.

    The model is not changed (a copy is emptied). Pruning reparametrisations,
    if any, are made permanent in the copy first.
    """
    skeleton = _without_pruning_hooks(_copy_module(model)).cpu()
    tensors: dict[str, dict] = {}
    for name, p in skeleton.named_parameters():
        e = encode_tensor(p.data)
        if e is not None:
            tensors[name] = e
            p.data = torch.empty(0, dtype=p.dtype)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch_save({"format": FORMAT, "module": skeleton, "tensors": tensors}, path)
    return file_bytes(path)


def load_compact(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The whole module written by :func:`save_compact` (trusted files only: it unpickles)."""
    obj = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    module: nn.Module = obj["module"]
    for name, e in obj["tensors"].items():
        module.get_parameter(name).data = decode_tensor(e).to(map_location)
    return module


def encoded_payload_bytes(t: torch.Tensor) -> int:
    """Bytes of ``t`` as :func:`save_compact` stores it: dense ``numel * itemsize``, or the
    encoding's own tensors at their dtypes (bitmask: ceil(numel/8) uint8 + nnz values; index:
    nnz int16/int32 positions + nnz values)."""
    e = encode_tensor(t)
    if e is None:
        return t.numel() * t.element_size()
    parts = [e["values"], e["mask"] if e["kind"] == "bitmask" else e["index"]]
    return sum(p.numel() * p.element_size() for p in parts)


def compact_payload_bytes(model: nn.Module) -> int:
    """Payload of ``model``'s compact file: each parameter as :func:`encoded_payload_bytes`
    (sparse values + their indices, or dense), each persistent buffer dense at its dtype
    (``research.evaluate.tensor_payload_bytes``; BatchNorm's ``num_batches_tracked`` left out,
    as ``research.evaluate.payload_bytes`` does). A pruning reparametrisation counts as the
    permanent weight it stands for (``weight_orig * weight_mask``; the mask is not stored);
    read without copying the model, which such a model does not allow."""
    from research.evaluate import tensor_payload_bytes

    state = model.state_dict()
    total, masks = 0, set()
    for name, p in model.named_parameters():
        p = p.detach().cpu()
        if name.endswith("_orig") and name.removesuffix("_orig") + "_mask" in state:
            masks.add(name.removesuffix("_orig") + "_mask")
            p = p * state[name.removesuffix("_orig") + "_mask"].cpu()
        total += encoded_payload_bytes(p)
    for name, b in model.named_buffers():
        if name in state and name not in masks and not name.endswith("num_batches_tracked"):
            total += tensor_payload_bytes(b)
    return total


def compact_size_bytes(model: nn.Module) -> int:
    """Bytes of the compact file of ``model`` as really written."""
    return _bytes_written(lambda p: save_compact(model, p))


# ---------------------------------------------------------------- file formats


class FileFormat:
    """How a compressed model's deployable file is written, sized and reloaded.

    A compression method names its format (``CompressionMethod.file_format``);
    ``CompressedModel.save`` writes it and ``size_bytes`` is that file's size.
    ``whole_module``: the in-memory model pickles whole, so MLflow can log it as a
    model (pickle format) and reload it.
    """

    name: str = ""
    suffix: str = ".bin"  # file name suffix of the deployable file (MLflow artifact ``deployable/model<suffix>``)
    whole_module: bool = True

    def write(self, model: nn.Module, path: Path) -> None:
        raise NotImplementedError

    def load(self, path: str | os.PathLike, *, template: nn.Module | None = None) -> nn.Module:
        """The model in the file at ``path`` (trusted files only: torch formats unpickle).
        ``template``: a model of the same structure, for formats that store weights only."""
        raise NotImplementedError

    def save(self, model: nn.Module, path: str | os.PathLike) -> int:
        """Write ``model`` to ``path``; returns the bytes written (``os.path.getsize``)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.write(model, Path(path))
        return file_bytes(path)

    def size_bytes(self, model: nn.Module) -> int:
        """Bytes of ``model``'s file in this format, as really written (to a temporary file)."""
        return _bytes_written(lambda p: self.save(model, p))

    def payload_bytes(self, model: nn.Module) -> int:
        """Bytes of the numbers ``model``'s file holds, each tensor at its stored precision,
        without the container (``research.evaluate.payload_bytes``; formats that store sparsity
        or other tensors override it)."""
        from research.evaluate import payload_bytes

        return payload_bytes(model)

    def __repr__(self) -> str:
        return f"<file format {self.name}>"


class TorchFile(FileFormat):
    """``torch.save`` of the whole module."""

    name, suffix = "torch", ".pt"

    def write(self, model: nn.Module, path: Path) -> None:
        torch_save(model, path)

    def load(self, path, *, template=None) -> nn.Module:
        return torch.load(path, map_location="cpu", weights_only=False)


class CompactFile(FileFormat):
    """:func:`save_compact`: sparse weights stored as bitmask or index + values."""

    name, suffix = "compact", ".compact.pt"

    def write(self, model: nn.Module, path: Path) -> None:
        save_compact(model, path)

    def load(self, path, *, template=None) -> nn.Module:
        return load_compact(path)

    def payload_bytes(self, model: nn.Module) -> int:
        return compact_payload_bytes(model)


class StateDictFile(FileFormat):
    """``torch.save(model.state_dict())``, for modules that do not pickle whole (torchao int8)."""

    name, suffix, whole_module = "state_dict", ".pt", False

    def write(self, model: nn.Module, path: Path) -> None:
        torch_save(model.state_dict(), path)

    def load(self, path, *, template=None) -> nn.Module:
        if template is None:
            raise ValueError("a state_dict file reloads into a model of the same structure: pass template=")
        model = copy.deepcopy(template)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=False), assign=True)
        return model


TORCH = TorchFile()
COMPACT = CompactFile()
STATE_DICT = StateDictFile()
