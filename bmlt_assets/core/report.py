"""Rendering the evaluation: PNG figures, a Markdown report and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np

from bmlt_assets.core.evaluation_report import (
    ORACLE,
    ClassRanges,
    Costs,
    EvaluationReport,
    FoldSummary,
    FreshScores,
    HorizonReport,
    Interval,
    PnlAtFee,
)
from bmlt_assets.core.files import write_json
from bmlt_assets.core.fresh import fresh_day_lines, fresh_headline
from bmlt_assets.core.promotion import Verdict, economics, net_ci
from bmlt_assets.core.readable import DIGITS, PROSE, interval, number
from bmlt_assets.core.tables import table_lines


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


# Every column names its unit; "share" is a fraction between 0 and 1.
METRIC_COLUMNS = {
    "accuracy": "accuracy (share)",
    "balanced_accuracy": "balanced accuracy (share)",
    "macro_f1": "macro-F1 (0 to 1)",
    "mcc": "MCC (-1 to 1)",
    "log_loss": "log loss (nats)",
    "brier": "Brier score (0 to 2)",
    "ece": "top-label ECE (share)",
    "directional_accuracy": "directional accuracy (share of samples that moved)",
}
PNL_COLUMNS = {
    "trades": "trades (count)",
    "hit_rate": "hit rate (share of trades)",
    "mean_return_bps": "mean net return (bps per trade)",
    "total_return_bps": "total net return (bps)",
    "costs_bps": "costs paid (bps, total)",
    "sharpe_annualized": "Sharpe (annualized, 24/7; ratio)",
    "max_drawdown_bps": "max drawdown (bps)",
    "turnover_per_day": "turnover (position changes per day)",
    "gross_mean_bps": "edge before costs (bps per trade)",
    "break_even_fee_bps": "break-even fee (bps per side)",
    "mean_return_low_bps": "mean net return, 95% CI low (bps per trade)",
    "mean_return_high_bps": "mean net return, 95% CI high (bps per trade)",
}
SHORT_TEST_DAYS = 7.0  # a test window shorter than this gets a warning
# A calibration that raised the test ECE by less than this is noise, not a warning: the top-label
# ECE of a few thousand independent outcomes moves by about a percentage point between resamples.
MATERIAL_ECE_RISE = 0.005
NS_PER_DAY = 86_400 * 10**9


def _utc(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[s]")).replace("T", " ")


def _ci(d: Interval, digits: int = PROSE) -> str:
    return interval(d.low, d.high, digits)


def _h(horizon_s: float) -> str:
    return f"{horizon_s:g} s"


def class_labels(classes: ClassRanges, sigma: bool) -> list[str]:
    """Each class as the half-open return range over the horizon that it holds: in σ units
    (``sigma``, volatility-scaled edges only) or in bps (the median edges over the test part)."""
    if sigma and classes.edges_sigma is not None:
        edges, fmt = classes.edges_sigma, "{:g}σ"
    else:
        edges, fmt = classes.edges_bps, "{:.1f}"
    cells = [fmt.format(e) for e in edges]
    unit = "" if sigma else " bps"
    return [f"< {cells[0]}{unit}", *(f"[{a}, {b}){unit}" for a, b in zip(cells, cells[1:])), f"≥ {cells[-1]}{unit}"]


def _short_labels(classes: ClassRanges) -> list[str]:
    """Axis labels for the figures: σ ranges where volatility-scaled, else bps ranges."""
    return [label.replace(" bps", "") for label in class_labels(classes, classes.volatility_scaled)]


def figures(entry: HorizonReport) -> dict[str, bytes]:
    """PNG bytes by file name for one horizon."""
    labels = _short_labels(entry.classes)
    unit = "σ of the horizon return" if entry.classes.volatility_scaled else "bps"
    drawn = {
        "confusion": _confusion_figure(entry, labels, unit),
        "reliability": _reliability_figure(entry, labels, unit),
        "equity": _equity_figure(entry),
        "classes": _classes_figure(entry, labels, unit),
    }
    return {f"{name}_{entry.horizon_s}s.png": png for name, png in drawn.items()}


def _confusion_figure(entry: HorizonReport, labels: list[str], unit: str) -> bytes:
    counts = np.asarray(entry.confusion, dtype=np.float64)
    normalized = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    image = ax.imshow(normalized, cmap="Blues", vmin=0, vmax=max(normalized.max(), 1e-9))
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(
        xlabel=f"predicted class (return range, {unit})",
        ylabel=f"realized class (return range, {unit})",
        title=f"Confusion, share of each realized class, {entry.horizon_s} s",
    )
    fig.colorbar(image, ax=ax, label="share of the row")
    return _png(fig)


def _reliability_figure(entry: HorizonReport, labels: list[str], unit: str) -> bytes:
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for c, curve in enumerate(entry.calibration.reliability):
        ax.plot(curve.predicted, curve.observed, marker=".", linewidth=1, label=labels[c])
    ax.set(
        xlabel="predicted probability of the class",
        ylabel="observed frequency of the class",
        title=f"Reliability of the model (one class vs rest), {entry.horizon_s} s",
    )
    ax.legend(fontsize=6, ncol=2, title=unit, title_fontsize=6)
    return _png(fig)


def _equity_figure(entry: HorizonReport) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    period = entry.test_period
    for name, scores in entry.predictors.items():
        # From 0 at the start of the test window, a step at each trade's entry, flat to its end.
        trades = scores.equity
        times = np.array([period.first_ns, *trades.timestamps_ns, period.last_ns], dtype="datetime64[ns]")
        equity = [0.0, *trades.equity_bps]
        ax.step(times, [*equity, equity[-1]], where="post", label=f"{name} ({len(trades.equity_bps)} trades)")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    fig.autofmt_xdate()
    ax.set(
        xlabel="time (UTC), trade entry",
        ylabel="cumulative net return (bps)",
        title=f"Equity after fees and spread, {entry.horizon_s} s",
    )
    ax.legend(fontsize=7)
    return _png(fig)


def _classes_figure(entry: HorizonReport, labels: list[str], unit: str) -> bytes:
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    classes = np.arange(len(entry.class_distribution.realized))
    ax.bar(classes - 0.2, entry.class_distribution.realized, width=0.4, label="realized")
    ax.bar(classes + 0.2, entry.class_distribution.predicted, width=0.4, label="predicted (argmax)")
    ax.set_xticks(classes, labels, rotation=60, ha="right", fontsize=7)
    title = f"Classes, {entry.horizon_s} s"
    ax.set(xlabel=f"class (return range, {unit})", ylabel="test samples (count)", title=title)
    ax.legend(fontsize=7)
    return _png(fig)


def _walk_forward_lines(walk_forward: list[FoldSummary], horizons_s: list[int | float]) -> list[str]:
    """Each fold's model on its own test block, oldest first, then the mean and spread."""
    if not walk_forward:
        return []
    captured = walk_forward[0].horizons[0].capture is not None
    counted = walk_forward[0].horizons[0].independent_outcomes is not None
    header = ["fold", "test from (UTC)", "test to (UTC)", "samples (count)"]
    for h in horizons_s:
        header += [f"independent outcomes {h} s (count)"] if counted else []
        header += [f"accuracy {h} s (share)", f"log loss {h} s (nats)", f"prior log loss {h} s (nats)"] + (
            [f"log-loss capture {h} s (0 = prior, 1 = oracle)"] if captured else []
        )
    rows: list[list[object]] = []
    for fold in walk_forward:
        row: list[object] = [fold.fold, _utc(fold.test_first_ns), _utc(fold.test_last_ns), fold.samples]
        for scored in fold.horizons:
            row += [scored.independent_outcomes] if counted else []
            row += [scored.model.accuracy, scored.model.log_loss, scored.prior.log_loss]
            row += [scored.capture.logloss_capture] if scored.capture is not None else []
        rows.append(row)
    scores = [[v if isinstance(v, float) else np.nan for v in r[4:]] for r in rows]  # counts are not averaged
    numeric = np.array(scores, dtype=np.float64)
    summary = [["mean", *numeric.mean(axis=0)], ["std", *numeric.std(axis=0)]]
    rows += [[label, "", "", "", *("" if np.isnan(v) else float(v) for v in values)] for label, *values in summary]
    lines = ["## Walk-forward: performance over time", "", *table_lines(header, rows), ""]
    if captured:  # every fold's model is checked for a leak against the oracle
        leaks = [
            f"fold {f.fold} at {h:g} s"
            for f in walk_forward
            for h, s in zip(horizons_s, f.horizons)
            if s.leak_suspected
        ]
        lines += [
            f"Leak check of every fold's model: {'PROBABLE LEAK in ' + ', '.join(leaks) if leaks else 'none'}.",
            "",
        ]
    return lines


