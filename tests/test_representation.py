"""Book -> levels: shapes, channel order and invariants of full, aggregated and hybrid."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from bmlt_assets.core.book import book_arrays
from bmlt_assets.core.config import RepresentationConfig, SyntheticConfig
from bmlt_assets.core.representation import CHANNELS, align_to_grid, bucket_edges_bps, represent_books
from bmlt_assets.core.synthetic import SyntheticMarket

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
