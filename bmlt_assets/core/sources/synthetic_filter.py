"""The synthetic oracle's filter, step by step, compiled (``SyntheticMarket.filtered`` sets it up).

The filter goes one step at a time through a day (86,400 steps at 1 s), which took 6-9 s a day in
numpy; the oracle filters the test day and every fresh day. numba makes it about 0.4 s a day. This
module is imported on the first filter, so that loading the code location does not import numba.
"""

from __future__ import annotations

import math

import numba
import numpy as np

SQRT2, SQRT_2PI = math.sqrt(2.0), math.sqrt(2 * math.pi)  # for the normal law


@numba.njit(cache=True, nogil=True)
def filter_steps(
    transition: np.ndarray,
    process: np.ndarray,
    regime: np.ndarray,
    published: np.ndarray,
    readings: np.ndarray,
    rows: np.ndarray,
    noise_var: float,
    low: np.ndarray,
    high: np.ndarray,
    mixing: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per step: the mean and variance of every state symbol's signal ``mixing @ z``, and of each
    observed symbol's true log mid, with the covariance of its own signal and its mid. The state
    is the flows ``z`` (k), then the observed symbols' true log mids (``rows``: each one's flow)."""
    n, n_mids = published.shape
    k = mixing.shape[0]
    transposed = np.ascontiguousarray(transition.T)
    signal_mean, signal_var = np.empty((n, k)), np.empty((n, k))
    mid_mean, mid_var, cross = np.full((n, n_mids), np.nan), np.full((n, n_mids), np.nan), np.full((n, n_mids), np.nan)
    m, cov = np.zeros(transition.shape[0]), np.zeros(transition.shape)
    for i in range(k):
        cov[i, i] = 1.0  # the stationary prior of the flows at midnight
    started = np.zeros(n_mids, dtype=np.bool_)  # a mid is unknown until its symbol's first book
    for j in range(n):
        if j:
            m = transition @ m
            cov = transition @ cov @ transposed + process[regime[j - 1]]
        for i in range(n_mids):
            # Each reading is one flow plus its own noise: conditioning on them one at a time is
            # the joint update.
            if published[j, i]:
                m, cov = _reading_update(m, cov, rows[i], readings[j, i], noise_var)
        for i in range(n_mids):
            if np.isfinite(low[j, i]):
                x, lo, hi = k + i, low[j, i], high[j, i]
                if started[i]:
                    m, cov = _interval_update(m, cov, x, lo, hi)
                else:  # a diffuse prior: uniform on the first interval, independent of the flows
                    started[i] = True
                    cov[x, :] = 0.0
                    cov[:, x] = 0.0
                    m[x], cov[x, x] = (lo + hi) / 2, (hi - lo) ** 2 / 12
        flows = np.ascontiguousarray(cov[:k, :k])
        signal_mean[j] = mixing @ np.ascontiguousarray(m[:k])
        for a in range(k):
            signal_var[j, a] = mixing[a] @ flows @ mixing[a]
        for i in range(n_mids):
            if started[i]:
                mid_mean[j, i], mid_var[j, i] = m[k + i], cov[k + i, k + i]
                cross[j, i] = mixing[rows[i]] @ np.ascontiguousarray(cov[:k, k + i])
    return signal_mean, signal_var, mid_mean, mid_var, cross


@numba.njit(cache=True, nogil=True)
def _reading_update(
    mean: np.ndarray, cov: np.ndarray, index: int, value: float, noise_var: float
) -> tuple[np.ndarray, np.ndarray]:
    """Condition N(mean, cov) on ``value = state[index] + N(0, noise_var)``."""
    gain = cov[:, index] / (cov[index, index] + noise_var)
    updated = cov - np.outer(gain, cov[index, :])
    return mean + gain * (value - mean[index]), (updated + updated.T) / 2


@numba.njit(cache=True, nogil=True)
def _interval_update(
    mean: np.ndarray, cov: np.ndarray, index: int, low: float, high: float
) -> tuple[np.ndarray, np.ndarray]:
    """Condition N(mean, cov) on ``low <= state[index] < high`` and project the result back on a
    Gaussian with its exact mean and covariance (assumed-density filtering): the rest of the
    state moves with ``state[index]`` by linear regression, which holds for the truncated law too."""
    prior_mean, prior_var = mean[index], cov[index, index]
    sd = np.sqrt(prior_var)
    shift, shrink = _truncated_moments((low - prior_mean) / sd, (high - prior_mean) / sd)
    gain = cov[:, index] / prior_var
    mean = mean + gain * sd * shift
    cov = cov - np.outer(gain, gain) * prior_var * (1 - shrink)
    return mean, (cov + cov.T) / 2


@numba.njit(cache=True, nogil=True)
def _truncated_moments(a: float, b: float) -> tuple[float, float]:
    """Mean and variance of a standard normal truncated to [a, b): the textbook formulas, on the
    tail nearer zero for accuracy (scipy.stats.truncnorm takes tens of microseconds a call and the
    filter makes one per book)."""
    sign = 1.0
    if a > 0:  # the same law mirrored: keep the computation in the left half, where Phi is small
        a, b, sign = -b, -a, -1.0
    width, centre = b - a, (a + b) / 2
    if width < 1e-3:  # nearly uniform on the interval: the expansion is exact to O(width^4)
        return sign * (centre - centre * width**2 / 12), width**2 / 12
    mass = (math.erfc(-b / SQRT2) - math.erfc(-a / SQRT2)) / 2  # Phi(b) - Phi(a)
    if not mass > 1e-300:  # far outside the prediction: the interval alone
        return sign * centre, width**2 / 12
    density_a, density_b = math.exp(-a * a / 2) / SQRT_2PI, math.exp(-b * b / 2) / SQRT_2PI
    mean = (density_a - density_b) / mass
    var = 1 + (a * density_a - b * density_b) / mass - mean**2
    return sign * mean, max(var, width**2 * 1e-6)
