"""Small CNNs: the MNIST-1D paper CNN and the classic PyTorch-example MNIST CNNs."""

from __future__ import annotations

from torch import Tensor, nn

from research.models import register_model
from research.models.mlp import check_dropout, check_positive_int


def _conv_out(length: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (length + 2 * padding - kernel) // stride + 1


# ---------------------------------------------------------------- MNIST-1D

_MNIST1D_CONVS = ((5, 2, 1), (3, 2, 1), (3, 2, 1))  # (kernel, stride, padding) per layer


class MNIST1DCNN(nn.Module):
    """Greydanus & Kobak (2024) CNN: 3 strided Conv1d+ReLU, flatten, Linear."""

    def __init__(self, length: int, num_classes: int, channels: int = 25) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch, out_len = 1, length
        for k, s, p in _MNIST1D_CONVS:
            layers += [nn.Conv1d(in_ch, channels, k, stride=s, padding=p), nn.ReLU()]
            in_ch, out_len = channels, _conv_out(out_len, k, s, p)
        layers += [nn.Flatten(1), nn.Linear(channels * out_len, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:  # [B, L] -> [B, 1, L]
            x = x.unsqueeze(1)
        return self.net(x)


@register_model("mnist1d_cnn")
def mnist1d_cnn(input_shape: tuple[int, ...], num_classes: int, channels: int = 25) -> MNIST1DCNN:
    # Accept (L,) or (1, L); L >= 3 keeps every conv output non-empty.
    if len(input_shape) == 2 and input_shape[0] == 1:
        input_shape = input_shape[1:]
    if len(input_shape) != 1 or input_shape[0] < 3:
        raise ValueError(
            f"model 'mnist1d_cnn' expects input_shape (L,) or (1, L) with L >= 3, "
            f"e.g. (40,); got {tuple(input_shape)}"
        )
    return MNIST1DCNN(input_shape[0], num_classes, check_positive_int("mnist1d_cnn", channels, "channels"))


# ---------------------------------------------------------------- MNIST 2-D


class MNISTCNN(nn.Module):
    """PyTorch-example MNIST CNN: [Conv5x5, (Dropout2d), MaxPool2, ReLU] x2, flatten, Linear."""

    def __init__(self, height: int, width: int, num_classes: int, c1: int, c2: int, dropout: float) -> None:
        super().__init__()
        h, w = (height - 4) // 2, (width - 4) // 2  # conv5 (valid) then pool2
        h, w = (h - 4) // 2, (w - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 5),
            # Dropout2d only when asked, so the student has no no-op layer.
            *([nn.Dropout2d(dropout)] if dropout > 0 else []),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(1),
        )
        self.fc = nn.Linear(c2 * h * w, num_classes)  # 28x28 input: c2 * 4 * 4

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:  # [B, H, W] -> [B, 1, H, W]
            x = x.unsqueeze(1)
        return self.fc(self.features(x))


def _mnist_hw(name: str, input_shape: tuple[int, ...]) -> tuple[int, int]:
    # Accept (1, H, W) or (H, W); H, W >= 16 so both conv5+pool2 stages keep >= 1 pixel.
    if len(input_shape) == 3 and input_shape[0] == 1:
        input_shape = input_shape[1:]
    if len(input_shape) != 2 or min(input_shape) < 16:
        raise ValueError(
            f"model {name!r} expects input_shape (1, H, W) or (H, W) with H, W >= 16, "
            f"e.g. (1, 28, 28); got {tuple(input_shape)}"
        )
    return input_shape[0], input_shape[1]


@register_model("mnist_cnn_teacher")
def mnist_cnn_teacher(input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.5) -> MNISTCNN:
    h, w = _mnist_hw("mnist_cnn_teacher", input_shape)
    return MNISTCNN(h, w, num_classes, 10, 20, check_dropout("mnist_cnn_teacher", dropout))


@register_model("mnist_cnn_student")
def mnist_cnn_student(input_shape: tuple[int, ...], num_classes: int, c1: int = 5, c2: int = 10) -> MNISTCNN:
    """The classic student (5 and 10 channels, 3,000 parameters); c1/c2 size it for a budget."""
    h, w = _mnist_hw("mnist_cnn_student", input_shape)
    return MNISTCNN(h, w, num_classes, check_positive_int("mnist_cnn_student", c1, "c1"),
                    check_positive_int("mnist_cnn_student", c2, "c2"), 0.0)
