"""Data-quality measurements behind the asset checks: framework-free, one function per asset."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import polars as pl

from bmlt_assets.core.book import book_arrays
from bmlt_assets.core.config import QualityConfig


def snapshot_quality(
    clean: Iterable[pl.DataFrame],
    reasons: pl.Series,
    steps_per_day: int,
    cadence_ms: int,
    symbols: list[str],
    quality: QualityConfig,
) -> dict[str, Any]:
    """Rates per rule over the raw rows, staleness and coverage per symbol, and the failures.

    ``clean`` is the day's clean rows in their stored order (sorted by symbol and receive time), in
    batches of any size: only one batch is held, with the last book and open run of each symbol;
    ``reasons`` is the quarantined rows' ``reason`` column."""
    runs = _BookRuns(cadence_ms, quality.max_stale_s)
    for batch in clean:
        runs.add(batch)
    rows = sum(runs.rows.values())
    total = rows + len(reasons)
    by_rule = dict(sorted(Counter(reasons.to_list()).items()))
    out: dict[str, Any] = {
        "rows": total,
        "quarantined": len(reasons),
        "quarantined_fraction": len(reasons) / total if total else 1.0,
        "by_rule": by_rule,
    }
    failures = []
    if out["quarantined_fraction"] > quality.max_quarantined_fraction:
        failures.append(
            f"{len(reasons)} of {total} rows quarantined "
            f"({out['quarantined_fraction']:.1%} > {quality.max_quarantined_fraction:.1%}): {by_rule}"
        )
    per_symbol = {}
    for symbol in symbols:
        coverage = min(1.0, runs.rows.get(symbol, 0) / steps_per_day)
        stale = runs.stale_fraction(symbol)  # runs of identical books longer than max_stale_s
        per_symbol[symbol] = {"coverage": coverage, "stale_fraction": stale}
        if coverage < quality.min_coverage:
            failures.append(f"{symbol}: coverage {coverage:.1%} of the day < {quality.min_coverage:.1%}")
        if stale > quality.max_stale_fraction:
            failures.append(f"{symbol}: {stale:.1%} of books stale for more than {quality.max_stale_s:g}s")
    out["per_symbol"] = per_symbol
    out["failures"] = failures
    return out


class _BookRuns:
    """Per symbol, its rows and its stale rows, fed in order a batch at a time: a run is a book and
    the identical ones right after it, and a run longer than ``max_stale_s`` makes all but its
    first row stale."""

    def __init__(self, cadence_ms: int, max_stale_s: float) -> None:
        self.cadence_ms, self.max_stale_s = cadence_ms, max_stale_s
        self.rows: dict[str, int] = {}
        self.stale: dict[str, int] = {}
        self.open: dict[str, int] = {}  # the length of the run the last book is in
        self.last: dict[str, np.ndarray] = {}  # the last book, flattened

    def add(self, batch: pl.DataFrame) -> None:
        for (symbol,), rows in batch.partition_by("symbol", as_dict=True, maintain_order=True).items():
            name = str(symbol)
            books = np.concatenate(list(book_arrays(rows).values()), axis=1)
            before = self.last.get(name)
            unchanged = np.r_[before is not None and bool((books[0] == before).all()), (books[1:] == books[:-1]).all(1)]
            starts = np.flatnonzero(~unchanged)
            if len(starts):  # the open run ends before the first start; each later run before the next start
                self._close(name, np.r_[self.open.get(name, 0) + starts[0], np.diff(starts)])
                self.open[name] = len(books) - int(starts[-1])
            else:
                self.open[name] = self.open.get(name, 0) + len(books)
            self.last[name] = books[-1].copy()
            self.rows[name] = self.rows.get(name, 0) + len(books)

    def _close(self, symbol: str, lengths: np.ndarray) -> None:
        long = lengths * self.cadence_ms / 1000 > self.max_stale_s
        self.stale[symbol] = self.stale.get(symbol, 0) + int((lengths[long] - 1).sum())

    def stale_fraction(self, symbol: str) -> float:
        held = self.rows.get(symbol, 0)
        if held < 2:
            return 0.0
        self._close(symbol, np.array([self.open.pop(symbol, 0)]))
        return self.stale.get(symbol, 0) / held


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