class Materiality(IntEnum):
    """How much a warning changes what the numbers mean; warnings are listed most material first."""

    LEAK = 0  # the numbers are not to be believed at all
    MONEY = 1  # the model does not make money at the stated costs
    WORSE = 2  # a comparator forecasts better beyond noise
    TIE = 3  # a comparator is not beaten beyond noise
    NOISE = 4  # the test window is short
    CALIBRATION = 5  # the calibration made the test ECE materially worse


def report_warnings(report: EvaluationReport) -> list[str]:
    """One line per thing that should stop a reader from taking the numbers at face value, most
    material first (:class:`Materiality`), in the order of the horizons within a rank."""
    return [text for _, text in ranked_warnings(report)]


def ranked_warnings(report: EvaluationReport) -> list[tuple[Materiality, str]]:
    """:func:`report_warnings` with the materiality of each."""
    found: list[tuple[Materiality, str]] = []
    if report.horizons and report.test_period.days < SHORT_TEST_DAYS:
        period = report.test_period
        found.append(
            (
                Materiality.NOISE,
                f"The test window is short: {period.days:.2f} days ({_utc(period.first_ns)} to "
                f"{_utc(period.last_ns)} UTC), under {SHORT_TEST_DAYS:g} days: intervals and P&L are noisy.",
            )
        )
    for entry in report.horizons:
        horizon = entry.horizon_s
        if entry.leak_suspected:
            found.append(
                (
                    Materiality.LEAK,
                    f"{_h(horizon)}: PROBABLE LEAK: the model beats the Bayes-optimal oracle beyond its confidence "
                    "interval.",
                )
            )
        money = _money_warning(entry)
        if money:
            found.append((Materiality.MONEY, money))
        cal = entry.calibration
        if cal.after.ece - cal.before.ece >= MATERIAL_ECE_RISE:
            found.append(
                (
                    Materiality.CALIBRATION,
                    f"{_h(horizon)}: the validation-fitted calibration made it worse on the test part: top-label ECE "
                    f"rose from {number(cal.before.ece, PROSE)} (uncalibrated) to {number(cal.after.ece, PROSE)} "
                    "(calibrated); lower is better.",
                )
            )
        for other, d in entry.model_minus.items():
            if other == ORACLE:
                continue
            if d.above_zero:
                found.append(
                    (
                        Materiality.WORSE,
                        f"{_h(horizon)}: the model forecasts worse than {other}: the 95% CI of the log-loss "
                        f"difference (model minus {other}) {_ci(d)} lies entirely above 0.",
                    )
                )
            elif not d.below_zero:
                found.append(
                    (
                        Materiality.TIE,
                        f"{_h(horizon)}: the model ties {other}: the 95% CI of the log-loss difference "
                        f"(model minus {other}) {_ci(d)} includes 0.",
                    )
                )
    for fold in report.walk_forward[:-1]:  # the latest fold's test block is the test part, warned above
        for entry, scored in zip(report.horizons, fold.horizons):
            if scored.leak_suspected:
                found.append(
                    (
                        Materiality.LEAK,
                        f"{_h(entry.horizon_s)}: PROBABLE LEAK in walk-forward fold {fold.fold}: its model beats the "
                        "Bayes-optimal oracle on its test block beyond the confidence interval.",
                    )
                )
    found += fresh_day_warnings(report.fresh, [h.horizon_s for h in report.horizons])
    return sorted(found, key=lambda warning: warning[0])  # stable within a rank


