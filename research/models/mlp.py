"""Fully connected models: generic ``mlp``, the MNIST-1D paper MLP and Hinton et al.'s MNIST MLPs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from research.models import register_model


def check_widths(name: str, widths: Any, what: str = "widths") -> list[int]:
    """Validate a non-empty list of positive ints (shared by the other model files)."""
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or not widths or not all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths
    ):
        raise ValueError(f"model {name!r}: {what} must be a non-empty list of positive ints, got {widths!r}")
    return list(widths)


def check_positive_int(name: str, value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"model {name!r}: {what} must be a positive int, got {value!r}")
    return value


def check_dropout(name: str, p: Any, what: str = "dropout") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"model {name!r}: {what} must be a float with 0 <= {what} < 1, got {p!r}")
    return float(p)


class MLP(nn.Module):
    """Flatten, then [Linear, ReLU, (Dropout)] per hidden width, then a Linear classifier."""

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        num_classes: int,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten(1)]
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        prev = in_features
        for w in widths:
            layers += [nn.Linear(prev, w), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = w
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _build(name: str, input_shape: tuple[int, ...], num_classes: int, widths: Any, dropout: Any,
           input_dropout: Any = 0.0) -> MLP:
    return MLP(
        in_features=math.prod(input_shape),  # any shape: MLPs flatten their input
        widths=check_widths(name, widths),
        num_classes=num_classes,
        dropout=check_dropout(name, dropout),
        input_dropout=check_dropout(name, input_dropout, "input_dropout"),
    )


@register_model("mlp")
def mlp(input_shape: tuple[int, ...], num_classes: int, widths: Sequence[int] = (100, 100),
        dropout: float = 0.0) -> MLP:
    return _build("mlp", input_shape, num_classes, widths, dropout)


@register_model("mnist1d_mlp")
def mnist1d_mlp(input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.0) -> MLP:
    # Greydanus & Kobak (2024): 40-100-100-10 ReLU MLP, 15,210 parameters.
    return _build("mnist1d_mlp", input_shape, num_classes, [100, 100], dropout)


@register_model("hinton_teacher")
def hinton_teacher(input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.5,
                   input_dropout: float = 0.2) -> MLP:
    # Hinton et al. (2015) MNIST teacher: 784-1200-1200-10, dropout on hidden (and input) units.
    return _build("hinton_teacher", input_shape, num_classes, [1200, 1200], dropout, input_dropout)


@register_model("hinton_student")
def hinton_student(input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.0) -> MLP:
    # Hinton et al. (2015) MNIST student: 784-800-800-10, no regularisation by default.
    return _build("hinton_student", input_shape, num_classes, [800, 800], dropout)
