"""Book -> tensor: resample snapshots to a fixed grid and turn each book into L levels.

Every level is (bid price, bid quantity, ask price, ask quantity). Prices are signed distances
from the same snapshot's mid in basis points (bids negative, asks positive), quantities are
``log1p(qty)``. Three representations (docs/design.md §4, decision 1):

* ``full``: the top ``raw_levels`` levels as they are;
* ``aggregated``: ``bucket_count`` price-distance buckets, log-spaced from ``bucket_min_bps`` to
  ``bucket_max_bps`` (the first bucket starts at the mid); a bucket holds the summed quantity and
  the quantity-weighted mean distance of the levels inside it (its centre when empty);
* ``hybrid``: the top ``raw_levels`` raw, then buckets over the deeper levels only.

Optionally (``rolling_normalization_s``) the quantity channels are standardized by their own
trailing mean and std, fitted on past data only, so that slow changes in market depth do not
shift the model's inputs.

Prices stay monotone across levels (an empty bucket never sits inside a shallower one).

Beside the levels, every day stores each step's top quotes (``quotes``, fields ``QUOTE_FIELDS``)
straight from the raw book: under ``aggregated`` level 0 is a price bucket and under rolling
normalization the quantities are z-scores, so what needs the true best bid and ask (the spread
paid in the backtest, the order-book baseline's features) reads them from here, the same under
every representation and normalization.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar, cast

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from bmlt_assets.core.book import BOOK_SIDES, book_arrays
from bmlt_assets.core.config import RepresentationConfig

T = TypeVar("T")
BOOK_BATCH_BYTES = 4 * 2**20  # of raw levels per read batch: 6,500 rows of a 20-level book, 130 of 1,000 levels
CHANNELS = ("bid_distance_bps", "bid_log1p_qty", "ask_distance_bps", "ask_log1p_qty")
# Per step and symbol, from the raw book: the best bid and ask as signed distances from the mid in
# bps (bid negative), their quantities, and each side's total quantity over the recorded depth;
# then the same four for levels 2 to QUOTE_LEVELS (NaN beyond the recorded depth), which the
# order-flow baseline reads (multi-level queue and order-flow imbalance).
QUOTE_LEVELS = 5
LEVEL_QUOTE_FIELDS = ("bid_distance_bps", "ask_distance_bps", "bid_qty", "ask_qty")
QUOTE_FIELDS = (
    *LEVEL_QUOTE_FIELDS,
    "book_bid_qty",
    "book_ask_qty",
    *(f"{name}_{level}" for level in range(2, QUOTE_LEVELS + 1) for name in LEVEL_QUOTE_FIELDS),
)


def align_to_grid(receive_ns: np.ndarray, grid_ns: np.ndarray, staleness_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """For each grid time, the last snapshot received at or before it, and whether it is fresh.

    Only data received at or before a grid time is used for it: this is where causality is
    enforced for the whole pipeline. ``receive_ns`` must be sorted.
    """
    row = np.searchsorted(receive_ns, grid_ns, side="right") - 1
    fresh = row >= 0
    fresh[fresh] = (grid_ns[fresh] - receive_ns[row[fresh]]) < staleness_ns
    return row, fresh


def bucket_edges_bps(config: RepresentationConfig) -> np.ndarray:
    inner = np.geomspace(config.bucket_min_bps, config.bucket_max_bps, config.bucket_count)
    return np.concatenate([[0.0], inner])


def _buckets(
    distance: np.ndarray, qty: np.ndarray, edges: np.ndarray, eligible: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Summed quantity and qty-weighted mean |distance| per bucket; (rows, buckets) each."""
    rows, n_buckets = distance.shape[0], len(edges) - 1
    index = np.searchsorted(edges, distance, side="right") - 1
    inside = eligible & (index >= 0) & (distance <= edges[-1]) & (index < n_buckets)
    # One weighted bincount over (row, bucket) cells: ~3.5x faster than a masked sum per bucket.
    cell = (np.arange(rows)[:, None] * n_buckets + index)[inside]
    inside_qty = qty[inside]
    size = rows * n_buckets
    qty_sum = np.bincount(cell, weights=inside_qty, minlength=size).reshape(rows, n_buckets)
    weighted = np.bincount(cell, weights=inside_qty * distance[inside], minlength=size).reshape(rows, n_buckets)
    centre = (edges[:-1] + edges[1:]) / 2
    mean_distance = np.divide(weighted, qty_sum, out=np.broadcast_to(centre, qty_sum.shape).copy(), where=qty_sum > 0)
    return qty_sum, mean_distance


