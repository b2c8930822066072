"""One training loop for every method: a learner, a split, a TrainConfig, callbacks.

A *learner* (:class:`Learner`: ``research.distill.Supervised`` or
``Distiller``) is what the loop drives; its *task* (``research.tasks``) says
how a model is called on a batch and how it is validated. Batches are drawn by
index from in-memory tensors (all the workbench's datasets fit), which keeps
the loop within a few percent of a hand-written one and lets a distiller look
cached teacher logits up by sample index. Each step gets the training
:class:`~research.distill.objectives.Progress` (epoch, global step, totals).
Each epoch ends with the learner's own per-epoch values (an objective's
learned temperature, say), the task's validation metrics (``val_<name>``) and
a call of every callback: that is where Optuna pruning and MLflow metrics hang
(neither is imported here).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .config import TrainConfig
from .data import Split
from .distill.distiller import StepOutput
from .distill.objectives import Progress
from .tasks import Task

EpochCallback = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (diverged)."""


class Learner(Protocol):
    """What the loop drives (see ``research.distill.distiller``)."""

    model: nn.Module  # what is validated, evaluated and saved
    task: Task

    def param_groups(self) -> list[dict[str, Any]]: ...  # torch optimizer groups; options override TrainConfig's
    def train(self, mode: bool = True) -> "Learner": ...
    def to(self, device: torch.device | str) -> "Learner": ...
    def epoch_values(self) -> dict[str, float]: ...
    def training_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None,
                      progress: Progress | None = None) -> StepOutput: ...


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    wall_time_s: float = 0.0

    @property
    def last(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this set before its first deterministic call on CUDA.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg``'s optimizer over parameters, or over parameter groups (dicts with ``params`` and
    options that override ``cfg``'s, e.g. an objective's ``weight_decay: 0``). Parameters that
    do not require gradients are left out; groups left empty are dropped."""
    items = list(params)
    groups = items if items and isinstance(items[0], dict) else [{"params": items}]
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    groups = [g for g in groups if g["params"]] or [{"params": []}]  # all empty: torch's own error
    # torch's fused kernels (one pass per parameter instead of ~10 operations) where they exist: the same
    # update rule, and on these small models the step's optimizer share fell (benchmarks/step_time.py)
    fused = all(p.device.type in FUSED_DEVICES and p.dtype in (torch.float32, torch.float64)
                for g in groups for p in g["params"]) and bool(groups[0]["params"])
    opts = {"fused": True} if fused else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay, **opts)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **opts)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **opts)


FUSED_DEVICES = ("cpu", "cuda")  # where torch.optim's fused=True runs (torch 2.4 and later)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per epoch."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.gamma)
    return None


def train_step(learner: Learner, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None,
               progress: Progress | None = None) -> StepOutput:
    out = learner.training_step(x, y, idx, progress)
    optimizer.zero_grad(set_to_none=True)
    out.losses["loss"].backward()
    optimizer.step()
    return out


def fit(
    learner: Learner,
    train: Split,
    cfg: TrainConfig,
    *,
    seed: int,
    val: Split | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    callbacks: Iterable[EpochCallback] = (),
    progress: bool = True,
    desc: str = "train",
) -> History:
    """Train ``learner`` on ``train`` for ``cfg.epochs``; its task's validation metrics each epoch.

    Raises :class:`NonFiniteLossError` when the loss diverges; any exception
    raised by a callback (an Optuna prune, say) stops training and propagates.
    """
    seed_everything(seed, cfg.deterministic)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    learner.to(device)
    task = learner.task
    x_all, y_all = train.x.to(device), train.y.to(device)
    optimizer = make_optimizer(learner.param_groups(), cfg)
    scheduler = make_scheduler(optimizer, cfg)
    gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator(device=device).manual_seed(seed + 1)
    n = len(train)
    steps = (n + cfg.batch_size - 1) // cfg.batch_size
    history = History()
    start = time.perf_counter()
    bar = tqdm(total=cfg.epochs * steps, desc=desc, disable=not progress, leave=False, unit="step", dynamic_ncols=True)
    try:
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            learner.train(True)
            sums: dict[str, float] = {}
            order = torch.randperm(n, generator=gen).to(device)
            for i in range(0, n, cfg.batch_size):
                progress_now = Progress(epoch=epoch, epochs=cfg.epochs, step=(epoch - 1) * steps + i // cfg.batch_size + 1,
                                        steps_per_epoch=steps)
                idx = order[i : i + cfg.batch_size]
                x, y = x_all[idx], y_all[idx]
                if augment is not None:
                    x = augment(x, aug_gen)
                    idx_for_cache = None  # augmented inputs: teacher logits must be recomputed
                else:
                    idx_for_cache = idx
                out = train_step(learner, optimizer, x, y, idx_for_cache, progress_now)
                values = {k: v.detach().item() for k, v in out.losses.items()}
                if not math.isfinite(values["loss"]):
                    raise NonFiniteLossError(f"training loss became {values['loss']} at epoch {epoch}, step {i // cfg.batch_size + 1}")
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
                bar.update(1)
            lr = optimizer.param_groups[0]["lr"]
            if scheduler is not None:
                scheduler.step()
            metrics = {f"train_{k}": v / n for k, v in sums.items()}
            metrics["lr"] = lr
            metrics["epoch_time_s"] = time.perf_counter() - t0
            metrics.update(learner.epoch_values())
            if val is not None and len(val):
                learner.train(False)
                vm = task.epoch_metrics(learner.model, val.x, val.y, device=device)
                metrics.update({f"val_{k}": v for k, v in vm.items()})
                key = task.validation_metric
                bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", **{f"val_{key}": f"{vm[key]:.3f}"})
            history.epochs.append(metrics)
            for cb in callbacks:
                cb(epoch, metrics)
    finally:
        bar.close()
        learner.train(False)
        history.wall_time_s = time.perf_counter() - start
    return history
