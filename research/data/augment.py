"""Training-time augmentation applied to a whole batch of image tensors at once.

Each augmentation draws its randomness from an explicit ``torch.Generator`` so a
run is reproducible from its seed, and works on the batch's device without a
Python loop over samples (one gather per batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class BatchAugment:
    """Callable ``(x [B, C, H, W], generator) -> augmented x`` (same shape and device)."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


def _randint(generator: torch.Generator, high: int, n: int, device: torch.device) -> torch.Tensor:
    # Draw on the generator's own device (a CPU generator cannot fill a CUDA tensor), then move.
    return torch.randint(0, high, (n,), generator=generator, device=generator.device).to(device)


def _crop(padded: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: int, w: int,
          flip: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample h x w window of ``padded`` [B, C, H', W'] at (top[b], left[b]), optionally mirrored."""
    rows = top[:, None] + torch.arange(h, device=padded.device)            # [B, h]
    cols = torch.arange(w, device=padded.device).expand(len(left), w)      # [B, w]
    if flip is not None:
        cols = torch.where(flip[:, None], (w - 1) - cols, cols)
    cols = left[:, None] + cols
    batch = torch.arange(len(top), device=padded.device)[:, None, None]
    # Channels last so the advanced indices are adjacent: result [B, h, w, C].
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def _check_batch(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a batch [B, C, H, W], got shape {tuple(x.shape)}")


@dataclass(frozen=True)
class RandomShift(BatchAugment):
    """Shift each image by its own integer (dx, dy) in [-max_shift, max_shift]^2, zero fill.

    The input jitter of Hinton, Vinyals & Dean (2015) for MNIST (up to 2 pixels in any direction).
    """

    max_shift: int = 2

    def __post_init__(self) -> None:
        if self.max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {self.max_shift}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_batch(x)
        s, (b, _, h, w) = self.max_shift, x.shape
        if s == 0 or b == 0:
            return x.clone()
        padded = torch.nn.functional.pad(x, (s, s, s, s))
        # Window start t in [0, 2s] of the padded image means a shift of s - t pixels.
        top = _randint(generator, 2 * s + 1, b, x.device)
        left = _randint(generator, 2 * s + 1, b, x.device)
        return _crop(padded, top, left, h, w)


@dataclass(frozen=True)
class RandomCropFlip(BatchAugment):
    """Random crop after ``pad`` pixels of zero padding, then a horizontal flip with p=0.5 (CIFAR standard)."""

    pad: int = 4

    def __post_init__(self) -> None:
        if self.pad < 0:
            raise ValueError(f"pad must be >= 0, got {self.pad}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_batch(x)
        p, (b, _, h, w) = self.pad, x.shape
        if b == 0:
            return x.clone()
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        top = _randint(generator, 2 * p + 1, b, x.device)
        left = _randint(generator, 2 * p + 1, b, x.device)
        flip = _randint(generator, 2, b, x.device).bool()
        return _crop(padded, top, left, h, w, flip)
