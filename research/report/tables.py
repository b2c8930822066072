"""Markdown tables: one cell format and one table writer for every report."""

from __future__ import annotations

from typing import Any, Sequence


def format_cell(v: Any, digits: int = 4) -> str:
    """A table cell: "-" for None, floats with ``digits`` decimals, lists as "[a, b]" (3 decimals)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_cell(x, 3) for x in v) + "]"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A GitHub markdown table: ``columns`` are (key in each row, column title); a missing key reads "-"."""
    head = "| " + " | ".join(title for _, title in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(format_cell(r.get(key)) for key, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])
