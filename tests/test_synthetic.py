"""The synthetic market: deterministic, well-formed books, a planted signal and a truly Bayes-optimal oracle."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from scipy.signal import lfilter
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bmlt_assets.core.book import book_arrays, validate_snapshots
from bmlt_assets.core.config import LabelsConfig, SyntheticConfig
from bmlt_assets.core.evaluation import LEAK_TOLERANCE
from bmlt_assets.core.labels import class_edges, classify, forward_log_returns, trailing_volatility
from bmlt_assets.core.representation import align_to_grid, day_grid_ns
from bmlt_assets.core.sources.synthetic import SyntheticMarket
from bmlt_assets.core.uncertainty import mean_interval
from bmlt_resources.synthetic import SyntheticMarketResource

DAY = dt.date(2025, 1, 6)
CADENCE_MS = 5000


def market(seed: int = 1, observed: tuple[str, ...] = (), **params) -> SyntheticMarket:
    return SyntheticMarket(SyntheticConfig(**params), seed=seed, cadence_ms=CADENCE_MS, depth=10, observed=observed)


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


OBSERVED = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
TRAIN_DAY, HELD_OUT = DAY, DAY + dt.timedelta(days=1)
# Noisier queues and a stronger drift: the mid returns then carry much of the information.
RETURNS_MATTER = {"signal_strength": 1.0, "imbalance_noise": 2.0}


def _oracle_day(m: SyntheticMarket, day: dt.date, horizon: int):
    """Samples of ETH/USDT on ``day``: steps, classes, edges and the oracle's probabilities."""
    frame = m.simulate(day, "ETH/USDT")
    books = book_arrays(frame)
    row, fresh = align_to_grid(frame["receive_ts"].to_numpy(), day_grid_ns(day, CADENCE_MS), CADENCE_MS * 10**6)
    mids = np.where(fresh, (books["bid_px"][row, 0] + books["ask_px"][row, 0]) / 2, np.nan)[:, None]
    returns = forward_log_returns(mids, fresh[:, None], [horizon], len(mids))[:, 0, 0]
    volatility = trailing_volatility(mids, fresh[:, None], 60)[:, 0]
    steps = np.flatnonzero(np.isfinite(returns) & np.isfinite(volatility))
    edges = class_edges(LabelsConfig(), returns[steps], volatility[steps], horizon, np.ones(len(steps), bool))
    return steps, classify(returns[steps], edges), m.oracle_probabilities(day, "ETH/USDT", steps, horizon, edges)


def _log_loss(probabilities: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(probabilities[np.arange(len(classes)), classes], 1e-12, None))


def test_the_oracle_uses_every_observed_reading_and_return() -> None:
    """Fed the mid returns of every observed symbol too, the oracle beats the readings-only filter."""
    horizon = 6
    full = market(observed=OBSERVED, **RETURNS_MATTER)
    steps, classes, probabilities = _oracle_day(full, HELD_OUT, horizon)
    readings_only = market(observed=OBSERVED, **RETURNS_MATTER)
    readings_only.observed_log_mids = lambda date, symbol: np.full(readings_only.n, np.nan)
    _, _, without_returns = _oracle_day(readings_only, HELD_OUT, horizon)
    gain = mean_interval(_log_loss(probabilities, classes) - _log_loss(without_returns, classes), horizon)
    assert gain.high < 0  # the returns carry information the old oracle left out


def test_a_richer_feasible_predictor_does_not_beat_the_oracle_and_the_leak_alarm_knows_a_cheat() -> None:
    """A logistic regression on the oracle's own log-probabilities plus summaries of every observed
    queue reading and mid return, fitted on one day, scored on a held-out day, does not beat the
    oracle (it does beat the old, readings-only oracle by a wide margin in this market)."""
    horizon = 6
    m = market(observed=OBSERVED, **RETURNS_MATTER)

    def features(day: dt.date, steps: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """The oracle's log-probabilities, and causal exponential averages (half-lives of 1 to 16
        steps) of every observed symbol's queue readings and mid returns."""
        columns = [np.log(np.clip(probabilities, 1e-12, None))]
        for symbol in OBSERVED:
            latent = m.latent(day, symbol)
            reading = np.where(latent.published, latent.reading, 0.0)
            moves = np.nan_to_num(np.diff(m.observed_log_mids(day, symbol), prepend=np.nan)) * 1e4
            for half_life in (1, 2, 4, 8, 16):
                decay = 0.5 ** (1 / half_life)
                for series in (reading, moves):
                    columns.append(lfilter([1 - decay], [1, -decay], series)[steps, None])
        return np.concatenate(columns, axis=1)

    train_steps, train_classes, train_oracle = _oracle_day(m, TRAIN_DAY, horizon)
    steps, classes, oracle = _oracle_day(m, HELD_OUT, horizon)
    richer = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    richer.fit(features(TRAIN_DAY, train_steps, train_oracle), train_classes)
    predicted = np.zeros_like(oracle)
    predicted[:, richer.classes_] = richer.predict_proba(features(HELD_OUT, steps, oracle))
    richer_vs_oracle = mean_interval(_log_loss(predicted, classes) - _log_loss(oracle, classes), horizon)
    assert not richer_vs_oracle.high < -LEAK_TOLERANCE  # no edge beyond noise: the leak alarm stays quiet

    cheat = np.full_like(oracle, 0.1 / (oracle.shape[1] - 1))
    cheat[np.arange(len(classes)), classes] = 0.9  # a model that saw the realized class
    assert mean_interval(_log_loss(cheat, classes) - _log_loss(oracle, classes), horizon).high < -LEAK_TOLERANCE
