"""The synthetic market: deterministic, well-formed books, a planted signal and a truly Bayes-optimal oracle."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np
import polars as pl
import pytest
from scipy.signal import lfilter
from scipy.special import ndtr
from sklearn.linear_model import LinearRegression, LogisticRegression
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


def _oracle_day(m: SyntheticMarket, day: dt.date, horizon: int, symbol: str = "ETH/USDT"):
    """Samples of ``symbol`` on ``day``: steps, classes and the oracle's probabilities."""
    frame = m.simulate(day, symbol)
    books = book_arrays(frame)
    row, fresh = align_to_grid(frame["receive_ts"].to_numpy(), day_grid_ns(day, CADENCE_MS), CADENCE_MS * 10**6)
    mids = np.where(fresh, (books["bid_px"][row, 0] + books["ask_px"][row, 0]) / 2, np.nan)[:, None]
    returns = forward_log_returns(mids, fresh[:, None], [horizon], len(mids))[:, 0, 0]
    volatility = trailing_volatility(mids, fresh[:, None], 60)[:, 0]
    steps = np.flatnonzero(np.isfinite(returns) & np.isfinite(volatility))
    edges = class_edges(LabelsConfig(), returns[steps], volatility[steps], horizon, np.ones(len(steps), bool))
    return steps, classify(returns[steps], edges), m.oracle_probabilities(day, symbol, steps, horizon, edges)


def _log_loss(probabilities: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(probabilities[np.arange(len(classes)), classes], 1e-12, None))


class ReadingsOnly(SyntheticMarket):
    """The oracle before the mids: the filter reads the queues only (a positive control)."""

    def filter_mid_ticks(self, date: dt.date, symbol: str) -> np.ndarray:
        return np.full(self.n, np.nan)


class RoundingBlind(SyntheticMarket):
    """An oracle that takes the shown mids for exact prices (the oracle before the tick grid):
    the label's threshold is a continuous price, not the grid point above it."""

    @staticmethod
    def shown_below(thresholds, tick, mean, sd, odd):
        return ndtr((np.log(thresholds * tick) - mean) / sd)


def _market_like(cls: type[SyntheticMarket], seed: int = 1, observed=OBSERVED, **params) -> SyntheticMarket:
    return cls(SyntheticConfig(**params), seed=seed, cadence_ms=CADENCE_MS, depth=10, observed=observed)


def test_the_oracle_uses_every_observed_reading_and_return() -> None:
    """Fed the mids of every observed symbol too, the oracle beats the readings-only filter."""
    horizon = 6
    full = market(observed=OBSERVED, **RETURNS_MATTER)
    steps, classes, probabilities = _oracle_day(full, HELD_OUT, horizon)
    _, _, without_returns = _oracle_day(_market_like(ReadingsOnly, **RETURNS_MATTER), HELD_OUT, horizon)
    gain = mean_interval(_log_loss(probabilities, classes) - _log_loss(without_returns, classes), horizon)
    assert gain.high < 0  # the returns carry information the old oracle left out


def _causal_summaries(m: SyntheticMarket, day: dt.date, symbols: tuple[str, ...]) -> np.ndarray:
    """(n, F): causal exponential averages (half-lives of 1, 4, 16 and 64 steps) of every symbol's queue
    readings and mid moves (bps), what any model of these books could compute at each step."""
    columns = []
    for symbol in symbols:
        latent = m.latent(day, symbol)
        reading = np.where(latent.published, latent.reading, 0.0)
        moves = np.nan_to_num(np.diff(m.observed_log_mids(day, symbol), prepend=np.nan)) * 1e4
        for half_life in (1, 4, 16, 64):
            decay = 0.5 ** (1 / half_life)
            for series in (reading, moves):
                columns.append(lfilter([1 - decay], [1, -decay], series))
    return np.stack(columns, axis=1)


