"""Standard order-flow features over the model's window, for the gradient-boosted baseline.

Per symbol, from the raw top quotes (``representation.QUOTE_FIELDS``, the same under every
representation and normalization) and the mids of the window ``[t - W + 1, t]`` only:

* queue imbalance ``(bid - ask) / (bid + ask)`` of the quantities of the top 1, 2, 3 and 5 levels at t;
* order-flow imbalance of each of the top 5 levels (Cont, Kukanov & Stoikov, 2014; per level, Xu,
  Varadi & Cont, 2019), summed over the last 1, 5 and W - 1 steps and scaled by the window's
  mean top-5 depth;
* the quoted spread (bps) at t and its mean over the window;
* depth: log1p of the best-level and of the top-5 quantity at t;
* mid log returns (bps) over the last 1, 2, 5, 10, 20 and W - 1 steps (at most W - 1);
* realized volatility: the root mean square of the one-step mid returns (bps) over the last 10
  and W - 1 steps.

Window sums come from cumulative sums over the grid, so a feature costs O(steps), never a copy
of every window.
"""

from __future__ import annotations

import numpy as np

from bmlt_assets.core.representation import QUOTE_FIELDS, QUOTE_LEVELS

FLOW_LEVELS = QUOTE_LEVELS
IMBALANCE_LEVELS = (1, 2, 3, QUOTE_LEVELS)
# Two prices closer than this (relative) are the same price level: the quotes hold distances from
# the mid in float32 bps, which round-trip a price to about 1e-11, and a real tick is at least 1e-9.
SAME_PRICE = 1e-9


def _lags(window: int, wanted: tuple[int, ...]) -> list[int]:
    """The lags of ``wanted`` that fit in the window, plus the whole window (W - 1 steps)."""
    return sorted({lag for lag in wanted if lag < window - 1} | {window - 1})


def feature_names(symbols: list[str], window: int) -> list[str]:
    names = []
    for symbol in symbols:
        names += [f"{symbol} queue imbalance top {n}" for n in IMBALANCE_LEVELS]
        names += [
            f"{symbol} order flow level {level} over {lag} steps"
            for level in range(1, FLOW_LEVELS + 1)
            for lag in _lags(window, (1, 5))
        ]
        names += [f"{symbol} spread bps", f"{symbol} mean spread bps", f"{symbol} log1p best depth"]
        names += [f"{symbol} log1p top {QUOTE_LEVELS} depth"]
        names += [f"{symbol} return bps over {lag} steps" for lag in _lags(window, (1, 2, 5, 10, 20))]
        names += [f"{symbol} realized volatility bps over {lag} steps" for lag in _lags(window, (10,))]
    return names


def _field(quotes: np.ndarray, name: str, level: int) -> np.ndarray:
    """(S, K) float64 of one quote field at one level (1 = best)."""
    return np.asarray(quotes[:, QUOTE_FIELDS.index(name if level == 1 else f"{name}_{level}")], dtype=np.float64)


def _trailing(cumulative: np.ndarray, steps: np.ndarray, lag: int) -> np.ndarray:
    """Sum over the ``lag`` steps ending at each of ``steps`` from an inclusive cumulative sum."""
    return cumulative[steps] - cumulative[steps - lag]