def fresh_day_warnings(fresh: list[list[FreshScores]], horizons_s: list[int | float]) -> list[tuple[Materiality, str]]:
    """What the pooled fresh days say against the shipped model: the gradient-boosted baseline
    not beaten there, the calibration's class bias doing worse there than the temperature alone."""
    found: list[tuple[Materiality, str]] = []
    for horizon_s, scores in zip(horizons_s, fresh):
        pooled = scores[-1].model_minus
        gbm, alone = pooled.get("gbm"), pooled.get("temperature_alone")
        if gbm is not None and not gbm.below_zero:
            found.append(
                (
                    Materiality.WORSE if gbm.above_zero else Materiality.TIE,
                    f"{_h(horizon_s)}: on the fresh days the model does not beat the gradient-boosted baseline: the "
                    f"95% CI of the log-loss difference (model minus gbm) {_ci(gbm)} "
                    f"{'lies entirely above 0' if gbm.above_zero else 'includes 0'}.",
                )
            )
        if alone is not None and alone.above_zero:
            found.append(
                (
                    Materiality.CALIBRATION,
                    f"{_h(horizon_s)}: on the fresh days the calibration's class bias does worse than the temperature "
                    f"alone: the 95% CI of the log-loss difference (shipped minus temperature alone) {_ci(alone)} "
                    "lies entirely above 0.",
                )
            )
    return found


