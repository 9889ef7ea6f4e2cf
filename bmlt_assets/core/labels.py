"""Forward returns, trailing volatility and class edges.

A label at step ``t`` uses only data in ``(t, t + h]``; a feature or an edge at ``t`` uses only
data at or before ``t``. Where a horizon crosses an invalid step (a gap, a stale book, data that
does not exist yet) the return is NaN: masked, never filled.
"""

from __future__ import annotations

import numpy as np

from bmlt_assets.core.config import LabelsConfig

# Two books with the same mid but another spread can give (bid + ask) / 2 values a bit apart
# (0.0001 is not exact in binary): a log return this small is no move, never a coin flip between
# the classes either side of a zero edge. A real tick is at least 1e-9 of its price.
NO_MOVE = 1e-12


def forward_log_returns(mids: np.ndarray, valid: np.ndarray, horizons: list[int], steps: int) -> np.ndarray:
    """(steps, H, K) forward log returns for the first ``steps`` rows of ``mids``.

    ``mids``/``valid`` are (steps + extra, K): the day itself followed by as much of the next day
    as is available. Rows past the end count as invalid.
    """
    total, n_symbols = mids.shape
    longest = max(horizons)
    padded_mid = np.full((steps + longest, n_symbols), np.nan)
    padded_valid = np.zeros((steps + longest, n_symbols), dtype=bool)
    usable = min(total, steps + longest)
    padded_mid[:usable] = mids[:usable]
    padded_valid[:usable] = valid[:usable]
    invalid_so_far = np.cumsum(~padded_valid, axis=0)
    log_mid = np.log(np.where(padded_valid, padded_mid, np.nan))
    out = np.full((steps, len(horizons), n_symbols), np.nan)
    now = np.arange(steps)
    for i, h in enumerate(horizons):
        clean = padded_valid[now] & (invalid_so_far[now + h] == invalid_so_far[now])
        move = log_mid[now + h] - log_mid[now]
        out[:, i] = np.where(clean, np.where(np.abs(move) < NO_MOVE, 0.0, move), np.nan)
    return out


def trailing_volatility(mids: np.ndarray, valid: np.ndarray, lookback: int) -> np.ndarray:
    """(S, K) std of the valid one-step log returns in the last ``lookback`` steps, up to t.

    NaN until at least half the lookback holds valid returns.
    """
    log_mid = np.log(np.where(valid, mids, np.nan))
    step_return = np.diff(log_mid, axis=0, prepend=np.nan)
    ok = np.isfinite(step_return)
    r = np.where(ok, step_return, 0.0)

    def trailing_sum(x: np.ndarray) -> np.ndarray:
        c = np.cumsum(x, axis=0)
        c[lookback:] = c[lookback:] - c[:-lookback].copy()
        return c

    count = trailing_sum(ok.astype(np.float64))
    mean = trailing_sum(r) / np.maximum(count, 1)
    var = trailing_sum(r * r) / np.maximum(count, 1) - mean**2
    vol = np.sqrt(np.maximum(var, 0.0))
    return np.where(count >= lookback / 2, vol, np.nan)


def class_edges(
    config: LabelsConfig,
    returns: np.ndarray,
    volatility: np.ndarray,
    horizon: int,
    train: np.ndarray,
) -> np.ndarray:
    """(N, C-1) class edges in log-return units for N samples of one horizon.

    ``volatility`` is the per-step trailing volatility at each sample (known at t). Quantile
    edges are fitted on the samples flagged in ``train`` only.
    """
    n = len(returns)
    if config.edges == "fixed_pct":
        edges = np.log1p(np.asarray(config.fixed_pct_edges) / 100.0)
        return np.broadcast_to(edges, (n, len(edges))).copy()
    if config.edges == "volatility_scaled":
        return np.asarray(config.volatility_edges)[None, :] * (volatility * np.sqrt(horizon))[:, None]
    probabilities = np.arange(1, config.quantile_classes) / config.quantile_classes
    edges = np.quantile(returns[train], probabilities)
    return np.broadcast_to(edges, (n, len(edges))).copy()


def classify(returns: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Class c holds returns in [edges[c-1], edges[c]) (first and last classes open-ended)."""
    return (returns[:, None] >= edges).sum(axis=1)


REGIMES = ("low", "mid", "high")


def volatility_regimes(train_volatility: np.ndarray, volatility: np.ndarray) -> np.ndarray:
    """0, 1 or 2 (``REGIMES``) per sample: its trailing volatility against the terciles of the
    training part's, so that every part and every fresh day is cut at the same levels."""
    return np.searchsorted(np.quantile(train_volatility, [1 / 3, 2 / 3]), volatility)
