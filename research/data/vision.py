"""torchvision image datasets (MNIST, FashionMNIST, CIFAR-10/100) as normalised in-memory tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class DataNotFoundError(FileNotFoundError):
    """Raw dataset files are missing and cannot be downloaded; the message is one line saying where."""


@dataclass(frozen=True)
class VisionSpec:
    tv_class: str                  # class name in torchvision.datasets
    folder: str                    # folder under root that torchvision reads the raw files from
    files: tuple[str, ...]         # the files torchvision opens there
    mean: tuple[float, ...]        # per-channel normalisation (training-set statistics)
    std: tuple[float, ...]
    num_classes: int
    input_shape: tuple[int, ...]


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# File names as torchvision 0.29 expects them (MNIST.resources minus ".gz", CIFAR train/test lists
# plus the meta file); tests/test_data.py checks them against the installed torchvision.
VISION_SPECS: dict[str, VisionSpec] = {
    "mnist": VisionSpec("MNIST", "MNIST/raw", _MNIST_FILES, (0.1307,), (0.3081,), 10, (1, 28, 28)),
    "fashion_mnist": VisionSpec("FashionMNIST", "FashionMNIST/raw", _MNIST_FILES,
                                (0.2860,), (0.3530,), 10, (1, 28, 28)),
    "cifar10": VisionSpec("CIFAR10", "cifar-10-batches-py",
                          tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
                          (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10, (3, 32, 32)),
    "cifar100": VisionSpec("CIFAR100", "cifar-100-python", ("train", "test", "meta"),
                           (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100, (3, 32, 32)),
}


def check_vision_files(name: str, root: str | Path) -> None:
    """Raise DataNotFoundError naming the missing raw files; only looks, never creates anything."""
    spec = VISION_SPECS[name]
    folder = Path(root).expanduser().absolute() / spec.folder
    missing = [f for f in spec.files if not (folder / f).is_file()]
    if missing:
        raise DataNotFoundError(
            f"{spec.tv_class} files missing in {folder}: {', '.join(missing)}; "
            "put them there or set download: true with a network"
        )


def _to_tensor(data: torch.Tensor | np.ndarray, spec: VisionSpec) -> torch.Tensor:
    """uint8 images ([N, H, W] or [N, H, W, C]) -> normalised float32 [N, C, H, W]."""
    x = torch.as_tensor(data)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    x = x.to(torch.float32).div_(255.0)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std).contiguous()


def load_vision(name: str, root: str | Path, download: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test) of a torchvision dataset, inputs normalised per channel."""
    import torchvision.datasets  # imported here: it takes seconds and only image datasets need it

    spec = VISION_SPECS[name]
    if not download:  # our one-line message instead of torchvision's "Dataset not found"
        check_vision_files(name, root)
    cls = getattr(torchvision.datasets, spec.tv_class)
    out: list[torch.Tensor] = []
    for train in (True, False):
        ds = cls(str(root), train=train, download=download)
        out += [_to_tensor(ds.data, spec), torch.as_tensor(ds.targets, dtype=torch.int64)]
    return out[0], out[1], out[2], out[3]
