"""The shape of a compression method: a class with its own config, registered by name.

A method (one module in :mod:`research.compress.methods`) is

    class MyConfig(MethodConfig):                 # its knobs, validated from the compress: section
        method: Literal["mine"] = "mine"
        strength: float = Field(0.5, gt=0, lt=1)

    @register_method
    class Mine(CompressionMethod):
        name = "mine"                             # compress: {method: mine, ...}
        config = MyConfig

        def apply(self, model, ctx):              # model: a private copy, free to change
            ...
            return self.measured(model, ctx, extra={...})

and says, besides how to apply it: its ``label`` (the ``method`` tag of its
runs, one series per label in reports), how a budget ("N x fewer parameters")
maps to its knobs (``at_budget``) and its deployable ``file_format`` (how the
file is written, sized and reloaded). Everything else (the ``compress:``
config union, ``research compress``, comparisons, studies over its knobs,
tracking, the contract tests in ``tests/test_compress_contract.py``) asks the
class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pydantic import Field
from torch import nn

from research.config import MethodConfig
from research.evaluate import count_flops, count_parameters

from .storage import TORCH, FileFormat

if TYPE_CHECKING:
    from research.config import DistillConfig, TrainConfig
    from research.data import DataBundle
    from research.train import History


class FinetuneKnobs(MethodConfig):
    """Knobs of the methods that fine-tune after compressing (prune, low rank) or to transfer."""

    finetune_epochs: int = Field(0, ge=0)  # 0: no fine-tuning
    finetune_lr: float | None = Field(None, gt=0)  # None: the TrainConfig's lr


@dataclass(frozen=True)
class CompressContext:
    """What a method may use besides the model: the data, the seed and the fine-tuning setup.

    ``finetune_cfg`` (default ``TrainConfig()``) trains on ``data.train``, validated on
    ``data.val``; with ``teachers`` fine-tuning distils from all of them as ``distill``
    says (``research.distill.build_distiller``: objective, weights, combine, logit cache). ``threads``: intra-op threads of runtime-backed results (ONNX Runtime,
    ExecuTorch). ``cache_dir``: where MNIST-1D's cached arrays live.
    ``was_training``: the input model's mode, given back to torch results.
    """

    data: DataBundle
    seed: int
    finetune_cfg: TrainConfig | None = None
    teachers: Sequence[nn.Module] = ()
    distill: DistillConfig | None = None
    cache_dir: Path = Path(".cache")
    threads: int = 1
    progress: bool = False
    was_training: bool = False

    def finetuner(self, lr: float | None) -> Callable[[nn.Module, int], History]:
        """A ``finetune(model, epochs)`` callback (see :func:`research.compress.finetune.finetuner`)."""
        from .finetune import finetuner

        return finetuner(self.data, self.finetune_cfg, lr=lr, seed=self.seed, teachers=self.teachers, distill=self.distill,
                         progress=self.progress)


@dataclass
class CompressedModel:
    """A compressed model and what it costs to deploy.

    ``model`` runs under ``research.evaluate.predict`` (a ``RuntimeModule`` for the
    ONNX Runtime and ExecuTorch forms). ``size_bytes`` is the size of its
    deployable file (``format``) as really written; ``save(path)`` writes that
    same file and ``format.load(path)`` reads it back. ``payload_bytes`` is what
    that file holds without its container: each tensor at its stored precision,
    sparse tensors as values + indices (``FileFormat.payload_bytes``). ``params``/``params_nonzero``/
    ``flops`` are those of the network it computes (for int8 and runtime forms: of
    the float network that was converted).
    """

    model: nn.Module
    method: str  # the registered name of the method that made it
    format: FileFormat
    size_bytes: int
    params: int
    params_nonzero: int
    flops: int
    extra: dict[str, float] = field(default_factory=dict)  # numbers worth logging as metrics
    tags: dict[str, str] = field(default_factory=dict)  # words worth logging as tags (backend, exporter, ...)
    payload_bytes: int | None = None  # None: not measured (a CompressedModel built by hand)

    @property
    def fmt(self) -> str:
        """The format's name (torch, compact, onnx, state_dict, pte), logged as the ``format`` tag."""
        return self.format.name

    def save(self, path: str | Path) -> int:
        """Write the deployable file to ``path``; returns the bytes written."""
        return self.format.save(self.model, path)


class CompressionMethod:
    """One compression baseline; an instance holds its validated config (``self.cfg``)."""

    name: ClassVar[str]  # the registry key: compress: {method: <name>}
    config: ClassVar[type[MethodConfig]]
    file_format: FileFormat = TORCH  # a property where the format depends on the knobs

    def __init__(self, cfg: MethodConfig | None = None) -> None:
        cfg = self.config() if cfg is None else cfg
        if not isinstance(cfg, self.config):
            raise TypeError(f"{type(self).__name__} takes a {self.config.__name__}, not {type(cfg).__name__}")
        self.cfg = cfg

    def apply(self, model: nn.Module, ctx: CompressContext) -> CompressedModel:
        """Compress ``model`` (a private copy: change it freely) and measure the result."""
        raise NotImplementedError

    def label(self) -> str:
        """What its runs are called (their ``method`` tag), e.g. ``prune_structured_iterative``."""
        return self.name

    def at_budget(self, budget: float) -> MethodConfig:
        """The config whose knobs meet ``budget`` (x fewer parameters than the input model);
        methods without such a knob (int8, export) keep theirs."""
        return self.cfg

    def with_knobs(self, **knobs: Any) -> MethodConfig:
        """``self.cfg`` with ``knobs`` changed, validated again."""
        return type(self.cfg).model_validate({**self.cfg.model_dump(), **knobs})

    def measured(self, model: nn.Module, ctx: CompressContext, *, reference: nn.Module | None = None,
                 extra: dict[str, float] | None = None, tags: dict[str, str] | None = None,
                 payload_bytes: int | None = None) -> CompressedModel:
        """The :class:`CompressedModel` of a finished ``model`` in this method's file format.

        ``reference``: the float torch network that ``model`` computes when it is an int8
        or runtime form (its parameters and FLOPs are reported). A torch result
        (``reference`` None) goes back to the CPU, in the input model's train/eval mode.
        ``payload_bytes``: given by formats whose file cannot be read back into tensors here
        (ExecuTorch), else measured by the format (``FileFormat.payload_bytes``).
        """
        if reference is None:
            model = model.cpu().train(ctx.was_training)
        net = reference if reference is not None else model
        fmt = self.file_format
        return CompressedModel(
            model=model, method=self.name, format=fmt, size_bytes=fmt.size_bytes(model),
            params=count_parameters(net), params_nonzero=count_parameters(net, nonzero=True),
            flops=count_flops(net, ctx.data.input_shape), extra=dict(extra or {}),
            tags={"method": self.name, **(tags or {})},
            payload_bytes=fmt.payload_bytes(model) if payload_bytes is None else payload_bytes,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg!r})"