def represent_books(
    bid_px: np.ndarray, bid_qty: np.ndarray, ask_px: np.ndarray, ask_qty: np.ndarray, config: RepresentationConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, depth) raw books -> ((rows, L, 4) float32 levels, (rows,) float64 mids)."""
    mid = (bid_px[:, 0] + ask_px[:, 0]) / 2
    bid_distance = (mid[:, None] - bid_px) / mid[:, None] * 1e4  # positive, growing with depth
    ask_distance = (ask_px - mid[:, None]) / mid[:, None] * 1e4
    raw = config.raw_levels if config.kind in ("full", "hybrid") else 0
    sides = []
    for distance, qty in ((bid_distance, bid_qty), (ask_distance, ask_qty)):
        parts_distance, parts_qty = [distance[:, :raw]], [qty[:, :raw]]
        if config.kind in ("aggregated", "hybrid"):
            eligible = np.zeros_like(distance, dtype=bool)
            eligible[:, raw:] = True
            bucket_qty, bucket_distance = _buckets(distance, qty, bucket_edges_bps(config), eligible)
            parts_distance.append(bucket_distance)
            parts_qty.append(bucket_qty)
        level_distance = np.maximum.accumulate(np.concatenate(parts_distance, axis=1), axis=1)
        sides.append((level_distance, np.log1p(np.concatenate(parts_qty, axis=1))))
    (bid_d, bid_q), (ask_d, ask_q) = sides
    levels = np.stack([-bid_d, bid_q, ask_d, ask_q], axis=-1).astype(np.float32)
    return levels, mid


def best_quotes(bid_px: np.ndarray, bid_qty: np.ndarray, ask_px: np.ndarray, ask_qty: np.ndarray) -> np.ndarray:
    """(rows, depth) raw books -> (rows, len(QUOTE_FIELDS)) float64 quotes of the top levels and book totals."""
    mid = (bid_px[:, 0] + ask_px[:, 0]) / 2

    def level(i: int) -> list[np.ndarray]:
        if i >= bid_px.shape[1]:
            return [np.full(len(mid), np.nan)] * len(LEVEL_QUOTE_FIELDS)
        return [(bid_px[:, i] - mid) / mid * 1e4, (ask_px[:, i] - mid) / mid * 1e4, bid_qty[:, i], ask_qty[:, i]]

    totals = [bid_qty.sum(axis=1), ask_qty.sum(axis=1)]
    return np.stack([*level(0), *totals, *(column for i in range(1, QUOTE_LEVELS) for column in level(i))], axis=1)


def has_current_quotes(folder: Path) -> bool:
    """Whether ``folder`` holds a ``quotes.npy`` with every field of QUOTE_FIELDS (older partitions
    hold the best level only, or no quotes at all)."""
    path = folder / "quotes.npy"
    return path.exists() and np.load(path, mmap_mode="r").shape[1] == len(QUOTE_FIELDS)


def quoted_spread_bps(quotes: np.ndarray) -> np.ndarray:
    """Best ask minus best bid in bps of the mid, from ``quotes`` laid out as ``QUOTE_FIELDS`` on axis 1."""
    return quotes[:, 1] - quotes[:, 0]


def level_names(config: RepresentationConfig) -> list[str]:
    raw = [f"raw{i + 1}" for i in range(config.raw_levels)] if config.kind in ("full", "hybrid") else []
    edges = bucket_edges_bps(config)
    buckets = (
        [f"bucket[{a:.3g},{b:.3g})bps" for a, b in zip(edges[:-1], edges[1:])]
        if config.kind in ("aggregated", "hybrid")
        else []
    )
    return raw + buckets


def rolling_standardize(base: np.ndarray, valid: np.ndarray, lookback: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardize the quantity channels by their trailing mean and std over ``lookback`` valid
    steps up to and including t (past data only). Steps with less than half a lookback of
    history become invalid. ``base`` (S, L, 4, K) is modified in place."""
    quantities = base[:, :, 1::2, :].astype(np.float64)  # (S, L, 2, K)
    seen = valid[:, None, None, :].astype(np.float64)

    def trailing(x: np.ndarray) -> np.ndarray:
        total = np.cumsum(x, axis=0)
        total[lookback:] -= total[:-lookback].copy()
        return total

    count = trailing(np.broadcast_to(seen, quantities.shape).copy())
    mean = trailing(quantities * seen) / np.maximum(count, 1)
    var = trailing(quantities**2 * seen) / np.maximum(count, 1) - mean**2
    standardized = (quantities - mean) / np.sqrt(np.maximum(var, 1e-12))
    enough = count[:, 0, 0, :] >= lookback / 2
    base[:, :, 1::2, :] = np.where(enough[:, None, None, :], standardized, 0.0).astype(np.float32)
    return base, valid & enough


