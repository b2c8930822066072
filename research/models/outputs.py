"""Models as users bring them: outputs that are tuples or dicts, half-precision weights, any device.

Everything downstream (losses, the teacher-logit cache, evaluation, latency,
FLOPs, export) expects a model to map a float32 batch to ONE float32 logits
tensor. :class:`LogitsOf` makes any model do so:

* the forward's result is read by ``output``: an index into a tuple/list
  (``output: 0``) or a key of a dict (``output: logits``, HuggingFace-style
  outputs included); without ``output`` a non-tensor result is an error that
  says how to set it (:func:`select_output`);
* floating inputs are cast to the model's own floating dtype and moved to its
  device (a float16 or bfloat16 teacher on float32 data), and the logits are
  returned as float32, so that dividing by a temperature never happens in
  half precision (float16 overflows at 65504 and rounds to 3 significant digits).

No MLflow, no Optuna here: the engine and the pipeline both use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["LogitsOf", "ModelOutputError", "check_classes", "model_device_dtype", "needs_adapter", "select_output", "to_model_input"]


class ModelOutputError(ValueError):
    """A model's output is not what the data and the task need (wrong number of classes, a
    tuple or dict without ``output`` to pick the logits, a key that is not there)."""


def _describe(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor {tuple(out.shape)}"
    if isinstance(out, Mapping):
        return f"a dict with keys {list(out)}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)}"
    return f"a {type(out).__name__}"


def select_output(out: Any, output: int | str | None = None, *, what: str = "the model", how: str = "output") -> torch.Tensor:
    """The logits tensor in a forward's result ``out``.

    ``output``: None (``out`` must be a tensor), an int index into a tuple/list, or a
    str key of a mapping (or an attribute name, for output dataclasses).
    Raises :class:`ModelOutputError` naming ``what`` and the setting ``how`` to fix it.
    """
    if output is None:
        if isinstance(out, torch.Tensor):
            return out
        hint = "0" if isinstance(out, (tuple, list)) else (str(next(iter(out))) if isinstance(out, Mapping) and out else "<key>")
        raise ModelOutputError(f"{what} returns {_describe(out)}, not a logits tensor; set {how}: {hint} "
                               "(an index for a tuple, a key for a dict) to say which part holds the logits")
    try:
        if (isinstance(output, int) and isinstance(out, (tuple, list))) or isinstance(out, Mapping):
            picked = out[output]
        elif isinstance(output, str) and hasattr(out, output):
            picked = getattr(out, output)
        else:
            raise KeyError(output)
    except (KeyError, IndexError, TypeError):
        raise ModelOutputError(f"{what}: {how}: {output!r} is not in its output, {_describe(out)}") from None
    if not isinstance(picked, torch.Tensor):
        raise ModelOutputError(f"{what}: {how}: {output!r} picks {_describe(picked)}, not a logits tensor")
    return picked


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype | None]:
    """The device of the model's first parameter (or buffer) and its floating dtype
    (None when it has no floating parameter: quantized modules take float32)."""
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), None)
    return device, dtype


def to_model_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``x`` on the model's device; floating inputs in the model's floating dtype (int tokens stay ints)."""
    device, dtype = model_device_dtype(model)
    if dtype is not None and x.is_floating_point() and x.dtype != dtype:
        return x.to(device=device, dtype=dtype)
    return x.to(device)


def needs_adapter(model: nn.Module, output: int | str | None, example: torch.Tensor) -> bool:
    """Whether ``model`` must be wrapped in :class:`LogitsOf`: an output key is set, its weights are
    not float32, or its forward on ``example`` does not return a float32 tensor."""
    if output is not None:
        return True
    _, dtype = model_device_dtype(model)
    if dtype not in (None, torch.float32):
        return True
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(to_model_input(example, model))
    finally:
        model.train(was)
    return not (isinstance(out, torch.Tensor) and out.dtype == torch.float32)


class LogitsOf(nn.Module):
    """``model`` seen as a float32-in, float32-logits-out module (see the module docstring).

    ``forward(x)``: x [B, ...] (any device, float32 or ints) -> logits float32 on the model's device.
    ``model`` is a submodule, so ``.to``, ``.eval``, ``state_dict`` and pickling follow it.
    """

    def __init__(self, model: nn.Module, output: int | str | None = None, *, what: str = "the model", how: str = "output") -> None:
        super().__init__()
        self.model = model
        self.output = output
        self.what = what
        self.how = how

    def forward(self, x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        # ``rest``: further inputs of a model that takes several (a seq2seq model's decoder input).
        args = (to_model_input(x, self.model), *(to_model_input(r, self.model) for r in rest))
        out = select_output(self.model(*args), self.output, what=self.what, how=self.how)
        return out.float()

    def extra_repr(self) -> str:
        return f"output={self.output!r}"


def check_classes(logits: torch.Tensor, num_classes: int, *, what: str) -> None:
    """Raise :class:`ModelOutputError` unless the last dimension of ``logits`` is ``num_classes``."""
    if logits.dim() < 2 or logits.shape[-1] != num_classes:
        raise ModelOutputError(f"{what} outputs {tuple(logits.shape)} for a batch, but the data has {num_classes} classes "
                               f"(expected [batch, {num_classes}])")

