"""Nothing may see the future: features at t use data up to t, labels use (t, t + h] only,
and split boundaries are purged by window + horizon (+ embargo)."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bmlt_assets.core.book import validate_snapshots
from bmlt_assets.core.config import RepresentationConfig, SyntheticConfig
from bmlt_assets.core.files import write_parquet
from bmlt_assets.core.labels import forward_log_returns, trailing_volatility
from bmlt_assets.core.representation import day_tensors_from_parquet
from bmlt_assets.core.sources.synthetic import SyntheticMarket
from bmlt_assets.core.splits import chronological_split, eligible_steps, purge_limit
from bmlt_assets.core.windows import Normalizer, gather_windows

DAY = dt.date(2025, 1, 6)
CADENCE_MS = 10_000
SYMBOLS = ["BTC/USDT", "ETH/USDT"]
REPRESENTATION = RepresentationConfig(kind="hybrid", raw_levels=3, bucket_count=3)
SNAPSHOTS = pl.concat(
    [SyntheticMarket(SyntheticConfig(), seed=11, cadence_ms=CADENCE_MS, depth=10).simulate(DAY, s) for s in SYMBOLS]
)


def _tensors(snapshots: pl.DataFrame) -> dict[str, np.ndarray]:
    """The asset's own path: validate, store the partition as Parquet, stream it into tensors."""
    clean, _ = validate_snapshots(snapshots)
    with tempfile.TemporaryDirectory() as folder:
        path = write_parquet(clean, Path(folder) / "snapshots.parquet")
        return day_tensors_from_parquet(path, DAY, SYMBOLS, CADENCE_MS, CADENCE_MS, REPRESENTATION)


def _perturb_after(snapshots: pl.DataFrame, cutoff_ns: int, seed: int) -> pl.DataFrame:
    """Scale every quantity and shift every price received after ``cutoff_ns``."""
    later = pl.col("receive_ts") > cutoff_ns
    factor = 1.0 + np.random.default_rng(seed).uniform(0.1, 0.5)
    return snapshots.with_columns(
        *[
            pl.when(later).then(pl.col(c) * factor).otherwise(pl.col(c)).alias(c)
            for c in ("bid_qty", "ask_qty", "bid_px", "ask_px")
        ]
    )


BASELINE = _tensors(SNAPSHOTS)


@settings(max_examples=8, deadline=None)
@given(step=st.integers(min_value=200, max_value=8000), seed=st.integers(0, 1000))
def test_changing_data_after_t_leaves_tensors_and_features_at_t_unchanged(step: int, seed: int) -> None:
    cutoff = int(BASELINE["timestamps"][step])
    perturbed = _tensors(_perturb_after(SNAPSHOTS, cutoff, seed))
    for name in ("base", "mids", "quotes", "valid"):
        np.testing.assert_array_equal(perturbed[name][: step + 1], BASELINE[name][: step + 1])
    # The data after t did change, so the check above is not vacuous.
    assert not np.array_equal(perturbed["base"][step + 1 :], BASELINE["base"][step + 1 :])

    window = 20
    steps = np.array([step])
    normalizer = Normalizer.fit(BASELINE["base"], BASELINE["mids"], np.arange(window, 150), window, 64, seed=0)
    before = normalizer.apply(gather_windows(BASELINE["base"], BASELINE["mids"], steps, window))
    after = normalizer.apply(gather_windows(perturbed["base"], perturbed["mids"], steps, window))
    if BASELINE["valid"][step - window + 1 : step + 1].all():
        np.testing.assert_array_equal(before, after)

    volatility = trailing_volatility(perturbed["mids"], perturbed["valid"], 30)
    reference = trailing_volatility(BASELINE["mids"], BASELINE["valid"], 30)
    np.testing.assert_array_equal(volatility[: step + 1], reference[: step + 1])


def test_labels_use_only_data_in_the_horizon() -> None:
    rng = np.random.default_rng(0)
    mids = np.exp(np.cumsum(rng.normal(0, 1e-3, (300, 1)), axis=0))
    valid = np.ones((300, 1), dtype=bool)
    t, h = 100, 7
    base = forward_log_returns(mids, valid, [h], 250)
    outside = mids.copy()
    outside[:t] *= 1.5  # the past before t
    outside[t + h + 1 :] *= 0.5  # after t + h
    inside = mids.copy()
    inside[t + h] *= 1.01
    assert forward_log_returns(outside, valid, [h], 250)[t, 0, 0] == base[t, 0, 0]
    assert forward_log_returns(inside, valid, [h], 250)[t, 0, 0] != base[t, 0, 0]
    np.testing.assert_allclose(base[t, 0, 0], np.log(mids[t + h, 0] / mids[t, 0]))


def test_a_gap_inside_the_horizon_masks_the_label() -> None:
    mids = np.linspace(100, 101, 50)[:, None]
    valid = np.ones((50, 1), dtype=bool)
    valid[20] = False
    returns = forward_log_returns(mids, valid, [5], 40)[:, 0, 0]
    assert np.isnan(returns[15:20]).all() and np.isnan(returns[20])
    assert np.isfinite(returns[14]) and np.isfinite(returns[21])
    assert np.isfinite(returns[35:40]).all()  # rows 40..49 stand for the next day, which exists
    without_next_day = forward_log_returns(mids[:40], valid[:40], [5], 40)[:, 0, 0]
    assert np.isnan(without_next_day[35:]).all() and np.isfinite(without_next_day[34])


@pytest.mark.parametrize(("window", "horizon", "embargo"), [(1, 1, 0), (5, 3, 0), (10, 4, 2)])
def test_split_is_purged_by_window_horizon_and_embargo(window: int, horizon: int, embargo: int) -> None:
    steps = np.arange(window - 1, 1000)
    split = chronological_split(steps, (0.7, 0.15, 0.15), window, horizon, embargo)
    val_start, test_start = split.boundaries
    for part, next_part in ((split.train, split.val), (split.val, split.test)):
        label_end = part.max() + horizon
        next_window_start = next_part.min() - window + 1
        assert label_end + embargo < next_window_start
    # Off by one: the last kept sample sits exactly at the purge limit, the next one is dropped.
    assert split.train.max() == purge_limit(val_start, window, horizon, embargo)
    assert split.val.max() == purge_limit(test_start, window, horizon, embargo)
    assert split.train.max() + window + horizon + embargo == val_start
    assert split.test.min() == test_start


def test_the_stride_thins_training_and_validation_but_keeps_every_test_step() -> None:
    window, horizon = 5, 3
    split = chronological_split(np.arange(window - 1, 1000), (0.7, 0.15, 0.15), window, horizon, 0)
    thinned = split.thinned(4)
    assert (thinned.train % 4 == 0).all() and (thinned.val % 4 == 0).all()
    assert len(thinned.train) == pytest.approx(len(split.train) / 4, abs=1)
    np.testing.assert_array_equal(thinned.test, split.test)
    # Thinning only removes samples: every boundary stays purged.
    assert thinned.train.max() + window + horizon < thinned.val.min()
    assert thinned.val.max() + window + horizon < thinned.test.min()


def test_eligible_steps_need_a_fully_valid_window_and_labels() -> None:
    valid = np.ones(30, dtype=bool)
    valid[10] = False
    label_ok = np.ones(30, dtype=bool)
    label_ok[25] = False
    steps = eligible_steps(valid, window=4, label_ok=label_ok)
    assert 3 in steps and 9 in steps
    assert not set(range(10, 14)) & set(steps.tolist())  # windows that touch step 10
    assert 14 in steps and 25 not in steps
