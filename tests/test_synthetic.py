"""The synthetic market: deterministic, well-formed books, a planted signal and a true oracle."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from bmlt_assets.core.book import book_arrays, validate_snapshots
from bmlt_assets.core.config import LabelsConfig, SyntheticConfig
from bmlt_assets.core.labels import class_edges, classify, forward_log_returns, trailing_volatility
from bmlt_assets.core.representation import align_to_grid, day_grid_ns
from bmlt_assets.core.synthetic import SyntheticMarket
from bmlt_resources.synthetic import SyntheticMarketResource

DAY = dt.date(2025, 1, 6)
CADENCE_MS = 5000


def market(seed: int = 1, **params) -> SyntheticMarket:
    return SyntheticMarket(SyntheticConfig(**params), seed=seed, cadence_ms=CADENCE_MS, depth=10)


def test_same_seed_same_books_and_other_seed_differs() -> None:
    a = market(seed=1).simulate(DAY, "ETH/USDT")
    b = market(seed=1).simulate(DAY, "ETH/USDT")
    c = market(seed=2).simulate(DAY, "ETH/USDT")
    assert a.equals(b)
    assert not np.allclose(book_arrays(a)["bid_qty"][:100], book_arrays(c)["bid_qty"][:100])


def test_books_are_never_crossed_and_levels_are_ordered() -> None:
    m = market()
    for symbol in ("BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT"):
        frame = m.simulate(DAY, symbol)
        clean, quarantined = validate_snapshots(frame)
        assert quarantined.height == 0, quarantined["reason"].value_counts()
        books = book_arrays(clean)
        assert (books["bid_px"][:, 0] < books["ask_px"][:, 0]).all()
        assert (np.diff(books["bid_px"], axis=1) < 0).all()
        assert (np.diff(books["ask_px"], axis=1) > 0).all()


def test_session_gap_and_dropouts_leave_invalid_steps() -> None:
    m = market(dropout_rate=0.01, session_gap_s=120)
    frame = m.simulate(DAY, "BTC/USDT")
    _, fresh = align_to_grid(frame["receive_ts"].to_numpy(), day_grid_ns(DAY, CADENCE_MS), CADENCE_MS * 10**6)
    assert not fresh[: 120 * 1000 // CADENCE_MS].any()
    assert 0.005 < 1 - fresh[120 * 1000 // CADENCE_MS :].mean() < 0.02


def _labelled_day(m: SyntheticMarket, symbol: str, horizon: int):
    frame = m.simulate(DAY, symbol)
    books = book_arrays(frame)
    row, fresh = align_to_grid(frame["receive_ts"].to_numpy(), day_grid_ns(DAY, CADENCE_MS), CADENCE_MS * 10**6)
    mids = np.where(fresh, (books["bid_px"][row, 0] + books["ask_px"][row, 0]) / 2, np.nan)[:, None]
    returns = forward_log_returns(mids, fresh[:, None], [horizon], len(mids))[:, 0, 0]
    volatility = trailing_volatility(mids, fresh[:, None], 60)[:, 0]
    steps = np.flatnonzero(np.isfinite(returns) & np.isfinite(volatility))
    edges = class_edges(LabelsConfig(), returns[steps], volatility[steps], horizon, np.ones(len(steps), bool))
    return steps, classify(returns[steps], edges), edges


@pytest.mark.parametrize("symbol", ["BTC/USDT", "ETH/USDT"])
def test_oracle_is_calibrated_and_beats_the_majority_class(symbol: str) -> None:
    m = market(signal_strength=0.4, signal_half_life_s=120)
    horizon = 6
    steps, classes, edges = _labelled_day(m, symbol, horizon)
    probs = m.oracle_probabilities(DAY, symbol, steps, horizon, edges)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    # Calibration: the mean predicted probability of each class matches its frequency.
    frequency = np.bincount(classes, minlength=probs.shape[1]) / len(classes)
    np.testing.assert_allclose(probs.mean(axis=0), frequency, atol=0.02)
    # A calibrated forecaster's realized log loss equals its own expected log loss (entropy).
    realized = -np.log(probs[np.arange(len(classes)), classes]).mean()
    expected = -(probs * np.log(probs)).sum(axis=1).mean()
    assert abs(realized - expected) < 0.03
    prior_log_loss = -(frequency * np.log(frequency)).sum()
    assert realized < prior_log_loss - 0.05
    oracle_accuracy = (probs.argmax(axis=1) == classes).mean()
    assert oracle_accuracy > frequency.max() + 0.05


def test_no_signal_means_no_edge() -> None:
    m = market(signal_strength=0.0)
    horizon = 6
    steps, classes, edges = _labelled_day(m, "ETH/USDT", horizon)
    probs = m.oracle_probabilities(DAY, "ETH/USDT", steps, horizon, edges)
    # Without a planted signal the oracle knows only the volatility: it cannot beat the prior by much.
    assert (probs.argmax(axis=1) == classes).mean() < np.bincount(classes).max() / len(classes) + 0.03


def test_a_symbol_does_not_depend_on_the_other_configured_symbols() -> None:
    resource = SyntheticMarketResource(
        seed=1, cadence_ms=CADENCE_MS, depth=10, params_json=SyntheticConfig().model_dump_json()
    )
    with_btc = resource.snapshots(DAY, ["BTC/USDT", "ETH/USDT"]).filter(pl.col("symbol") == "ETH/USDT")
    with_sol = resource.snapshots(DAY, ["SOL/USDT", "ETH/USDT"]).filter(pl.col("symbol") == "ETH/USDT")
    assert with_btc.height > 0
    assert with_btc.equals(with_sol)
