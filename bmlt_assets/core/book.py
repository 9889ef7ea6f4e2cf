"""L2 snapshot schema and validation: the contract between data sources and the pipeline.

One row is one order-book snapshot of one symbol: exchange time and our receive time (ns since
the epoch, UTC), the exchange's update id, and ``depth`` levels per side as fixed-size arrays
(bids best-first descending, asks best-first ascending).
"""

from __future__ import annotations

import numpy as np
import polars as pl

BOOK_SIDES = ("bid_px", "bid_qty", "ask_px", "ask_qty")


def snapshot_schema(depth: int) -> dict[str, pl.DataType]:
    levels = pl.Array(pl.Float64, depth)
    return {
        "exchange_ts": pl.Int64(),
        "receive_ts": pl.Int64(),
        "symbol": pl.String(),
        "update_id": pl.Int64(),
        **dict.fromkeys(BOOK_SIDES, levels),
    }


def snapshot_frame(
    *,
    exchange_ns: np.ndarray,
    receive_ns: np.ndarray,
    symbol: str,
    update_id: np.ndarray,
    bid_px: np.ndarray,
    bid_qty: np.ndarray,
    ask_px: np.ndarray,
    ask_qty: np.ndarray,
) -> pl.DataFrame:
    depth = bid_px.shape[1]
    schema = snapshot_schema(depth)
    return pl.DataFrame(
        {
            "exchange_ts": exchange_ns.astype(np.int64),
            "receive_ts": receive_ns.astype(np.int64),
            "symbol": np.full(len(receive_ns), symbol),
            "update_id": update_id.astype(np.int64),
            "bid_px": bid_px.astype(np.float64),
            "bid_qty": bid_qty.astype(np.float64),
            "ask_px": ask_px.astype(np.float64),
            "ask_qty": ask_qty.astype(np.float64),
        },
        schema=schema,
    )


def book_arrays(frame: pl.DataFrame) -> dict[str, np.ndarray]:
    """The four level columns as (rows, depth) float64 arrays."""
    return {side: frame[side].to_numpy() for side in BOOK_SIDES}


def trim_depth(frame: pl.DataFrame, depth: int) -> pl.DataFrame:
    """Keep the best ``depth`` levels of each side."""
    books = book_arrays(frame)
    held = books["bid_px"].shape[1] if frame.height else depth
    if held < depth:
        raise ValueError(f"the snapshots hold {held} levels per side but data.depth={depth}; lower data.depth")
    levels = pl.Array(pl.Float64, depth)
    return frame.with_columns([pl.Series(side, books[side][:, :depth], dtype=levels) for side in BOOK_SIDES])


def _row_problems(frame: pl.DataFrame) -> np.ndarray:
    """A reason per row ('' when the row is sound), checked in order of severity."""
    books = book_arrays(frame)
    bid_px, bid_qty, ask_px, ask_qty = (books[s] for s in BOOK_SIDES)
    reasons = np.full(frame.height, "", dtype=object)

    def flag(mask: np.ndarray | np.bool, reason: str) -> None:
        reasons[(reasons == "") & mask] = reason

    stacked = np.stack([bid_px, bid_qty, ask_px, ask_qty])
    flag(~np.isfinite(stacked).all(axis=(0, 2)), "non-finite price or quantity")
    flag((stacked <= 0).any(axis=(0, 2)), "non-positive price or quantity")
    flag((np.diff(bid_px, axis=1) >= 0).any(axis=1), "bid levels not strictly descending")
    flag((np.diff(ask_px, axis=1) <= 0).any(axis=1), "ask levels not strictly ascending")
    flag(bid_px[:, 0] >= ask_px[:, 0], "crossed or locked book (best bid >= best ask)")
    return reasons


def validate_snapshots(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split raw snapshots into clean rows and quarantined rows (with a ``reason`` column).

    Clean rows are sorted by (symbol, receive_ts) and de-duplicated on (symbol, update_id);
    a snapshot whose update id goes backwards in time is quarantined, never silently used.
    """
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