def _money_warning(entry: HorizonReport) -> str:
    """Why the model does not make money at the stated costs at one horizon ('' when it does),
    and whether the oracle could: a signal too weak for the costs, or a model that misses it."""
    pnl, costs, h = entry.model.pnl, entry.costs, _h(entry.horizon_s)
    if pnl.profitable:
        return ""
    if not pnl.trades:
        return (
            f"{h}: **the model never traded**: no direction's probability mass exceeded {costs.pnl_threshold:g}, "
            "so what it is worth to a trader is unmeasured."
        )
    spent = economics(pnl)
    text = (
        f"{h}: **the model loses money at the stated costs**: {number(pnl.mean_return_bps, PROSE, sign=True)} bps "
        f"per trade net{net_ci(pnl)} over {number(pnl.trades)} trades (hit rate {number(pnl.hit_rate, PROSE)}), "
        f"paying {costs.fee_bps_per_side:g} bps per side plus half the spread{': ' + spent if spent else ''}."
    )
    oracle = entry.predictors.get(ORACLE)
    if oracle is not None and oracle.pnl.trades:
        if oracle.pnl.profitable:
            text += (
                f" The oracle makes {number(oracle.pnl.mean_return_bps, PROSE, sign=True)} bps per trade at these "
                "costs: the signal pays them, the model does not capture enough of it."
            )
        else:
            text += (
                f" Even the oracle loses ({number(oracle.pnl.mean_return_bps, PROSE, sign=True)} bps per trade): "
                f"at this horizon and threshold the signal cannot pay these costs."
            )
    return text


def comparison_sentence(model_minus: dict[str, Interval]) -> str:
    """Which comparators the model beats, ties and loses to on log loss, each with its interval."""
    beats, ties, loses = [], [], []
    for other, d in model_minus.items():
        if d.below_zero:
            beats.append(f"{other} (CI {_ci(d)} entirely below 0)")
        elif d.above_zero:
            loses.append(f"{other} (CI {_ci(d)} entirely above 0)")
        else:
            ties.append(f"{other} (CI {_ci(d)} includes 0)")

    def listed(names: list[str]) -> str:
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

    parts = []
    if beats:
        parts.append("beats " + listed(beats))
    if ties:
        parts.append("does not beat " + listed(ties) + ": a tie")
    if loses:
        parts.append("is worse than " + listed(loses))
    return (
        "Log loss, model minus each comparator (nats, 95% block-bootstrap CI; below 0 means the model is better). "
        f"The model {'; it '.join(parts)}."
    )


def _costs_line(costs: Costs) -> str:
    return (
        f"P&L after costs: a fee of {costs.fee_bps_per_side:g} bps per side plus half the quoted spread per side "
        f"(median quoted spread on the test part {number(costs.median_spread_bps)} bps); long (short) when the "
        f"probability mass above (below) zero exceeds {costs.pnl_threshold:g}, held for the horizon, never "
        "overlapping. The edge is the mean return per trade before costs; the break-even fee is the fee per side "
        "at which the mean net return is 0 (below 0: the half spreads alone cost more than the edge). Sharpe = "
        "mean / standard deviation of the per-trade net log returns × √(trades per year), trading 24/7."
    )


def _fee_sensitivity(pnl_by_fee: list[PnlAtFee]) -> list[str]:
    """The model's P&L at no fee, the assumed fee and twice it: how much of the edge the fee decides."""
    header = ["fee (bps per side)", PNL_COLUMNS["trades"], PNL_COLUMNS["total_return_bps"]]
    header += [PNL_COLUMNS["mean_return_bps"], PNL_COLUMNS["sharpe_annualized"]]
    rows = [
        [f"{p.fee_bps_per_side:g}", p.trades, p.total_return_bps, p.mean_return_bps, p.sharpe_annualized]
        for p in pnl_by_fee
    ]
    return ["The model's P&L at no fee, at the assumed fee and at twice it:", "", *table_lines(header, rows), ""]


