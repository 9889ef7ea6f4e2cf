"""Small helpers that turn results into Dagster metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from bmlt_assets.core.files import StoredPath, directory_bytes
from bmlt_assets.core.tables import table_lines
from bmlt_assets.provenance import content_hash


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of dicts (the keys of the first are the columns) as a Markdown table."""
    if not rows:
        return "_(empty)_"
    columns = list(rows[0])
    return "\n".join(table_lines(columns, [[row.get(c, "") for c in columns] for row in rows]))


def stored(path: StoredPath) -> dict[str, Any]:
    """What a day's row says of what was written: its bytes and (the start of) its content hash."""
    return {"bytes": directory_bytes(path), "content_hash": content_hash(path)[:16]}


def partitioned_result(per_day: list[dict[str, Any]], metadata: dict[str, Any]) -> dg.MaterializeResult:
    """A partitioned asset's result. Each day's row carries the content hash of what was written;
    a one-day run also reports it as the Dagster data version, so rewriting identical content
    leaves downstream assets up to date. (A single-run range has one result for all its days,
    where Dagster takes no per-partition data version: the hashes stay in the table.)"""
    version = dg.DataVersion(per_day[0]["content_hash"]) if len(per_day) == 1 else None
    return dg.MaterializeResult(
        metadata={**metadata, "per_day": dg.MetadataValue.md(markdown_table(per_day))}, data_version=version
    )


def partitioned_check(per_day: dict[str, dict[str, Any]], failures: list[str], suffix: str = "") -> dg.AssetCheckResult:
    """A blocking check's verdict over the run's partitions: failures name the day and the rule."""
    return dg.AssetCheckResult(
        passed=not failures,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(failures) + suffix if failures else "all rules within thresholds",
        metadata={"per_day": dg.MetadataValue.json(per_day)},
    )
