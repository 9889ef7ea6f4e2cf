"""The promotion gate: when the challenger may take the ``champion`` alias (docs/design.md §4, decision 9).

The challenger is promoted only when, on the same purged test window, its per-sample log loss is
lower than that of every baseline (the gradient-boosted one on order-flow features included) and of
the current champion with a 95% block-bootstrap
interval of the difference entirely below zero, and its top-label ECE is below the threshold.
With no champion yet, beating the baselines (and the ECE bar) is enough.

That is a verdict on forecast quality, not on trading. With ``promotion.require_profit_at_fee``
the challenger must also make money at the stated costs at every horizon (the 95% interval of
its net mean return per trade above zero). Either way the verdict carries the model's P&L at the
stated costs, and its :attr:`Verdict.sentence` says in one sentence what it rests on and whether
the model makes money.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bmlt_assets.core.config import PromotionConfig
from bmlt_assets.core.evaluation_report import BASELINES, CHAMPION, FoldSummary, HorizonReport, Interval, Pnl
from bmlt_assets.core.readable import PROSE, interval, number

FORECAST_BASIS = "on forecast quality (log loss against every baseline and the champion, and calibration)"
PROFIT_BASIS = f"{FORECAST_BASIS} and on profit at the stated costs"


@dataclass
class Verdict:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    basis: str = FORECAST_BASIS  # what the verdict rests on
    trading: list[str] = field(default_factory=list)  # per horizon: the model's P&L at the stated costs
    profitable: bool | None = None  # the model makes money at every horizon; None: not measured

    @property
    def outcome(self) -> str:
        return "PROMOTED to @champion" if self.promote else "NOT PROMOTED"

    @property
    def grounds(self) -> str:
        """What the verdict rests on and whether the model makes money: the sentence after the outcome."""
        if self.profitable is None:
            return f"{self.basis}."
        pnl = "; ".join(self.trading)
        if self.basis == PROFIT_BASIS:
            return f"{self.basis}: {pnl}."
        if self.profitable:
            return f"{self.basis} alone; at the stated costs the model also makes money: {pnl}."
        return (
            f"{self.basis} alone, a statistical verdict and not a trading one: at the stated costs the model "
            f"LOSES money: {pnl}."
        )

    @property
    def sentence(self) -> str:
        """The verdict, what it rests on and, in the same sentence, whether the model makes money."""
        return f"{self.outcome} {self.grounds}"


FLOAT32_TIE = 1e-6  # nats: below this, a challenger-minus-champion difference is rounding (see promotion_verdict)


def _not_below_zero(d: Interval) -> str:
    """Why a challenger-minus-other log-loss interval fails: a tie, or the challenger is worse."""
    where = "includes 0 (a tie)" if d.low <= 0 else "lies entirely above 0 (the challenger is worse)"
    if d.high < 0:  # below zero by rounding only
        where = f"is within {FLOAT32_TIE:g} nats of 0 (float32 rounding: a tie)"
    return f"log-loss difference (challenger minus it) CI {interval(d.low, d.high, PROSE)} {where}"


def net_ci(pnl: Pnl) -> str:
    """`` (95% CI [low, high])``: the interval of the net mean return per trade (bps); '' where there
    were too few trades for one."""
    if pnl.mean_return_low_bps is None:
        return ""
    return f" (95% CI {interval(pnl.mean_return_low_bps, pnl.mean_return_high_bps, PROSE)})"


def economics(pnl: Pnl) -> str:
    """Where the money goes per trade: the edge before costs, the costs and the break-even fee
    ('' where not recorded: no trade, or a report of an earlier version)."""
    if pnl.gross_mean_bps is None:
        return ""
    return (
        f"an edge of {number(pnl.gross_mean_bps, PROSE, sign=True)} bps per trade before costs of "
        f"{number(pnl.costs_per_trade_bps, PROSE)} bps, break-even at a fee of "
        f"{number(pnl.break_even_fee_bps, PROSE)} bps per side"
    )


def trading_line(horizon_s: float, pnl: Pnl, fee_bps: float) -> str:
    """The model's P&L at one horizon in a few words: net per trade with its interval, the
    trades, the edge before costs and the break-even fee."""
    if not pnl.trades:
        return f"{horizon_s:g} s: no trade (no direction's probability mass passed the threshold)"
    return (
        f"{horizon_s:g} s: {number(pnl.mean_return_bps, PROSE, sign=True)} bps per trade net{net_ci(pnl)} over "
        f"{number(pnl.trades)} trades at {fee_bps:g} bps per side, {economics(pnl)}"
    )


def _unprofitable(entry: HorizonReport) -> str:
    """Why a horizon fails ``require_profit_at_fee`` ('' when it passes)."""
    pnl = entry.model.pnl
    if pnl.profitable_beyond_noise:
        return ""
    if not pnl.trades:
        why = "it never traded"
    elif pnl.mean_return_low_bps is None:
        why = f"{pnl.trades} trades are too few to tell"
    elif pnl.profitable:
        why = (
            f"its net mean return per trade's 95% CI "
            f"{interval(pnl.mean_return_low_bps, pnl.mean_return_high_bps, PROSE)} bps includes 0"
        )
    else:
        why = f"it loses {number(-pnl.mean_return_bps, PROSE)} bps per trade net"
    return f"{entry.horizon_s:g} s: not profitable at {entry.costs.fee_bps_per_side:g} bps per side: {why}"


def promotion_verdict(
    baseline_differences: dict[str, Interval],
    champion_difference: Interval | None,
    ece: float,
    max_ece: float,
) -> Verdict:
    """``*_difference``: mean and CI of challenger minus other log loss."""
    reasons = []
    for name, d in baseline_differences.items():
        if not d.below_zero:
            reasons.append(f"does not beat {name}: {_not_below_zero(d)}")
    # The champion is scored through its logged model, whose probabilities are float32: the same
    # model then differs from itself by about 1e-8 nats a sample, which is no win.
    if champion_difference is not None and not champion_difference.high < -FLOAT32_TIE:
        reasons.append(f"does not beat the champion: {_not_below_zero(champion_difference)}")
    if not ece < max_ece:
        reasons.append(f"ECE {number(ece, PROSE)} is not below {max_ece:g}")
    numbers: dict[str, Any] = {"ece": ece, "max_ece": max_ece}
    numbers |= {f"vs_{k}": asdict(v) for k, v in baseline_differences.items()}
    if champion_difference is not None:
        numbers["vs_champion"] = asdict(champion_difference)
    return Verdict(
        promote=not reasons,
        reasons=reasons or ["beats every baseline and the champion, ECE below threshold"],
        numbers=numbers,
    )


# Spec fields a champion must share with the challenger to be compared like for like: the same
# target, horizons, classes (their count, and ``labels``: the kind of edges, their values, the
# volatility lookback, quantile edges as fitted), inputs (symbols, levels, representation) and
# cadence. Older specs without a field are never comparable.
COMPARABLE_SPEC = ("target", "symbols", "horizons_s", "n_classes", "labels", "levels", "representation", "cadence_ms")


def incomparability(
    champion_spec: dict[str, Any], challenger_spec: dict[str, Any], test_period_ns: tuple[int, int]
) -> str:
    """Why the champion cannot be scored against the challenger on its test window ('' if it can).

    Its window may be shorter (the challenger's test windows hold it), and it must never have
    been fitted on any of the test window: that would flatter it."""
    differing = [k for k in COMPARABLE_SPEC if champion_spec.get(k) != challenger_spec.get(k)]
    if "labels" in differing:  # name what differs: another class is another question
        theirs, ours = champion_spec.get("labels") or {}, challenger_spec.get("labels") or {}
        keys = sorted(set(theirs) | set(ours), key=lambda k: (k != "edges", k))
        detail = [k for k in keys if theirs.get(k) != ours.get(k)] or ["labels"]
        differing[differing.index("labels")] = f"classes ({', '.join(detail)})"
    if differing:
        return f"other {', '.join(differing)}"
    if champion_spec["window_steps"] > challenger_spec["window_steps"]:
        return f"a longer window ({champion_spec['window_steps']} > {challenger_spec['window_steps']} steps)"
    first, last = champion_spec["fitted_ns"]
    if first <= test_period_ns[1] and test_period_ns[0] <= last:
        return "it was trained or validated on part of this test window"
    return ""


def gate(
    report: list[HorizonReport],
    champion_exists: bool,
    champion_compared: bool,
    rules: PromotionConfig,
    note: str,
    walk_forward: Sequence[FoldSummary] = (),
) -> Verdict:
    """Every horizon must pass; a champion that could not be compared is never replaced, and a
    probable look-ahead leak, on the test part or in any walk-forward fold, is never promoted,
    whatever its numbers; with ``rules.require_profit_at_fee`` an unprofitable model is not
    either. Reasons name each horizon in seconds (``horizon_s``), as the report does."""
    blocking = [
        f"{entry.horizon_s:g} s: probable look-ahead leak (beats the Bayes-optimal oracle)"
        for entry in report
        if entry.leak_suspected
    ]
    blocking += [
        f"{entry.horizon_s:g} s: probable look-ahead leak in walk-forward fold {fold.fold} (its model beats "
        "the Bayes-optimal oracle on its test block)"
        for fold in walk_forward[:-1]  # the latest fold's test block is the report's test part
        for entry, horizon in zip(report, fold.horizons)
        if horizon.leak_suspected
    ]
    if rules.require_profit_at_fee:
        blocking += [why for why in map(_unprofitable, report) if why]
    basis = PROFIT_BASIS if rules.require_profit_at_fee else FORECAST_BASIS
    trading = [trading_line(e.horizon_s, e.model.pnl, e.costs.fee_bps_per_side) for e in report]
    profitable = all(e.model.pnl.profitable for e in report) if report else None
    if champion_exists and not champion_compared:
        return Verdict(False, [*blocking, note], {}, basis, trading, profitable)
    verdicts = {
        entry.horizon_s: promotion_verdict(
            {b: entry.model_minus[b] for b in BASELINES},
            entry.model_minus[CHAMPION] if champion_compared else None,
            entry.model.metrics.ece,
            rules.max_ece,
        )
        for entry in report
    }
    reasons = [f"{horizon:g} s: {r}" for horizon, v in verdicts.items() for r in v.reasons]
    numbers = {f"{horizon:g}s": v.numbers for horizon, v in verdicts.items()}
    for entry in report:
        pnl = entry.model.pnl
        numbers[f"{entry.horizon_s:g}s"] |= {
            "net_bps_per_trade": pnl.mean_return_bps,
            "net_bps_per_trade_ci": [pnl.mean_return_low_bps, pnl.mean_return_high_bps],
            "edge_bps_per_trade": pnl.gross_mean_bps,
            "break_even_fee_bps": pnl.break_even_fee_bps,
            "fee_bps": entry.costs.fee_bps_per_side,
        }
    return Verdict(
        all(v.promote for v in verdicts.values()) and not blocking,
        [*blocking, *reasons],
        numbers,
        basis,
        trading,
        profitable,
    )
