"""Model architectures, looked up by name.

    from research.models import build_model, available_models
    model = build_model("mlp", input_shape=(40,), num_classes=10, widths=[64, 64])

A factory is ``fn(input_shape, num_classes, **size_kwargs) -> nn.Module``,
registered with ``@register_model("name")``. Its keyword parameters are the
accepted size arguments: ``validate_model_args`` reads them with
``inspect.signature`` so configs can be checked before anything is built.
Factories raise ``ValueError`` for bad values or an input shape they cannot take.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

__all__ = [
    "available_models",
    "build_model",
    "count_parameters",
    "register_model",
    "validate_model_args",
]

Factory = Callable[..., nn.Module]

_REGISTRY: dict[str, Factory] = {}
# Parameters every factory gets from build_model itself, not from user kwargs.
_FIXED_PARAMS = ("input_shape", "num_classes")


def register_model(name: str) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory(input_shape, num_classes, **kwargs)`` as ``name``."""

    def decorator(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        params = inspect.signature(factory).parameters
        missing = [p for p in _FIXED_PARAMS if p not in params]
        if missing:
            raise ValueError(
                f"factory for model {name!r} must accept {', '.join(_FIXED_PARAMS)}; "
                f"missing: {', '.join(missing)}"
            )
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_models() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def _factory(name: str) -> Factory:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):  # TypeError: unhashable name from a bad config
        raise ValueError(
            f"unknown model {name!r}; available: {', '.join(available_models())}"
        ) from None


def _size_params(factory: Factory) -> tuple[list[inspect.Parameter], bool]:
    """The factory's size parameters, and whether it takes arbitrary ``**kwargs``."""
    params = [p for p in inspect.signature(factory).parameters.values() if p.name not in _FIXED_PARAMS]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named, var_kw


def validate_model_args(name: str, kwargs: Mapping[str, Any] | None) -> None:
    """Check the model name and kwarg names without building anything.

    Raises ValueError naming the offender and listing the accepted options.
    Values are checked only when the model is built.
    """
    factory = _factory(name)
    kwargs = dict(kwargs or {})
    named, var_kw = _size_params(factory)
    accepted = [p.name for p in named]
    accepted_txt = ", ".join(accepted) if accepted else "(none)"
    unexpected = [k for k in kwargs if k not in accepted]
    if unexpected and not var_kw:
        noun = "argument" if len(unexpected) == 1 else "arguments"
        raise ValueError(
            f"model {name!r} got unexpected {noun} {', '.join(map(repr, unexpected))}; "
            f"accepted: {accepted_txt}"
        )
    required = [p.name for p in named if p.default is p.empty and p.name not in kwargs]
    if required:
        raise ValueError(
            f"model {name!r} missing required argument(s) {', '.join(map(repr, required))}; "
            f"accepted: {accepted_txt}"
        )


def _check_shape(name: str, input_shape: Any) -> tuple[int, ...]:
    # Configs arrive from YAML/JSON as lists; normalise to a tuple of positive ints.
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(
            f"model {name!r}: input_shape must be a non-empty sequence of positive ints "
            f"(without the batch dim), got {input_shape!r}"
        )
    return shape


def build_model(name: str, *, input_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build model ``name`` for inputs ``[B, *input_shape]`` returning logits ``[B, num_classes]``."""
    validate_model_args(name, kwargs)
    shape = _check_shape(name, input_shape)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"model {name!r}: num_classes must be a positive int, got {num_classes!r}")
    return _REGISTRY[name](shape, num_classes, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


# Imported last: these modules register their factories via register_model above.
from research.models import cnn, mlp, resnet_cifar, seq2seq  # noqa: E402,F401
