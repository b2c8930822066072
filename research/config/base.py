"""What every config shares: the strict base model, the one-line error, ``--set`` overrides,
reading YAML, turning pydantic's report into one line naming the field, flattening and hashing.

Nothing here knows a section of a run: :mod:`.run`, :mod:`.study` and :mod:`.compare`
build on it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A configuration problem, with a one-line message naming the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaggedUnion:
    """Base of an ``Annotated`` marker for a section validated by the class a tag picks (the
    ``compress:`` section: :data:`research.config.run.CompressConfig`). An error inside such
    a section carries the tag after the field (``compress.prune.rank``); :func:`format_validation_error`
    shows ``compress.rank`` and names the tag ("unknown key for method prune")."""

    def member(self, tag: str) -> type[BaseModel] | None:
        """The config class that ``tag`` picks (None if there is none)."""
        raise NotImplementedError


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists to dotted keys, e.g. ``teachers.0.model.name``."""
    out: dict[str, Any] = {}
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else None
    if items is None:
        return {prefix: d}
    if not d and prefix:
        return {prefix: d}
    for k, v in items:
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key))
    return out


def config_hash(obj: BaseModel | dict) -> str:
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (value parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. distill.temperature=8")
        key, _, text = item.partition("=")
        value = yaml.safe_load(text) if text.strip() else None
        parts = key.strip().split(".")
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(node, list):
                idx = _index(part, node, key)
                node = node[idx]
                continue
            if part not in node or node[part] is None:
                node[part] = [] if nxt.isdigit() else {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            idx = _index(last, node, key, allow_append=True)
            if idx == len(node):
                node.append(value)
            else:
                node[idx] = value
        else:
            node[last] = value
    return raw


def _index(part: str, node: list, key: str, allow_append: bool = False) -> int:
    if not part.isdigit() or int(part) > len(node) - (0 if allow_append else 1):
        raise ConfigError(f"--set {key}: {part!r} is not a valid index into a list of {len(node)}")
    return int(part)


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return raw


def parse(model: type[BaseModel], raw: dict[str, Any], source: str = "config"):
    """Validate ``raw`` into ``model``, turning pydantic's report into one line."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e, model)}") from None


def format_validation_error(e: ValidationError, model: type[BaseModel]) -> str:
    err = e.errors()[0]
    parts, _, tag = _walk(model, err["loc"])
    loc = ".".join(parts)
    if err["type"] == "unknown_compression_method":
        return f"{loc}.method: {err['msg']}"
    if err["type"] == "extra_forbidden":
        _, parent, _ = _walk(model, err["loc"][:-1])
        allowed = sorted(getattr(parent, "model_fields", {}))
        where = f" for method {tag}" if tag else ""
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"{loc}: unknown key{where}{hint}"
    msg = err["msg"]
    msg = msg.removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    more = f" [and {len(e.errors()) - 1} more problem(s)]" if len(e.errors()) > 1 else ""
    return f"{loc}: {msg}{shown}{more}" if loc else f"{msg}{more}"  # model-level checks name their field


def _walk(model: type[BaseModel], loc: tuple) -> tuple[list[str], Any, str | None]:
    """Follow an error location through the config classes: the parts worth showing (the method
    name that a ``compress:`` error carries, ``compress.prune.rank``, is not a key of the file),
    the config class reached, and that method name."""
    parts: list[str] = []
    current: Any = model
    tag = None
    for part in loc:
        if isinstance(part, int):
            parts.append(str(part))
            continue
        if isinstance(current, TaggedUnion):
            tag, current = part, current.member(part)
            continue
        field = getattr(current, "model_fields", {}).get(part)
        parts.append(str(part))
        current = _model_in(field.annotation, field.metadata) if field is not None else None
    return parts, current, tag


def _model_in(annotation: Any, metadata: list | tuple = ()) -> Any:
    """The config class (or union marker) inside ``annotation`` (``X | None``, ``list[X]``, ``Annotated``)."""
    for m in [*metadata, *getattr(annotation, "__metadata__", ())]:
        if isinstance(m, TaggedUnion):
            return m
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None