def order_flow_features(quotes: np.ndarray, mids: np.ndarray, steps: np.ndarray, window: int) -> np.ndarray:
    """(N, F) features (``feature_names``) of the samples at ``steps`` from ``quotes`` (S,
    len(QUOTE_FIELDS), K) and ``mids`` (S, K); each sample reads its window's steps only."""
    if steps.size and steps.min() < window - 1:
        raise ValueError(f"a sample at step {steps.min()} has no full window of {window} steps")

    def cumulative(series: np.ndarray) -> np.ndarray:
        """Inclusive cumulative sum with NaN (steps no sample's window reaches) as 0."""
        return np.cumsum(np.nan_to_num(series), axis=0)

    log_mid = np.log(np.asarray(mids, dtype=np.float64))
    one_step = np.diff(log_mid, axis=0, prepend=np.nan) * 1e4  # bps; NaN at step 0
    bid_qty = np.stack([_field(quotes, "bid_qty", level) for level in range(1, QUOTE_LEVELS + 1)])
    ask_qty = np.stack([_field(quotes, "ask_qty", level) for level in range(1, QUOTE_LEVELS + 1)])
    top_depth = np.nansum(bid_qty + ask_qty, axis=0)  # (S, K)
    spread = _field(quotes, "ask_distance_bps", 1) - _field(quotes, "bid_distance_bps", 1)

    columns: list[list[np.ndarray]] = [[] for _ in range(mids.shape[1])]

    def add(values: np.ndarray) -> None:  # (N, K): one column per symbol
        for k in range(values.shape[1]):
            columns[k].append(values[:, k])

    for n in IMBALANCE_LEVELS:
        bid, ask = np.nansum(bid_qty[:n], axis=0)[steps], np.nansum(ask_qty[:n], axis=0)[steps]
        add((bid - ask) / np.maximum(bid + ask, 1e-12))
    scale = _trailing(cumulative(top_depth), steps, window - 1) / (window - 1)
    for level in range(1, FLOW_LEVELS + 1):
        flow = cumulative(_level_flow(quotes, mids, level))
        for lag in _lags(window, (1, 5)):
            add(_trailing(flow, steps, lag) / np.maximum(scale, 1e-12))
    add(spread[steps])
    add(_trailing(cumulative(spread), steps, window - 1) / (window - 1))
    add(np.log1p(bid_qty[0] + ask_qty[0])[steps])
    add(np.log1p(top_depth)[steps])
    moves = cumulative(one_step)
    for lag in _lags(window, (1, 2, 5, 10, 20)):
        add(_trailing(moves, steps, lag))
    squared = cumulative(one_step**2)
    for lag in _lags(window, (10,)):
        add(np.sqrt(_trailing(squared, steps, lag) / lag))
    return np.stack([column for symbol in columns for column in symbol], axis=1)


def _level_flow(quotes: np.ndarray, mids: np.ndarray, level: int) -> np.ndarray:
    """(S, K) order-flow imbalance of one level from step t - 1 to t: the bid queue's contribution
    (its size if its price rose or held, minus its old size if its price fell or held) minus the
    ask queue's (mirrored); NaN where either step has no book."""
    mid = np.asarray(mids, dtype=np.float64)
    bid_px = mid * (1 + _field(quotes, "bid_distance_bps", level) / 1e4)
    ask_px = mid * (1 + _field(quotes, "ask_distance_bps", level) / 1e4)
    bid_qty, ask_qty = _field(quotes, "bid_qty", level), _field(quotes, "ask_qty", level)

    def moved(price: np.ndarray) -> np.ndarray:
        """+1 up, -1 down, 0 the same level (within SAME_PRICE), NaN unknown; from t - 1 to t."""
        change = np.diff(price, axis=0, prepend=np.nan) / price
        return np.where(np.isnan(change), np.nan, np.where(np.abs(change) < SAME_PRICE, 0.0, np.sign(change)))

    def before(qty: np.ndarray) -> np.ndarray:
        return np.concatenate([np.full((1, qty.shape[1]), np.nan), qty[:-1]])

    bid_move, ask_move = moved(bid_px), moved(ask_px)
    bid_flow = np.where(bid_move >= 0, bid_qty, 0.0) - np.where(bid_move <= 0, before(bid_qty), 0.0)
    ask_flow = np.where(ask_move <= 0, ask_qty, 0.0) - np.where(ask_move >= 0, before(ask_qty), 0.0)
    return np.where(np.isnan(bid_move) | np.isnan(ask_move), np.nan, bid_flow - ask_flow)
