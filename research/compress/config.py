"""The searchable knobs of a compression baseline.

The class lives in :mod:`research.config` with every other config (a run
config holds one under ``compress:``); this module keeps the names the
compression code uses.
"""

from __future__ import annotations

from typing import Any

from research.config import METHODS, CompressConfig, parse

__all__ = ["METHODS", "CompressConfig", "parse_compress_config"]


def parse_compress_config(raw: dict[str, Any], source: str = "compress") -> CompressConfig:
    """Validate a mapping (e.g. from YAML) into a CompressConfig; a problem raises
    ``research.config.ConfigError`` with a one-line message naming the field."""
    return parse(CompressConfig, raw, source=source)