def day_grid_ns(date: dt.date, cadence_ms: int) -> np.ndarray:
    start = int(dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC).timestamp()) * 10**9
    return start + np.arange(86_400_000 // cadence_ms, dtype=np.int64) * cadence_ms * 1_000_000


BookBatches = Iterable[tuple[int, dict[str, np.ndarray]]]  # (first row, {side: (n, depth)})


def outside_gaps(
    symbol: str, grid_ns: np.ndarray, used_receive_ns: np.ndarray, gaps: Iterable[dict] | None
) -> np.ndarray:
    """Which grid steps do not rest on a book that a recorded gap of ``symbol`` made unreliable.

    A gap ``{symbol, from_ns, to_ns}`` runs from the last sound book to the first one after the
    re-sync. A step after ``from_ns`` that still uses a book received at or before it shows a book
    whose updates were lost: invalid, however fresh ``max_staleness_ms`` would call it."""
    keep = np.ones(len(grid_ns), dtype=bool)
    for gap in gaps or ():
        if gap.get("symbol") == symbol and gap.get("from_ns") is not None:
            keep &= ~((grid_ns > gap["from_ns"]) & (used_receive_ns <= gap["from_ns"]))
    return keep


def day_tensors(
    rows_by_symbol: dict[str, np.ndarray],
    receive_ts: np.ndarray,
    batches: BookBatches,
    date: dt.date,
    symbols: list[str],
    cadence_ms: int,
    staleness_ms: int,
    config: RepresentationConfig,
    gaps: Iterable[dict] | None = None,
) -> dict[str, np.ndarray]:
    """One day of validated snapshots -> the base array and its companions.

    ``rows_by_symbol`` gives each symbol's rows, sorted by ``receive_ts`` (as
    ``orderbook_snapshots`` stores them). Only these small index columns are held whole; the level columns arrive in
    ``batches`` and only the rows some grid step uses are represented, so peak memory stays
    near the output size. Steps inside a recorded ``gaps`` interval are invalid (see ``outside_gaps``).
    Returns ``base`` (S, L, 4, K) float32, ``mids`` (S, K) float64, ``quotes`` (S, len(QUOTE_FIELDS), K)
    float32 (both NaN where not valid), ``valid`` (S, K) bool and ``timestamps`` (S,) int64 ns of the grid.
    """
    grid = day_grid_ns(date, cadence_ms)
    base = np.zeros((len(grid), config.levels, 4, len(symbols)), dtype=np.float32)
    mids = np.full((len(grid), len(symbols)), np.nan)
    # float32 like the base array: a spread of 0.1 bps keeps ~1e-8 bps of precision.
    quotes = np.full((len(grid), len(QUOTE_FIELDS), len(symbols)), np.nan, dtype=np.float32)
    valid = np.zeros((len(grid), len(symbols)), dtype=bool)
    # (grid step, symbol, source row) for every fresh step, sorted by source row.
    pair_blocks: list[np.ndarray] = []
    for k, symbol in enumerate(symbols):
        rows = rows_by_symbol.get(symbol, np.empty(0, dtype=np.int64))
        if len(rows) == 0:
            continue
        row, fresh = align_to_grid(receive_ts[rows], grid, staleness_ms * 1_000_000)
        fresh &= outside_gaps(symbol, grid, receive_ts[rows][np.maximum(row, 0)], gaps)
        valid[:, k] = fresh
        steps = np.flatnonzero(fresh)
        pair_blocks.append(np.stack([steps, np.full(len(steps), k), rows[row[fresh]]], axis=1))
    if pair_blocks:
        pairs = np.concatenate(pair_blocks)
        pairs = pairs[np.argsort(pairs[:, 2], kind="stable")]
        for first, books in batches:
            n = len(books[BOOK_SIDES[0]])
            lo, hi = np.searchsorted(pairs[:, 2], [first, first + n])
            if lo == hi:
                continue
            step, symbol_index, source = pairs[lo:hi].T
            used, position = np.unique(source - first, return_inverse=True)
            bid_px, bid_qty, ask_px, ask_qty = (books[side][used] for side in BOOK_SIDES)
            levels, mid = represent_books(bid_px, bid_qty, ask_px, ask_qty, config)
            base[step, :, :, symbol_index] = levels[position]
            mids[step, symbol_index] = mid[position]
            quotes[step, :, symbol_index] = best_quotes(bid_px, bid_qty, ask_px, ask_qty)[position]
    if config.rolling_normalization_s:
        base, valid = rolling_standardize(base, valid, max(2, config.rolling_normalization_s * 1000 // cadence_ms))
        mids = np.where(valid, mids, np.nan)
        quotes = np.where(valid[:, None, :], quotes, np.nan)
    return {"base": base, "mids": mids, "quotes": quotes, "valid": valid, "timestamps": grid}


def day_tensors_from_frame(
    snapshots: pl.DataFrame,
    date: dt.date,
    symbols: list[str],
    cadence_ms: int,
    staleness_ms: int,
    config: RepresentationConfig,
    gaps: Iterable[dict] | None = None,
) -> dict[str, np.ndarray]:
    """``day_tensors`` of snapshots already in memory."""
    snapshots = snapshots.sort(["symbol", "receive_ts"], maintain_order=True)
    symbol = snapshots["symbol"].to_numpy()
    rows_by_symbol = {name: np.flatnonzero(symbol == name) for name in symbols}
    return day_tensors(
        rows_by_symbol,
        snapshots["receive_ts"].to_numpy(),
        [(0, book_arrays(snapshots))],
        date,
        symbols,
        cadence_ms,
        staleness_ms,
        config,
        gaps,
    )


def day_tensors_from_parquet(
    path: Path,
    date: dt.date,
    symbols: list[str],
    cadence_ms: int,
    staleness_ms: int,
    config: RepresentationConfig,
    gaps: Iterable[dict] | None = None,
) -> dict[str, np.ndarray]:
    """``day_tensors`` of a stored ``orderbook_snapshots`` partition, streamed row group by row group."""
    parquet = pq.ParquetFile(path, pre_buffer=False, read_dictionary=["symbol"])
    index = parquet.read(columns=["symbol", "receive_ts"])
    # Symbols as dictionary codes: a numpy array of Python strings would cost more than the output.
    symbol = index.column("symbol").combine_chunks()
    codes, names = symbol.indices.to_numpy(), symbol.dictionary.to_pylist()
    rows_by_symbol = {name: np.flatnonzero(codes == code) for code, name in enumerate(names)}

    def batches() -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        first = 0
        # Batches of a few MB whatever the depth, so the float64 temporaries of represent_books stay
        # small: counted in rows, a 1,000-level book's batch took 1.6 GB (docs/benchmarks.md).
        row_bytes = sum(8 * parquet.schema_arrow.field(side).type.list_size for side in BOOK_SIDES)
        rows = max(64, BOOK_BATCH_BYTES // row_bytes)
        for batch in parquet.iter_batches(batch_size=rows, columns=list(BOOK_SIDES)):
            books = {side: _levels(batch.column(side)) for side in BOOK_SIDES}
            yield first, books
            first += batch.num_rows

    return day_tensors(
        rows_by_symbol,
        index.column("receive_ts").to_numpy(),
        read_ahead(batches()),
        date,
        symbols,
        cadence_ms,
        staleness_ms,
        config,
        gaps,
    )


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """Yield ``items`` while a thread already produces the next one: Parquet decoding and numpy both
    release the GIL, so reading the next batch overlaps representing this one (0.65 s -> 0.5 s for a
    day of the default config on 2 cores). At most two items are alive at a time."""
    done = object()  # not None: an item may be None
    with ThreadPoolExecutor(1) as reader:
        pending = reader.submit(next, items, done)
        while (item := pending.result()) is not done:
            pending = reader.submit(next, items, done)
            yield cast(T, item)


def _levels(column: pa.FixedSizeListArray) -> np.ndarray:
    """A fixed-size-list column as a (rows, depth) float64 array, without a Python-level copy."""
    return column.flatten().to_numpy().reshape(len(column), column.type.list_size)