def _out_of_sample_gain(m: SyntheticMarket, symbol: str, error: Callable[[dt.date], np.ndarray]) -> dict[str, float]:
    """How much a linear regression on what a model sees (and the filter's own mean), fitted on
    one day, shrinks the squared ``error`` on the next: the mean of e^2 - (e - predicted)^2 and
    its block-bootstrap CI; 0 or below means unpredictable."""

    def features(day: dt.date) -> np.ndarray:
        posterior = m.filtered(day, OBSERVED)[symbol]
        return np.concatenate([_causal_summaries(m, day, OBSERVED), posterior.signal_mean[:, None]], axis=1)

    settled = slice(200, None)  # after the session's first books
    fitted = LinearRegression().fit(features(TRAIN_DAY)[settled], error(TRAIN_DAY)[settled])
    e = error(HELD_OUT)[settled]
    predicted = fitted.predict(features(HELD_OUT)[settled])
    return mean_interval(e**2 - (e - predicted) ** 2, 10)


def test_the_filters_error_is_unpredictable_from_what_a_model_sees_and_the_readings_only_filters_is_not() -> None:
    """The ground truth: the simulation knows the signal. The exact posterior's standardized error
    (s - E[s | books]) / sd[s | books] has mean 0 and variance 1 given anything a model could
    compute from the books, so no regression on such features predicts it out of sample. The
    readings-only filter ignores the mids, so its error is predictable: the test has power."""

    def standardized_error(m: SyntheticMarket) -> Callable[[dt.date], np.ndarray]:
        def error(day: dt.date) -> np.ndarray:
            posterior = m.filtered(day, OBSERVED)["ETH/USDT"]
            return (m.latent(day, "ETH/USDT").signal - posterior.signal_mean) / np.sqrt(posterior.signal_var)

        return error

    full = market(observed=OBSERVED, **RETURNS_MATTER)
    gain = _out_of_sample_gain(full, "ETH/USDT", standardized_error(full))
    assert gain.low < 0 and gain.high < 0.005  # under 0.5 % of the error's variance, if any
    spread = mean_interval(standardized_error(full)(HELD_OUT)[200:] ** 2, 10)
    assert spread.low < 1 < spread.high  # the posterior variance is the error's variance
    mid_error = (full.true_log_mids(HELD_OUT, "ETH/USDT") - full.filtered(HELD_OUT, OBSERVED)["ETH/USDT"].mid_mean) / (
        np.sqrt(full.filtered(HELD_OUT, OBSERVED)["ETH/USDT"].mid_var)
    )
    assert 0.97 < np.mean(mid_error[200:] ** 2) < 1.03  # the true mid's posterior too

    readings_only = _market_like(ReadingsOnly, **RETURNS_MATTER)
    control = _out_of_sample_gain(readings_only, "ETH/USDT", standardized_error(readings_only))
    assert control.low > 0.05  # the mids it ignores predict its error


