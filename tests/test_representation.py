"""Book -> levels: shapes, channel order and invariants of full, aggregated and hybrid."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from bmlt_assets.core.book import book_arrays
from bmlt_assets.core.config import RepresentationConfig, SyntheticConfig
from bmlt_assets.core.files import write_parquet
from bmlt_assets.core.representation import (
    CHANNELS,
    QUOTE_FIELDS,
    QUOTE_LEVELS,
    align_to_grid,
    bucket_edges_bps,
    day_tensors_from_frame,
    day_tensors_from_parquet,
    quoted_spread_bps,
    read_ahead,
    represent_books,
)
from bmlt_assets.core.sources.synthetic import SyntheticMarket

BOOKS = book_arrays(
    SyntheticMarket(SyntheticConfig(), seed=5, cadence_ms=10_000, depth=20).simulate(dt.date(2025, 1, 6), "SOL/USDT")
)
RAW = [BOOKS[side][:500] for side in ("bid_px", "bid_qty", "ask_px", "ask_qty")]


@pytest.mark.parametrize(
    ("config", "levels"),
    [
        (RepresentationConfig(kind="full", raw_levels=7), 7),
        (RepresentationConfig(kind="aggregated", bucket_count=4), 4),
        (RepresentationConfig(kind="hybrid", raw_levels=3, bucket_count=5), 8),
    ],
)
def test_shape_channel_order_and_monotone_prices(config: RepresentationConfig, levels: int) -> None:
    out, mid = represent_books(*RAW, config)
    assert out.shape == (500, levels, 4) and out.dtype == np.float32
    assert CHANNELS == ("bid_distance_bps", "bid_log1p_qty", "ask_distance_bps", "ask_log1p_qty")
    np.testing.assert_allclose(mid, (RAW[0][:, 0] + RAW[2][:, 0]) / 2)
    bid_distance, ask_distance = out[..., 0], out[..., 2]
    assert (bid_distance < 0).all() and (ask_distance > 0).all()
    assert (np.diff(bid_distance, axis=1) <= 0).all()  # deeper bids are further below the mid
    assert (np.diff(ask_distance, axis=1) >= 0).all()
    assert (out[..., 1] >= 0).all() and (out[..., 3] >= 0).all()


def test_full_keeps_raw_levels_exactly() -> None:
    out, mid = represent_books(*RAW, RepresentationConfig(kind="full", raw_levels=5))
    np.testing.assert_allclose(out[..., 1], np.log1p(RAW[1][:, :5]), rtol=1e-6)
    np.testing.assert_allclose(out[..., 2], (RAW[2][:, :5] - mid[:, None]) / mid[:, None] * 1e4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["aggregated", "hybrid"])
def test_bucket_quantities_sum_to_raw_quantities_in_range(kind: str) -> None:
    config = RepresentationConfig(kind=kind, raw_levels=2, bucket_count=4, bucket_min_bps=1.0, bucket_max_bps=15.0)
    out, mid = represent_books(*RAW, config)
    raw_levels = config.raw_levels if kind == "hybrid" else 0
    limit = bucket_edges_bps(config)[-1]
    for side, (px, qty) in {"bid": (RAW[0], RAW[1]), "ask": (RAW[2], RAW[3])}.items():
        distance = np.abs(px - mid[:, None]) / mid[:, None] * 1e4
        covered = (distance <= limit) & (np.arange(px.shape[1]) >= raw_levels)
        expected = np.where(covered, qty, 0.0).sum(axis=1)
        channel = 1 if side == "bid" else 3
        got = np.expm1(out[:, raw_levels:, channel].astype(np.float64)).sum(axis=1)
        np.testing.assert_allclose(got, expected, rtol=1e-4)
        assert expected.sum() > 0  # the test exercises real volume


def test_alignment_uses_only_snapshots_received_by_the_grid_time() -> None:
    received = np.array([100, 250, 400, 1000])
    grid = np.array([50, 100, 399, 400, 900, 1200])
    row, fresh = align_to_grid(received, grid, staleness_ns=300)
    np.testing.assert_array_equal(row, [-1, 0, 1, 2, 2, 3])
    np.testing.assert_array_equal(fresh, [False, True, True, True, False, True])


@pytest.mark.parametrize("rolling_s", [None, 300])
def test_best_quotes_are_stored_raw_whatever_the_representation(tmp_path: Path, rolling_s: int | None) -> None:
    """Level 0 of ``aggregated`` is a bucket and rolling normalization turns quantities into z-scores:
    the stored quotes still hold the raw best bid and ask, the same from memory and from Parquet."""
    day, cadence_ms = dt.date(2025, 1, 6), 10_000
    snapshots = SyntheticMarket(SyntheticConfig(), seed=5, cadence_ms=cadence_ms, depth=20).simulate(day, "SOL/USDT")
    config = RepresentationConfig(kind="aggregated", bucket_count=3, rolling_normalization_s=rolling_s)
    args = (day, ["SOL/USDT"], cadence_ms, cadence_ms, config)
    in_memory = day_tensors_from_frame(snapshots, *args)
    stored = day_tensors_from_parquet(write_parquet(snapshots, tmp_path / "snapshots.parquet"), *args)
    np.testing.assert_array_equal(stored["quotes"], in_memory["quotes"])

    valid = in_memory["valid"][:, 0]
    quotes = dict(zip(QUOTE_FIELDS, in_memory["quotes"][:, :, 0].T))
    assert np.isnan(in_memory["quotes"][~valid]).all() and valid.sum() > 1000
    books = book_arrays(snapshots.sort("receive_ts"))
    used = np.searchsorted(snapshots.sort("receive_ts")["receive_ts"].to_numpy(), in_memory["timestamps"], "right") - 1
    used = used[valid]
    bid, ask = books["bid_px"][used, 0], books["ask_px"][used, 0]
    mid = (bid + ask) / 2
    np.testing.assert_allclose(quoted_spread_bps(in_memory["quotes"][valid, :, 0]), (ask - bid) / mid * 1e4, rtol=1e-6)
    np.testing.assert_allclose(quotes["bid_distance_bps"][valid], (bid - mid) / mid * 1e4, rtol=1e-6)
    np.testing.assert_allclose(quotes["bid_qty"][valid], books["bid_qty"][used, 0], rtol=1e-6)
    np.testing.assert_allclose(quotes["ask_qty"][valid], books["ask_qty"][used, 0], rtol=1e-6)
    np.testing.assert_allclose(quotes["book_ask_qty"][valid], books["ask_qty"][used].sum(axis=1), rtol=1e-6)
    for level in range(2, QUOTE_LEVELS + 1):  # the deeper levels the order-flow baseline reads
        deeper_bid = books["bid_px"][used, level - 1]
        np.testing.assert_allclose(
            quotes[f"bid_distance_bps_{level}"][valid], (deeper_bid - mid) / mid * 1e4, rtol=1e-5
        )
        np.testing.assert_allclose(quotes[f"ask_qty_{level}"][valid], books["ask_qty"][used, level - 1], rtol=1e-6)
    # What the representation's level 0 shows instead: a bucket, not the best quote.
    assert not np.allclose(
        in_memory["base"][valid, 0, 2, 0] - in_memory["base"][valid, 0, 0, 0], (ask - bid) / mid * 1e4
    )


def test_read_ahead_yields_every_item_in_order_and_passes_errors_on() -> None:
    produced: list[int] = []

    def items():
        for i in range(5):
            produced.append(i)
            yield i

    consumed = []
    for item in read_ahead(items()):
        assert len(produced) - len(consumed) <= 2  # this item and at most the next one
        consumed.append(item)
    assert consumed == [0, 1, 2, 3, 4]
    assert list(read_ahead(iter([None, 0, None]))) == [None, 0, None]

    def broken():
        yield 1
        raise OSError("truncated file")

    with pytest.raises(OSError, match="truncated file"):
        list(read_ahead(broken()))
