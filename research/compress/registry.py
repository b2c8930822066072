"""Compression methods by name, and the ``compress:`` config union they make.

``@register_method`` adds a :class:`~research.compress.base.CompressionMethod`
subclass under its ``name``; the built-in methods register when
:mod:`research.compress.methods` is imported (importing :mod:`research.compress`
does that). A ``compress:`` section is validated by the config class of the
method that claims it (``MethodConfig.claims``: its ``method`` by default),
looked up at validation time, so a method registered later (a plug-in
module) is known from then on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

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
        return next((n for n, c in METHODS.items() if c.config is type(value)), None)
    for name, cls in METHODS.items():
        if cls.config.claims(value):
            return name
    return None


def validate_method_config(value: Any) -> MethodConfig:
    """A ``compress:`` section (a mapping, a method's config, or a bare method name) validated by
    the config class of the registered method that claims it. Raises pydantic's
    ``ValidationError`` with the method's name first in each location (``prune.rank``), or an
    ``unknown_compression_method`` error."""
    if isinstance(value, str):
        value = {"method": value}
    if isinstance(value, MethodConfig):
        if _tag(value) is None:
            raise PydanticCustomError("unknown_compression_method", "{cls} is not the config of a registered method; choose one of {choices}",
                                      {"cls": type(value).__name__, "choices": ", ".join(METHODS)})
        return value
    if not isinstance(value, Mapping):
        raise PydanticCustomError("compress_section", "expected a mapping of a method and its knobs, or a method name")
    tag = _tag(value)
    if tag is None:
        raise PydanticCustomError("unknown_compression_method", "unknown compression method '{tag}'; choose one of {choices}",
                                  {"tag": str(value.get("method", DEFAULT_METHOD)), "choices": ", ".join(METHODS)})
    try:
        return METHODS[tag].config.model_validate(dict(value))
    except ValidationError as e:  # re-raised with the method's name in each location, for the error message
        details = [{"type": d["type"], "loc": (tag, *d["loc"]), "input": d["input"], **({"ctx": d["ctx"]} if "ctx" in d else {})}
                   for d in e.errors(include_url=False)]
        raise ValidationError.from_exception_data(e.title, details) from None


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
