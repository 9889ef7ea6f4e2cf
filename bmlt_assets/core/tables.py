"""Markdown tables, for reports and Dagster metadata alike."""

from __future__ import annotations

from typing import Any

from bmlt_assets.core.readable import number


def table_lines(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table, line by line (the one table renderer of the project); numbers as
    :func:`~bmlt_assets.core.readable.number` writes them."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(number(v) for v in r) + " |" for r in rows
    ]
