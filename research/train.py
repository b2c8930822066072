"""One training loop for every method: a task, a split, a TrainConfig, callbacks.

Batches are drawn by index from in-memory tensors (all the workbench's
datasets fit), which keeps the loop within a few percent of a hand-written
one and lets a distiller look cached teacher logits up by sample index.
Each epoch ends with the validation metrics and a call of every callback:
that is where Optuna pruning and MLflow metrics hang (neither is imported
here).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .config import TrainConfig
from .data import Split
from .distill.distiller import StepOutput
from .evaluate import predict, classification_metrics

EpochCallback = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (diverged)."""


class Task(Protocol):
    model: nn.Module

    def parameters(self) -> Iterable[nn.Parameter]: ...
    def train(self, mode: bool = True) -> "Task": ...
    def to(self, device: torch.device | str) -> "Task": ...
    def training_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None) -> StepOutput: ...


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


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per epoch."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    return None


def train_step(task: Task, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None) -> StepOutput:
    out = task.training_step(x, y, idx)
    optimizer.zero_grad(set_to_none=True)
    out.losses["loss"].backward()
    optimizer.step()
    return out


def fit(
    task: Task,
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
    """Train ``task`` on ``train`` for ``cfg.epochs``; validation metrics each epoch.

    Raises :class:`NonFiniteLossError` when the loss diverges; any exception
    raised by a callback (an Optuna prune, say) stops training and propagates.
    """
    seed_everything(seed, cfg.deterministic)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    task.to(device)
    x_all, y_all = train.x.to(device), train.y.to(device)
    optimizer = make_optimizer(task.parameters(), cfg)
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
            task.train(True)
            sums: dict[str, float] = {}
            order = torch.randperm(n, generator=gen).to(device)
            for i in range(0, n, cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                x, y = x_all[idx], y_all[idx]
                if augment is not None:
                    x = augment(x, aug_gen)
                    idx_for_cache = None  # augmented inputs: teacher logits must be recomputed
                else:
                    idx_for_cache = idx
                out = train_step(task, optimizer, x, y, idx_for_cache)
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
            if val is not None and len(val):
                task.train(False)
                logits = predict(task.model, val.x, device=device)
                vm = classification_metrics(logits, val.y)
                metrics.update({"val_accuracy": vm["accuracy"], "val_nll": vm["nll"]})
                bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", val_acc=f"{vm['accuracy']:.3f}")
            history.epochs.append(metrics)
            for cb in callbacks:
                cb(epoch, metrics)
    finally:
        bar.close()
        task.train(False)
        history.wall_time_s = time.perf_counter() - start
    return history
