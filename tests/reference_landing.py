"""orderbook_snapshots' validation and quality before they were streamed, frozen: the whole-day
references the streamed code is tested against.

``validate_snapshots`` (core/book.py) and ``snapshot_quality`` (core/quality.py) copied unchanged as
they were; ``landing_day`` is what ``LandingZoneResource.snapshots`` gave them (every landing file
read whole, concatenated, filtered to the symbols and trimmed to the depth), except that each
part is trimmed before they are joined, so that files of two depths can be compared at all (the
old code failed on them). The checks of a book itself (``core.book._row_problems``) are the
product's, unchanged. Never used by the product.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from bmlt_assets.core.book import _row_problems, book_arrays, trim_depth
from bmlt_assets.core.config import QualityConfig


def landing_day(parts: list[pl.DataFrame], symbols: list[str] | None, depth: int | None) -> pl.DataFrame:
    kept = [part.filter(pl.col("symbol").is_in(symbols)) if symbols is not None else part for part in parts]
    return pl.concat([trim_depth(part, depth) if depth is not None else part for part in kept])


def validate_snapshots(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    frame = frame.sort(["symbol", "receive_ts", "update_id"], maintain_order=True)
    reasons = _row_problems(frame) if frame.height else np.array([], dtype=object)
    repeated = ~frame.select(pl.struct("symbol", "update_id").is_first_distinct()).to_series().to_numpy()
    reasons[(reasons == "") & repeated] = "duplicate update id"

    sound = np.flatnonzero(reasons == "")
    ids = frame["update_id"].to_numpy()[sound]
    symbols = frame["symbol"].to_numpy()[sound]
    previous_max = np.full_like(ids, np.iinfo(np.int64).min)
    for symbol in np.unique(symbols):  # rows are sorted by symbol: one contiguous run each
        run = np.flatnonzero(symbols == symbol)
        previous_max[run[1:]] = np.maximum.accumulate(ids[run])[:-1]
    reasons[sound[ids < previous_max]] = "update id goes backwards"

    frame = frame.with_columns(pl.Series("reason", reasons, dtype=pl.String))
    clean = frame.filter(pl.col("reason") == "").drop("reason")
    quarantined = frame.filter(pl.col("reason") != "")
    return clean, quarantined


def snapshot_quality(
    clean: pl.DataFrame,
    quarantined: pl.DataFrame,
    steps_per_day: int,
    cadence_ms: int,
    symbols: list[str],
    quality: QualityConfig,
) -> dict[str, Any]:
    total = clean.height + quarantined.height
    reasons = quarantined["reason"].value_counts().sort("reason") if quarantined.height else None
    by_rule = {row["reason"]: int(row["count"]) for row in reasons.iter_rows(named=True)} if reasons is not None else {}
    out: dict[str, Any] = {
        "rows": total,
        "quarantined": quarantined.height,
        "quarantined_fraction": quarantined.height / total if total else 1.0,
        "by_rule": by_rule,
    }
    failures = []
    if out["quarantined_fraction"] > quality.max_quarantined_fraction:
        failures.append(
            f"{quarantined.height} of {total} rows quarantined "
            f"({out['quarantined_fraction']:.1%} > {quality.max_quarantined_fraction:.1%}): {by_rule}"
        )
    per_symbol = {}
    for symbol in symbols:
        rows = clean.filter(pl.col("symbol") == symbol)
        coverage = min(1.0, rows.height / steps_per_day)
        stale = 0.0
        if rows.height > 1:
            books = book_arrays(rows)
            snapshot = np.concatenate([books[s] for s in books], axis=1)
            unchanged = np.r_[False, (snapshot[1:] == snapshot[:-1]).all(axis=1)]
            # Runs of identical books longer than max_stale_s count as stale time.
            run_id = np.cumsum(~unchanged)
            run_length = np.bincount(run_id)[run_id]
            stale = float((unchanged & (run_length * cadence_ms / 1000 > quality.max_stale_s)).mean())
        per_symbol[symbol] = {"coverage": coverage, "stale_fraction": stale}
        if coverage < quality.min_coverage:
            failures.append(f"{symbol}: coverage {coverage:.1%} of the day < {quality.min_coverage:.1%}")
        if stale > quality.max_stale_fraction:
            failures.append(f"{symbol}: {stale:.1%} of books stale for more than {quality.max_stale_s:g}s")
    out["per_symbol"] = per_symbol
    out["failures"] = failures
    return out
