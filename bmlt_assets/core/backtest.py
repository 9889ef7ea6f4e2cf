"""A simple, honest backtest of a probabilistic forecaster.

Policy: at a sample step with no open position, go long when the probability mass of the classes
above zero exceeds ``threshold``, short when the mass below zero does; hold for exactly the
horizon, then flat. Positions never overlap. Each trade pays ``fee_bps`` on entry and on exit plus
half the quoted spread on entry and on exit (the spread at entry stands for both).

Sharpe is annualized for a market that trades 24/7:
``Sharpe = mean(r) / std(r) x sqrt(trades per year)``, with trades per year = trades / (test span
in seconds) x 365.25 x 86,400, r the per-trade net log returns.

The economics: the edge per trade before costs (the mean gross return), and the break-even fee
per side, at which the mean net return is zero. Which trades are taken does not depend on the
fee, so the mean net return at a fee f is ``edge - 2 f - mean spread`` exactly, and the
break-even fee is ``(edge - mean spread) / 2``; below zero, the half spreads alone cost more
than the edge. The net mean return per trade gets a 95% block-bootstrap interval from
:data:`MIN_TRADES_FOR_INTERVAL` trades on (trades never overlap).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bmlt_assets.core.evaluation_report import Pnl
from bmlt_assets.core.uncertainty import mean_interval

SECONDS_PER_YEAR = 365.25 * 86_400
MIN_TRADES_FOR_INTERVAL = 10  # a bootstrap of fewer trades says nothing about the mean


@dataclass(frozen=True)
class Backtest:
    entries: np.ndarray  # sample indices where a position opened
    sides: np.ndarray  # +1 long, -1 short
    gross: np.ndarray  # per-trade log return before costs
    costs: np.ndarray  # per-trade costs (log-return units)
    span_s: float
    fee_bps: float  # per side, part of ``costs``

    @property
    def net(self) -> np.ndarray:
        return self.gross - self.costs

    @property
    def equity(self) -> np.ndarray:
        return np.cumsum(self.net)

    def summary(self) -> Pnl:
        net = self.net
        trades = len(net)
        equity = np.concatenate([[0.0], self.equity])
        per_year = trades / self.span_s * SECONDS_PER_YEAR if self.span_s > 0 else 0.0
        std = net.std(ddof=1) if trades > 1 else 0.0
        edge_bps = break_even = low = high = None
        if trades:
            edge_bps = float(self.gross.mean() * 1e4)
            spread_bps = float(self.costs.mean() * 1e4) - 2 * self.fee_bps
            break_even = (edge_bps - spread_bps) / 2
        if trades >= MIN_TRADES_FOR_INTERVAL:
            interval = mean_interval(net * 1e4)
            low, high = interval.low, interval.high
        return Pnl(
            trades=trades,
            hit_rate=float((net > 0).mean()) if trades else 0.0,
            mean_return_bps=float(net.mean() * 1e4) if trades else 0.0,
            total_return_bps=float(net.sum() * 1e4),
            costs_bps=float(self.costs.sum() * 1e4),
            sharpe_annualized=float(net.mean() / std * np.sqrt(per_year)) if std > 0 else 0.0,
            max_drawdown_bps=float((np.maximum.accumulate(equity) - equity).max() * 1e4),
            turnover_per_day=float(2 * trades / (self.span_s / 86_400)) if self.span_s > 0 else 0.0,
            gross_mean_bps=edge_bps,
            break_even_fee_bps=break_even,
            mean_return_low_bps=low,
            mean_return_high_bps=high,
        )


def direction_masses(probabilities: np.ndarray, up: np.ndarray, down: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return probabilities[:, up].sum(axis=1), probabilities[:, down].sum(axis=1)


def run_backtest(
    steps: np.ndarray,
    p_up: np.ndarray,
    p_down: np.ndarray,
    realized: np.ndarray,
    spread_bps: np.ndarray,
    horizon: int,
    threshold: float,
    fee_bps: float,
    cadence_s: float,
) -> Backtest:
    """``steps`` sorted sample steps; ``realized`` the forward log return over ``horizon`` steps."""
    entry_list: list[int] = []
    side_list: list[int] = []
    free_from = -np.inf
    for i, step in enumerate(steps):
        if step < free_from:
            continue
        side = 1 if p_up[i] > threshold and p_up[i] >= p_down[i] else -1 if p_down[i] > threshold else 0
        if side:
            entry_list.append(i)
            side_list.append(side)
            free_from = step + horizon
    entries = np.asarray(entry_list, dtype=np.int64)
    sides = np.asarray(side_list, dtype=np.int64)
    gross = sides * realized[entries]
    costs = (2 * fee_bps + spread_bps[entries]) * 1e-4
    span_s = float((steps[-1] - steps[0] + horizon) * cadence_s) if len(steps) else 0.0
    return Backtest(entries, sides, gross, costs, span_s, fee_bps)