def counts(samples: int, independent: int | None) -> str:
    """A sample count with the independent outcomes it holds (where the report recorded them)."""
    held = f", {number(independent)} independent outcomes" if independent is not None else ""
    return f"{number(samples)} samples{held}"


@dataclass(frozen=True)
class FrontMatter:
    """What the report says first: which model, run, config, code and data, and the gate's
    verdict. Whatever is left empty reads "not recorded"."""

    model: str = ""
    version: str = ""
    aliases: list[str] = field(default_factory=list)  # the version's, after this evaluation
    run_id: str = ""
    run_url: str = ""
    config_name: str = ""
    config_path: str = ""
    commit: str = ""
    data_range: str = ""
    verdict: Verdict | None = None
    verdict_note: str = ""  # why the champion was (not) compared


def _front_matter_lines(front: FrontMatter, report: EvaluationReport, title: str) -> list[str]:
    def given(value: str) -> str:
        return value or "not recorded"

    run = given(front.run_id)
    if front.run_url:
        run = f"[{run}]({front.run_url})"
    if report.horizons:
        period, first = report.test_period, report.horizons[0]
        independent = [
            f"{number(h.independent_outcomes)} at {_h(h.horizon_s)}"
            for h in report.horizons
            if h.independent_outcomes is not None
        ]
        held = "; independent outcomes: " + ", ".join(independent) if independent else ""
        test_period = (
            f"{_utc(period.first_ns)} to {_utc(period.last_ns)} ({period.days:.2f} days, "
            f"{number(first.samples)} samples{held})"
        )
    rows = [
        ["model", given(front.model)],
        ["version", given(front.version)],
        ["aliases", ", ".join(f"@{a}" for a in front.aliases) if front.aliases else "none"],
        ["MLflow run", run],
        ["config", f"{given(front.config_name)} ({given(front.config_path)})"],
        ["commit", given(front.commit)],
        ["data range", given(front.data_range)],
        ["test period (UTC)", test_period if report.horizons else "not recorded"],
        ["horizons", ", ".join(_h(h.horizon_s) for h in report.horizons)],
    ]
    if report.horizons:
        costs = report.horizons[0].costs
        rows.append(
            [
                "costs",
                f"fee {costs.fee_bps_per_side:g} bps per side + half the quoted spread per side "
                f"(median spread {number(costs.median_spread_bps, PROSE)} bps)",
            ]
        )
    lines = [f"# {title}", "", *table_lines(["field", "value"], rows), ""]
    verdict = front.verdict
    if verdict is None:
        return [*lines, "**Verdict: not recorded.**", ""]
    lines += [f"**Verdict: {verdict.outcome}** {verdict.grounds}", ""]
    if front.verdict_note:
        lines += [f"Champion: {front.verdict_note}.", ""]
    return [*lines, "The gate's reasons:", "", *(f"- {r}" for r in verdict.reasons), ""]


def markdown(
    report: EvaluationReport,
    title: str,
    images: dict[str, str] | None = None,
    front_matter: FrontMatter | None = None,
) -> str:
    """The report as Markdown; ``images`` maps figure names to URLs (files or data URIs).

    In this order: the front matter and the verdict, the headline of each horizon, the warnings
    (most material first), a results table per horizon, the figures, then the detail tables."""
    lines = _front_matter_lines(front_matter or FrontMatter(), report, title)
    lines += ["## Headline", ""]
    for i, entry in enumerate(report.horizons):
        lines += [f"**{_h(entry.horizon_s)}** ({counts(entry.samples, entry.independent_outcomes)})", ""]
        lines += [*(f"- {line}" for line in headline(entry, report.fresh_at(i))), ""]
    warnings = report_warnings(report)
    if warnings:
        lines += ["## Warnings", ""] + [line for w in warnings for line in (f"> **WARNING** {w}", "")]

    lines += ["## Results per horizon", ""]
    for entry in report.horizons:
        lines += _results_lines(entry)
    lines += fresh_day_lines(report.fresh, [h.horizon_s for h in report.horizons])

    lines += ["## Figures", ""]
    for entry in report.horizons:
        horizon = entry.horizon_s
        lines += [f"### {_h(horizon)} horizon", ""]
        for name in ("equity", "reliability", "confusion", "classes"):
            key = f"{name}_{horizon}s.png"
            if images and key in images:
                lines += [f"![{name} {horizon}s]({images[key]})", ""]

    lines += ["## Details", ""]
    for entry in report.horizons:
        lines += [f"### {_h(entry.horizon_s)} horizon: details", "", *_detail_lines(entry)]
    lines += _walk_forward_lines(report.walk_forward, [h.horizon_s for h in report.horizons])
    return "\n".join(lines)


