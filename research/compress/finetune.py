"""Fine-tuning: after pruning or factorisation, and the transfer baseline (pretrain, then fine-tune).

Every fine-tuning goes through ``research.train.fit`` on the training split,
validated on the validation split (the test split is never seen), with
``Supervised`` -- or, when teachers are given, the Distiller that
``research.distill.build_distiller`` makes from the run's ``DistillConfig``
(all the teachers, their weights, the combine mode, the objective and the
teacher-logit cache), so that "distil then prune" fine-tunes by the same
distillation that made the student.

The transfer baseline pretrains the student on a *source* task and then
fine-tunes all of it on the real one:

* ``mnist1d_seed``: MNIST-1D generated with another seed (new samples of the
  same classes and transformations), standardised with the real task's
  statistics;
* ``label_subset``: the real training split restricted to the classes
  ``0 .. k-1`` (the classifier keeps all its outputs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from research.config import DistillConfig, TrainConfig
from research.data import DataBundle, Split
from research.distill import Supervised, TeacherLogitCache, build_distiller
from research.train import History, fit


def finetune_config(base: TrainConfig | None, *, epochs: int, lr: float | None = None) -> TrainConfig:
    """``base`` (or the default TrainConfig) with ``epochs`` and, when given, ``lr``."""
    base = base or TrainConfig()
    return TrainConfig.model_validate({**base.model_dump(), "epochs": epochs, "lr": base.lr if lr is None else lr})


def finetune(
    model: nn.Module,
    data: DataBundle,
    cfg: TrainConfig,
    *,
    seed: int,
    teachers: Sequence[nn.Module] = (),
    distill: DistillConfig | None = None,
    train: Split | None = None,
    cache: TeacherLogitCache | None = None,
    progress: bool = False,
    desc: str = "finetune",
) -> History:
    """Train ``model`` in place on ``train`` (default: the training split) for ``cfg.epochs``:
    on the labels, or distilled from ``teachers`` (frozen) by ``build_distiller`` with ``distill``
    (default DistillConfig()). With ``distill.cache_teacher_logits`` and no augmentation the
    teachers' logits come from ``cache`` (default: a fresh in-memory one)."""
    split = train or data.train
    if teachers:
        d = distill or DistillConfig()
        cached = None
        if d.cache_teacher_logits and data.augment is None:
            cache = cache if cache is not None else TeacherLogitCache()
            fp = split.fingerprint()
            cached = [cache.logits(t, split.x, fp) for t in teachers]
        learner = build_distiller(model, teachers, d, cached_logits=cached)
    else:
        learner = Supervised(model)
    return fit(learner, split, cfg, seed=seed, val=data.val, augment=data.augment, progress=progress, desc=desc)


def finetuner(
    data: DataBundle,
    base: TrainConfig | None,
    *,
    lr: float | None,
    seed: int,
    teachers: Sequence[nn.Module] = (),
    distill: DistillConfig | None = None,
    progress: bool = False,
    desc: str = "finetune",
) -> Callable[[nn.Module, int], History]:
    """A ``finetune(model, epochs)`` callback for the pruning schedules; round k uses seed + k.
    The rounds share one in-memory teacher-logit cache (the teachers do not change)."""
    rounds = [0]
    cache = TeacherLogitCache()

    def run(model: nn.Module, epochs: int) -> History:
        cfg = finetune_config(base, epochs=epochs, lr=lr)
        rounds[0] += 1
        return finetune(model, data, cfg, seed=seed + rounds[0] - 1, teachers=teachers, distill=distill, cache=cache,
                        progress=progress, desc=f"{desc} {rounds[0]}")

    return run


# ---------------------------------------------------------------- source tasks


def mnist1d_source(cache_dir: str | Path, *, seed: int, num_samples: int = 4000, val_fraction: float = 0.1,
                   split_seed: int = 0) -> DataBundle:
    """Labelled MNIST-1D generated with ``seed`` (not 42, the real task's), standardised with the
    real task's mean and std; its ``test`` is its validation split (no real test data is used)."""
    from research.data import mnist1d as m1d
    from research.data import split_validation

    args = m1d.default_args()
    if seed == args["seed"]:
        raise ValueError(f"the source seed must differ from MNIST-1D's own generation seed {args['seed']}")
    n = -(-num_samples // m1d.NUM_CLASSES) * m1d.NUM_CLASSES
    args.update(num_samples=n, train_split=1.0, seed=seed)
    raw, y = m1d.generate_raw(args)
    stats = m1d.load_mnist1d(cache_dir)
    x = ((raw[:num_samples] - float(stats["mean"])) / float(stats["std"])).astype(np.float32)
    full = Split(torch.from_numpy(x), torch.from_numpy(y[:num_samples]).long())
    train, val = split_validation(full, val_fraction, split_seed)
    return DataBundle(name=f"mnist1d_seed{seed}", train=train, val=val, test=val, transfer=None,
                      num_classes=m1d.NUM_CLASSES, input_shape=tuple(full.x.shape[1:]), augment=None)


def label_subset_source(data: DataBundle, classes: int) -> DataBundle:
    """``data`` restricted to labels ``0 .. classes-1`` (train and validation splits)."""
    if not 2 <= classes < data.num_classes:
        raise ValueError(f"source_classes must be in [2, {data.num_classes - 1}] for {data.name}, got {classes}")

    def keep(s: Split) -> Split:
        return s.subset(torch.nonzero(s.y < classes).reshape(-1))

    val = keep(data.val)
    return DataBundle(name=f"{data.name}_classes<{classes}", train=keep(data.train), val=val, test=val,
                      transfer=None, num_classes=data.num_classes, input_shape=data.input_shape, augment=data.augment)


def pretrain_then_finetune(
    model: nn.Module,
    source: DataBundle,
    target: DataBundle,
    *,
    pretrain_cfg: TrainConfig,
    finetune_cfg: TrainConfig,
    seed: int,
    teachers: Sequence[nn.Module] = (),
    distill: DistillConfig | None = None,
    progress: bool = False,
) -> tuple[History, History]:
    """Train ``model`` (in place) on ``source`` with the labels, then all of it on ``target``
    (distilled from ``teachers`` with ``distill`` when given)."""
    if source.input_shape != target.input_shape:
        raise ValueError(f"source inputs {source.input_shape} and target inputs {target.input_shape} differ")
    pre = finetune(model, source, pretrain_cfg, seed=seed, progress=progress, desc="pretrain")
    post = finetune(model, target, finetune_cfg, seed=seed + 1, teachers=teachers, distill=distill,
                    progress=progress, desc="finetune")
    return pre, post
