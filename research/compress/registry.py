"""Compression methods by name, and the ``compress:`` config union they make.

``@register_method`` adds a :class:`~research.compress.base.CompressionMethod`
subclass under its ``name``; the built-in methods register when
:mod:`research.compress.methods` is imported (importing :mod:`research.compress`
does that). A method registered later (a plug-in module) must be imported before
the first run config is validated, since the union is built then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Mapping, Union

from pydantic import Discriminator, Tag, ValidationError

from research.config import DEFAULT_METHOD, CompressConfig, ConfigError, MethodConfig, Strict, format_validation_error

if TYPE_CHECKING:
    from .base import CompressionMethod

METHODS: dict[str, type[CompressionMethod]] = {}


def register_method(cls: type[CompressionMethod]) -> type[CompressionMethod]:
    """Class decorator: register a compression method under ``cls.name``."""
    name = getattr(cls, "name", None)
    config = getattr(cls, "config", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__}: a compression method needs a name")
    if not (isinstance(config, type) and issubclass(config, MethodConfig)):
        raise TypeError(f"{cls.__name__}: config must be a MethodConfig subclass")
    if name in METHODS and METHODS[name] is not cls:
        raise ValueError(f"compression method {name!r} is already registered ({METHODS[name].__name__})")
    METHODS[name] = cls
    return cls


def _tag(value: Any) -> str | None:
    """The registered name of the method a raw mapping (or a config instance) is for."""
    if isinstance(value, MethodConfig):
        return next((n for n, c in METHODS.items() if c.config is type(value)), type(value).__name__)
    if not isinstance(value, Mapping):
        return None
    for name, cls in METHODS.items():
        if cls.config.claims(value):
            return name
    return str(value.get("method", DEFAULT_METHOD))  # no method claims it: pydantic reports the unknown tag


def config_union() -> Any:
    """The discriminated union of every registered method's config (a pydantic type)."""
    from . import methods  # noqa: F401 - registers the built-in methods

    members = tuple(Annotated[cls.config, Tag(name)] for name, cls in METHODS.items())
    return Annotated[Union[members], Discriminator(_tag)]  # noqa: UP007 - a runtime tuple of members


class CompressSection(Strict):
    """A lone ``compress:`` section, validated as in a run config (errors name ``compress.<key>``)."""

    compress: CompressConfig


def parse_compress_config(raw: Mapping[str, Any] | str) -> MethodConfig:
    """Validate a ``compress:`` mapping (e.g. from YAML; a bare method name means its defaults)
    into its method's config; a problem raises ``ConfigError`` naming the field (``compress.rank``)."""
    if isinstance(raw, str):
        raw = {"method": raw}
    try:
        return CompressSection.model_validate({"compress": dict(raw)}).compress
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, CompressSection)) from None


def compression_method(cfg: MethodConfig | Mapping[str, Any] | str) -> CompressionMethod:
    """The method instance for a config (or a raw mapping, or a method name with its defaults)."""
    if not isinstance(cfg, MethodConfig):
        cfg = parse_compress_config(cfg)
    name = _tag(cfg)
    if name not in METHODS:
        raise ValueError(f"{type(cfg).__name__} is not the config of a registered compression method")
    return METHODS[name](cfg)
