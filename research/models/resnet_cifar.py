"""CIFAR ResNets (depth 6n+2, BasicBlock) as used by the CRD benchmark (Tian et al., ICLR 2020).

``resnet8x4`` / ``resnet32x4`` use widths [32, 64, 128, 256]: a 3x3 stem of 32
channels, then three stages of n BasicBlocks with 64/128/256 channels and
strides 1/2/2, global average pooling and a Linear classifier. Written from the
paper's description; a 1x1 conv + BN shortcut is used wherever shape changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from research.models import register_model
from research.models.mlp import check_positive_int, check_widths

_STAGE_STRIDES = (1, 2, 2)
_X4_WIDTHS = (32, 64, 128, 256)


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, widths: Sequence[int], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        n = (depth - 2) // 6
        stem, *stages = widths
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        in_ch = stem
        for out_ch, stride in zip(stages, _STAGE_STRIDES):
            for i in range(n):
                blocks.append(BasicBlock(in_ch, out_ch, stride if i == 0 else 1))
                in_ch = out_ch
        self.layers = nn.Sequential(*blocks)
        # Adaptive pooling (CRD uses AvgPool2d(8)): identical on 32x32, also works on other sizes.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))))


def _build(name: str, input_shape: tuple[int, ...], num_classes: int, depth: object,
           widths: object) -> CifarResNet:
    if len(input_shape) != 3:
        raise ValueError(
            f"model {name!r} expects input_shape (C, H, W), e.g. (3, 32, 32); got {tuple(input_shape)}"
        )
    depth = check_positive_int(name, depth, "depth")
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"model {name!r}: depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
    widths = check_widths(name, widths)
    if len(widths) != 1 + len(_STAGE_STRIDES):
        raise ValueError(
            f"model {name!r}: widths must be [stem, stage1, stage2, stage3] (4 ints), got {widths!r}"
        )
    return CifarResNet(depth, widths, num_classes, in_channels=input_shape[0])


@register_model("cifar_resnet")
def cifar_resnet(input_shape: tuple[int, ...], num_classes: int, depth: int = 8,
                 widths: Sequence[int] = _X4_WIDTHS) -> CifarResNet:
    return _build("cifar_resnet", input_shape, num_classes, depth, widths)


@register_model("resnet8x4")
def resnet8x4(input_shape: tuple[int, ...], num_classes: int) -> CifarResNet:
    return _build("resnet8x4", input_shape, num_classes, 8, _X4_WIDTHS)


@register_model("resnet32x4")
def resnet32x4(input_shape: tuple[int, ...], num_classes: int) -> CifarResNet:
    return _build("resnet32x4", input_shape, num_classes, 32, _X4_WIDTHS)