def headline(entry: HorizonReport, fresh: Sequence[FreshScores] = ()) -> list[str]:
    """One horizon in a few plain sentences, most telling first: how much of the achievable
    signal the model captures (on the test part, then on the ``fresh`` days pooled), its margin
    over the best baseline with its interval, what it makes or loses at the stated costs, and
    what the intervals rest on."""
    lines = []
    if entry.capture is not None:
        c = entry.capture
        lines.append(
            f"Capture: {number(c.logloss_capture, PROSE)} of the oracle's log-loss edge over the class prior "
            f"({number(c.accuracy_capture, PROSE)} of its accuracy edge; 0 = the prior, 1 = the oracle)."
        )
    if fresh:
        lines.append(fresh_headline(list(fresh)))
    best = entry.best_baseline
    margin = entry.margin_over(best)
    reading = (
        "the model is better beyond noise"
        if margin.above_zero
        else "the model is worse beyond noise"
        if margin.below_zero
        else "a tie: the interval includes 0"
    )
    lines.append(
        f"Best baseline: {best}. The model's margin over it: {number(margin.mean, PROSE, sign=True)} nats of "
        f"log loss per sample, 95% CI {_ci(margin)} ({reading})."
    )
    lines.append(_money_line(entry))
    lines.append(_interval_basis(entry))
    return lines


def _interval_basis(entry: HorizonReport) -> str:
    """What the intervals rest on: a block bootstrap whose blocks span the overlap, or, where the
    recorded block is shorter than the horizon (never in reports of this version), a caution."""
    block, horizon = entry.model.intervals.log_loss.block_length, entry.horizon_steps
    said = (
        f"Intervals: a stationary block bootstrap of the {number(entry.samples)} overlapping samples, expected block "
        f"length {number(block, PROSE)} samples (Politis-White)"
    )
    if block >= horizon:
        return f"{said}, at least the horizon's {number(horizon)} steps: the overlap is not counted as independent."
    return f"{said}, shorter than the horizon's {number(horizon)} steps: the intervals may be too narrow."


def _money_line(entry: HorizonReport) -> str:
    pnl, costs = entry.model.pnl, entry.costs
    stated = f"at the stated costs ({costs.fee_bps_per_side:g} bps per side plus half the spread)"
    if not pnl.trades:
        return (
            f"Money: {stated} the model never traded: no direction's probability mass exceeded {costs.pnl_threshold:g}."
        )
    verb = "makes" if pnl.profitable else "LOSES"
    spent = economics(pnl)
    return (
        f"Money: {stated} the model {verb} {number(abs(pnl.mean_return_bps), PROSE)} bps per trade net"
        f"{net_ci(pnl)} over {number(pnl.trades)} trades (hit rate {number(pnl.hit_rate, PROSE)})"
        f"{': ' + spent if spent else ''}."
    )


def _results_lines(entry: HorizonReport) -> list[str]:
    """One horizon's results table: every predictor's log loss and accuracy with their
    intervals, its capture and economics, then the fee sensitivity and what the model beats."""
    lines = [f"### {_h(entry.horizon_s)} horizon ({counts(entry.samples, entry.independent_outcomes)})", ""]
    if entry.leak_suspected:
        lines += [
            '<p style="color:red"><b>PROBABLE LEAK: the model beats the Bayes-optimal oracle '
            "beyond its confidence interval.</b></p>",
            "",
        ]
    captured = entry.capture is not None
    header = ["predictor", "log loss (nats) [95% CI]", "accuracy (share) [95% CI]"]
    header += ["log-loss capture (0 = prior, 1 = oracle)"] if captured else []
    header += [PNL_COLUMNS[k] for k in ("trades", "mean_return_bps", "gross_mean_bps", "break_even_fee_bps")]
    header += [PNL_COLUMNS["total_return_bps"]]
    rows = []
    for name, scores in entry.predictors.items():
        m, ci, pnl = scores.metrics, scores.intervals, scores.pnl
        row: list[object] = [
            name,
            f"{number(m.log_loss)} {_ci(ci.log_loss, DIGITS)}",
            f"{number(m.accuracy)} {_ci(ci.accuracy, DIGITS)}",
        ]
        row += [scores.capture.logloss_capture if scores.capture is not None else ""] if captured else []
        row += [pnl.trades, pnl.mean_return_bps, pnl.gross_mean_bps, pnl.break_even_fee_bps, pnl.total_return_bps]
        rows.append(row)
    lines += [_costs_line(entry.costs), "", *table_lines(header, rows), ""]
    if entry.pnl_by_fee:
        lines += _fee_sensitivity(entry.pnl_by_fee)
    return [*lines, comparison_sentence(entry.model_minus), ""]