def _stacked(m: SyntheticMarket, symbol: str, horizon: int, extra: Callable[[dt.date, np.ndarray], np.ndarray]):
    """A multinomial logistic regression on the oracle's log-odds and ``extra`` features,
    fitted on one day and scored on the next: model - oracle log loss (CI) on the held-out day."""
    train_steps, train_classes, train_oracle = _oracle_day(m, TRAIN_DAY, horizon, symbol)
    steps, classes, oracle = _oracle_day(m, HELD_OUT, horizon, symbol)

    def features(day: dt.date, steps: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        log_p = np.log(np.clip(probabilities, 1e-12, None))  # as log-odds against the last class: full rank
        return np.concatenate([log_p[:, :-1] - log_p[:, -1:], extra(day, steps)], axis=1)

    stacker = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    stacker.fit(features(TRAIN_DAY, train_steps, train_oracle), train_classes)
    predicted = np.zeros_like(oracle)
    predicted[:, stacker.classes_] = stacker.predict_proba(features(HELD_OUT, steps, oracle))
    return mean_interval(_log_loss(predicted, classes) - _log_loss(oracle, classes), horizon)


def test_a_richer_feasible_predictor_does_not_beat_the_oracle_but_beats_the_readings_only_one() -> None:
    """A logistic regression on the oracle's own log-probabilities plus causal summaries of every
    observed queue reading and mid move, fitted on one day, scored on a held-out day, does not
    beat the oracle; on top of the readings-only oracle it does, by a wide margin (the positive
    control: the stacker has the power to find a missing input)."""
    horizon = 6
    full = market(observed=OBSERVED, **RETURNS_MATTER)
    summaries = lambda m: lambda day, steps: _causal_summaries(m, day, OBSERVED)[steps]  # noqa: E731
    richer_vs_oracle = _stacked(full, "ETH/USDT", horizon, summaries(full))
    assert not richer_vs_oracle.high < -LEAK_TOLERANCE  # no edge beyond noise: the leak alarm stays quiet
    readings_only = _market_like(ReadingsOnly, **RETURNS_MATTER)
    assert _stacked(readings_only, "ETH/USDT", horizon, summaries(readings_only)).high < -0.01


def test_the_leak_alarm_knows_a_cheat() -> None:
    horizon = 6
    _, classes, oracle = _oracle_day(market(observed=OBSERVED, **RETURNS_MATTER), HELD_OUT, horizon)
    cheat = np.full_like(oracle, 0.1 / (oracle.shape[1] - 1))
    cheat[np.arange(len(classes)), classes] = 0.9  # a model that saw the realized class
    assert mean_interval(_log_loss(cheat, classes) - _log_loss(oracle, classes), horizon).high < -LEAK_TOLERANCE


COARSE = ("BTC/USDT", "ETH/USDT", "XRP/USDT")  # XRP/USDT: a tick is 0.0001 of a price of 0.6


def test_on_a_coarse_tick_target_no_feasible_predictor_beats_the_oracle() -> None:
    """XRP/USDT's tick is about 2 of its 5 s moves' standard deviations' worth of price: many
    10 s labels are a move of 0 or 1 tick. A stacker that also reads where the shown mid sits on
    the grid (its fraction, the spread's parity, recent tick moves) does not beat the tick-exact
    oracle; it does beat the rounding-blind one, which the tick-exact oracle beats too."""
    horizon = 2

    def rounding(m: SyntheticMarket) -> Callable[[dt.date, np.ndarray], np.ndarray]:
        def features(day: dt.date, steps: np.ndarray) -> np.ndarray:
            shown = np.nan_to_num(m.observed_mid_ticks(day, "XRP/USDT"))
            moves = np.diff(shown, prepend=shown[0])
            columns = [shown % 1, (shown * 2) % 2]  # a half-integer mid means an odd spread
            for half_life in (1, 2, 4, 8):
                decay = 0.5 ** (1 / half_life)
                columns += [lfilter([1 - decay], [1, -decay], moves), lfilter([1 - decay], [1, -decay], moves != 0)]
            return np.stack(columns, axis=1)[steps]

        return features

    exact = _market_like(SyntheticMarket, observed=COARSE)
    assert not _stacked(exact, "XRP/USDT", horizon, rounding(exact)).high < -LEAK_TOLERANCE
    blind = _market_like(RoundingBlind, observed=COARSE)
    assert _stacked(blind, "XRP/USDT", horizon, rounding(blind)).high < -0.005
    steps, classes, tick_exact = _oracle_day(exact, HELD_OUT, horizon, "XRP/USDT")
    rounding_blind = _oracle_day(blind, HELD_OUT, horizon, "XRP/USDT")[2]
    gain = mean_interval(_log_loss(tick_exact, classes) - _log_loss(rounding_blind, classes), horizon)
    assert gain.high < -0.01  # what the grid is worth on this target: well beyond noise


def test_a_move_of_no_ticks_is_a_return_of_zero_whatever_the_spread() -> None:
    """(bid + ask) / 2 of two books showing the same mid with different spreads can differ in the
    last bit (0.0001 is not exact in binary): that is a return of 0, not a coin flip between the
    classes either side of the zero edge."""
    tick = 0.0001
    mids = np.array([[(6001 * tick + 6002 * tick) / 2], [(6000 * tick + 6003 * tick) / 2]])
    assert mids[0, 0] != mids[1, 0]  # the float noise is there
    returns = forward_log_returns(mids, np.ones_like(mids, dtype=bool), [1], 1)
    assert returns[0, 0, 0] == 0.0
    assert classify(returns[:, 0, 0], np.array([[-1e-4, 0.0, 1e-4]]))[0] == 2  # [0, 1e-4): the zero edge's upper class
