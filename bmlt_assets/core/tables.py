"""Markdown tables, for reports and Dagster metadata alike."""

from __future__ import annotations

from typing import Any


def table_lines(header: list[str], rows: list[list[Any]], float_format: str = "{:.4f}") -> list[str]:
    """A Markdown table, line by line (the one table renderer of the project)."""

    def cell(v: Any) -> str:
        return float_format.format(v) if isinstance(v, float) else str(v)

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(cell(v) for v in r) + " |" for r in rows
    ]