def _detail_lines(entry: HorizonReport) -> list[str]:
    lines = _class_lines(entry)
    lines += ["Classification on the test part:", ""]
    rows = [[name, *asdict(scores.metrics).values()] for name, scores in entry.predictors.items()]
    columns = list(asdict(entry.model.metrics))
    lines += table_lines(["predictor", *(METRIC_COLUMNS[k] for k in columns)], rows) + [""]
    diffs = []
    for other, d in entry.model_minus.items():
        reading = "model better" if d.below_zero else "model worse" if d.above_zero else "tie (CI includes 0)"
        diffs.append([other, d.mean, _ci(d, DIGITS), reading])
    lines += [
        "Log-loss difference, model minus comparator (stationary block bootstrap, Politis-White expected block "
        "length, at least the horizon):",
        "",
    ]
    lines += table_lines(["comparator", "mean (nats)", "95% CI (nats)", "reading"], diffs) + [""]
    if entry.capture is not None:
        c = entry.capture
        lines += [
            f"Signal capture of the model: accuracy {number(c.accuracy_capture)}, log loss "
            f"{number(c.logloss_capture)} (0 = class prior, 1 = oracle).",
            "",
        ]
    cal = entry.calibration
    shrunk = ""
    if cal.bias_prior_sd is not None and cal.outcomes is not None:
        shrunk = (
            f" The bias has an empirical-Bayes prior N(0, {number(cal.bias_prior_sd, PROSE)}²) from "
            f"{number(cal.outcomes)} independent validation outcomes (0: the temperature alone, "
            f"{number(cal.temperature_alone)})."
        )
    lines += [
        f"Calibration: temperature {number(cal.temperature)} and a class bias from {number(min(cal.bias), sign=True)} "
        f"to {number(max(cal.bias), sign=True)} (softmax(logits / T + b)), fitted on validation.{shrunk} On the test "
        f"part, top-label ECE ({cal.bins}) {number(cal.before.ece)} before, {number(cal.after.ece)} after; log loss "
        f"{number(cal.before.log_loss)} nats before, {number(cal.after.log_loss)} nats after (lower is better).",
        "",
    ]
    lines += [
        _costs_line(entry.costs),
        "Sharpe = mean / std of per-trade net log returns × √(trades per year), 24/7; a position change is an "
        "entry or an exit (two per trade).",
        "",
    ]
    pnl_rows = [[name, *(getattr(scores.pnl, k) for k in PNL_COLUMNS)] for name, scores in entry.predictors.items()]
    lines += table_lines(["predictor", *PNL_COLUMNS.values()], pnl_rows) + [""]
    counted = all(v.independent_outcomes is not None for v in entry.regimes.values())
    header = ["volatility regime (train terciles)", "samples (count)"]
    header += ["independent outcomes (count)"] if counted else []
    rows = [
        [r, v.samples, *([v.independent_outcomes] if counted else []), v.accuracy, v.log_loss]
        for r, v in entry.regimes.items()
    ]
    lines += table_lines([*header, "accuracy (share)", "log loss (nats)"], rows) + [""]
    return lines + _confusion_lines(entry)


def _overlap_note(entry: HorizonReport) -> str:
    """What a table of sample counts holds: overlapping samples, fewer independent outcomes."""
    if entry.independent_outcomes is None:
        return f"Samples overlap: a {_h(entry.horizon_s)} outcome spans {number(entry.horizon_steps)} steps."
    return (
        f"Samples overlap: a {_h(entry.horizon_s)} outcome spans {number(entry.horizon_steps)} steps, so the "
        f"{number(entry.samples)} samples hold {number(entry.independent_outcomes)} independent outcomes."
    )


