"""Data-quality measurements behind the asset checks: framework-free, one function per asset."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from bmlt_assets.core.book import book_arrays
from bmlt_assets.core.config import QualityConfig


def snapshot_quality(
    clean: pl.DataFrame,
    quarantined: pl.DataFrame,
    steps_per_day: int,
    cadence_ms: int,
    symbols: list[str],
    quality: QualityConfig,
) -> dict[str, Any]:
    """Rates per rule over the raw rows, staleness and coverage per symbol, and the failures."""
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


def tensor_quality(base: np.ndarray, valid: np.ndarray, quality: QualityConfig) -> dict[str, Any]:
    """Valid-step fraction, NaN/inf counts and channel ranges of a day's base array."""
    all_valid = valid.all(axis=1)
    finite = np.isfinite(base)
    used = base[all_valid] if all_valid.any() else base[:0]
    distances = np.abs(used[:, :, 0::2, :]) if len(used) else np.zeros(1)
    out: dict[str, Any] = {
        "valid_fraction": float(all_valid.mean()),
        "non_finite": int((~finite).sum()),
        "max_abs_distance_bps": float(distances.max()) if distances.size else 0.0,
        "quantity_range": [float(used[:, :, 1::2, :].min()), float(used[:, :, 1::2, :].max())]
        if len(used)
        else [0.0, 0.0],
    }
    failures = []
    if out["valid_fraction"] < quality.min_valid_fraction:
        failures.append(
            f"only {out['valid_fraction']:.1%} of steps valid for all symbols (< {quality.min_valid_fraction:.1%})"
        )
    if out["non_finite"]:
        bad_steps = np.flatnonzero(~finite.all(axis=(1, 2, 3)))
        failures.append(f"{out['non_finite']} NaN/inf values, first at steps {bad_steps[:5].tolist()}")
    if out["max_abs_distance_bps"] > quality.max_abs_distance_bps:
        failures.append(
            f"a price level {out['max_abs_distance_bps']:.0f} bps from mid (> {quality.max_abs_distance_bps:g})"
        )
    out["failures"] = failures
    return out


def labels_across_gaps(valid: np.ndarray, returns: np.ndarray, horizon: int) -> np.ndarray:
    """Steps (S,) whose label is finite although its interval (t, t + h], or t itself, holds an
    invalid step of this day: such labels must be masked. ``valid`` and ``returns`` are (S, K);
    intervals that run into the next day are left to that day's data."""
    invalid_before = np.concatenate([np.zeros((1, valid.shape[1]), dtype=np.int64), np.cumsum(~valid, axis=0)])
    steps = np.arange(len(valid))
    inside = steps + horizon < len(valid)
    crosses = ~valid
    crosses[inside] |= invalid_before[steps[inside] + horizon + 1] > invalid_before[steps[inside] + 1]
    return np.flatnonzero((np.isfinite(returns) & crosses).any(axis=1))
