"""Block-bootstrap confidence intervals for means (and ratios of means) of per-sample scores,
and how many of the samples are independent.

Test samples overlap in time (a label spans the horizon, samples are a step or a few apart), so
an i.i.d. bootstrap would understate the uncertainty. We use ``arch``'s stationary bootstrap
(Politis & Romano, 1994) with the expected block length chosen by the Politis-White (2004)
automatic rule (``arch.bootstrap.optimal_block_length``), at least the horizon in steps: as the
test part keeps every step (less the invalid ones), that is at least the horizon in samples. The
stationary bootstrap draws block lengths from a geometric distribution with that mean, so single
blocks may be shorter; the long ones carry the dependence.

:func:`independent_outcomes` counts what the samples hold: the most samples whose outcome
windows do not overlap.
"""

from __future__ import annotations

import numpy as np
from arch.bootstrap import StationaryBootstrap, optimal_block_length

from bmlt_assets.core.evaluation_report import Interval

REPS = 500


def block_length(series: np.ndarray, minimum: float = 1.0) -> float:
    if len(series) <= 10 or np.ptp(series) == 0:  # too short, or constant (two identical predictors): no rule
        return minimum
    rule = float(optimal_block_length(series)["stationary"].iloc[0])
    return max(minimum, rule if np.isfinite(rule) else 1.0)


def mean_interval(series: np.ndarray, minimum_block: float = 1.0, level: float = 0.95, seed: int = 0) -> Interval:
    """Mean of ``series`` with a percentile block-bootstrap CI (stationary bootstrap)."""
    series = np.asarray(series, dtype=np.float64)
    block = block_length(series, minimum_block)
    # arch annotates block_size as int, but the stationary bootstrap only uses 1 / block_size (the
    # probability of starting a new block): a fractional expected block length is valid.
    bootstrap = StationaryBootstrap(block, series, seed=np.random.default_rng(seed))  # type: ignore[arg-type]
    low, high = bootstrap.conf_int(np.mean, reps=REPS, method="percentile", size=level)[:, 0]
    return Interval(float(series.mean()), float(low), float(high), block)


def ratio_interval(
    numerator: np.ndarray, denominator: np.ndarray, minimum_block: float = 1.0, level: float = 0.95, seed: int = 0
) -> Interval:
    """``mean(numerator) / mean(denominator)`` of paired per-sample series (a capture ratio) with a
    percentile CI from the stationary bootstrap resampling both series together."""
    numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    block = block_length(numerator, minimum_block)
    bootstrap = StationaryBootstrap(block, numerator, denominator, seed=np.random.default_rng(seed))  # type: ignore[arg-type]
    low, high = bootstrap.conf_int(
        lambda top, bottom: np.array([top.mean() / bottom.mean()]), reps=REPS, method="percentile", size=level
    )[:, 0]
    return Interval(float(numerator.mean() / denominator.mean()), float(low), float(high), block)


def independent_outcomes(steps: np.ndarray, horizon: int) -> int:
    """The number of samples at sorted ``steps`` whose outcome windows ``(t, t + horizon]`` do
    not overlap: taken greedily from the first, which is the most there are. Contiguous samples
    hold about one per horizon; a gap in the samples starts a new window."""
    count, free_from = 0, -np.inf
    for step in np.asarray(steps).tolist():  # a plain loop: each choice depends on the last
        if step >= free_from:
            count += 1
            free_from = step + horizon
    return count