def _class_lines(entry: HorizonReport) -> list[str]:
    """What each class means, with how often it happened and how often the model said it."""
    classes, distribution = entry.classes, entry.class_distribution
    sigma = classes.volatility_scaled
    bps_labels = class_labels(classes, sigma=False)
    names = class_labels(classes, sigma) if sigma else bps_labels
    if sigma:
        explained = (
            f"volatility-scaled edges: σ is the trailing per-step volatility at t times √(horizon steps); its median "
            f"over the test part is {classes.sigma_bps_median:.2f} bps, at which the σ edges read as the bps column"
        )
    elif classes.kind == "quantile":
        explained = "quantile edges fitted on the training part"
    else:
        explained = f"{classes.kind} edges" if classes.kind != "unknown" else "edges as the dataset made them"
    header = ["class", *(["return range (σ)"] if sigma else []), "return range (bps, median over the test part)"]
    rows = [
        [c, *([names[c]] if sigma else []), bps_labels[c], distribution.realized[c], distribution.predicted[c]]
        for c in range(len(bps_labels))
    ]
    lines = [
        f"Classes: the log return over {_h(entry.horizon_s)}, in half-open ranges [low, high) ({explained}). "
        + _overlap_note(entry),
        "",
    ]
    return lines + table_lines([*header, "realized (samples)", "predicted, argmax (samples)"], rows) + [""]


def _confusion_lines(entry: HorizonReport) -> list[str]:
    classes = entry.classes
    names = class_labels(classes, classes.volatility_scaled)
    matrix = np.asarray(entry.confusion)
    lines = [
        "Confusion matrix of the model, rows realized class, columns predicted class (samples). "
        + _overlap_note(entry),
        "",
    ]
    lines += table_lines(["realized \\ predicted", *names], [[names[j], *row] for j, row in enumerate(matrix.tolist())])
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    lines += ["", "The same, as the share of each realized class (rows sum to 1):", ""]
    lines += table_lines(
        ["realized \\ predicted", *names], [[names[j], *(float(v) for v in row)] for j, row in enumerate(shares)]
    ) + [""]
    return lines


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _inline(text: str) -> str:
    """Escaped text with the Markdown this report uses inline: **bold** and [text](url)."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', out)


def html_page(markdown_text: str, title: str) -> str:
    """A self-contained page: the Markdown's tables and images rendered without extra packages."""
    body: list[str] = []
    table: list[str] = []
    items: list[str] = []

    def flush() -> None:
        if table:
            header, *rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = lambda r: [c.strip() for c in r.strip().strip("|").split("|")]  # noqa: E731
            body.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells(header)) + "</tr>")
            body.extend("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells(r)) + "</tr>" for r in rows)
            body.append("</table>")
            table.clear()
        if items:
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in markdown_text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        if line.startswith("- "):
            items.append(line[2:])
            continue
        flush()
        if line.startswith("### "):
            body.append(f"<h3>{_inline(line[4:])}</h3>")
        elif line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("> "):
            body.append(f'<p class="warning">{_inline(line[2:])}</p>')
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(f'<img alt="{html.escape(alt)}" src="{src[:-1]}">')
        elif line.startswith("<p style"):
            body.append(line)  # our own leak banner
        elif line:
            body.append(f"<p>{_inline(line)}</p>")
    flush()
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}img{margin:4px;vertical-align:top}"
        "p.warning{background:#fff3cd;border-left:4px solid #d9822b;padding:4px 8px;margin:4px 0}"
    )
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
    return f"<!DOCTYPE html><html><head>{head}</head><body>{''.join(body)}</body></html>"


def write_report(
    folder: Path, report: EvaluationReport, title: str, front_matter: FrontMatter | None = None
) -> tuple[str, dict[str, bytes]]:
    """Write metrics.json (the report's data), report.md (figures by file name), report.html
    (figures embedded) and the PNGs.

    Returns the Markdown with embedded figures (for Dagster metadata) and the PNGs."""
    write_json(report.to_json(), folder / "metrics.json")
    pngs = {name: png for entry in report.horizons for name, png in figures(entry).items()}
    for name, png in pngs.items():
        (folder / name).write_bytes(png)
    text = markdown(report, title, {name: name for name in pngs}, front_matter)
    (folder / "report.md").write_text(text, encoding="utf-8")
    embedded = markdown(report, title, {name: data_uri(png) for name, png in pngs.items()}, front_matter)
    (folder / "report.html").write_text(html_page(embedded, title), encoding="utf-8")
    return embedded, pngs
