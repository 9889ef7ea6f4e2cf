"""The promotion gate: when the challenger may take the ``champion`` alias (docs/design.md §4, decision 9).

The challenger is promoted only when, on the same purged test window, its per-sample log loss is
lower than that of every baseline and of the current champion with a 95% block-bootstrap
interval of the difference entirely below zero, and its top-label ECE is below the threshold.
With no champion yet, beating the baselines (and the ECE bar) is enough.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bmlt_assets.core.evaluation_report import BASELINES, CHAMPION, HorizonReport, Interval


@dataclass
class Verdict:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)


def _not_below_zero(d: Interval) -> str:
    """Why a challenger-minus-other log-loss interval fails: a tie, or the challenger is worse."""
    where = "includes 0 (a tie)" if d.low <= 0 else "lies entirely above 0 (the challenger is worse)"
    return f"log-loss difference (challenger minus it) CI [{d.low:.4f}, {d.high:.4f}] {where}"


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
    if champion_difference is not None and not champion_difference.below_zero:
        reasons.append(f"does not beat the champion: {_not_below_zero(champion_difference)}")
    if not ece < max_ece:
        reasons.append(f"ECE {ece:.4f} is not below {max_ece:.4f}")
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
# target, horizons, classes (count and kind of edges), inputs (symbols, levels, representation)
# and cadence. Older specs without a field are never comparable.
COMPARABLE_SPEC = ("target", "symbols", "horizons_s", "n_classes", "edges", "levels", "representation", "cadence_ms")


def incomparability(
    champion_spec: dict[str, Any], challenger_spec: dict[str, Any], test_period_ns: tuple[int, int]
) -> str:
    """Why the champion cannot be scored against the challenger on its test window ('' if it can).

    Its window may be shorter (the challenger's test windows hold it), and it must never have
    been fitted on any of the test window: that would flatter it."""
    differing = [k for k in COMPARABLE_SPEC if champion_spec.get(k) != challenger_spec.get(k)]
    if differing:
        return f"other {', '.join(differing)}"
    if champion_spec["window_steps"] > challenger_spec["window_steps"]:
        return f"a longer window ({champion_spec['window_steps']} > {challenger_spec['window_steps']} steps)"
    first, last = champion_spec["fitted_ns"]
    if first <= test_period_ns[1] and test_period_ns[0] <= last:
        return "it was trained or validated on part of this test window"
    return ""


def gate(
    report: list[HorizonReport], champion_exists: bool, champion_compared: bool, max_ece: float, note: str
) -> Verdict:
    """Every horizon must pass; a champion that could not be compared is never replaced, and a
    probable look-ahead leak is never promoted, whatever its numbers. Reasons name each horizon in
    seconds (``horizon_s``), as the report does."""
    leaks = [
        f"{entry.horizon_s:g} s: probable look-ahead leak (beats the Bayes-optimal oracle)"
        for entry in report
        if entry.leak_suspected
    ]
    if champion_exists and not champion_compared:
        return Verdict(False, [*leaks, note], {})
    verdicts = {
        entry.horizon_s: promotion_verdict(
            {b: entry.model_minus[b] for b in BASELINES},
            entry.model_minus[CHAMPION] if champion_compared else None,
            entry.model.metrics.ece,
            max_ece,
        )
        for entry in report
    }
    reasons = [f"{horizon:g} s: {r}" for horizon, v in verdicts.items() for r in v.reasons]
    return Verdict(
        all(v.promote for v in verdicts.values()) and not leaks,
        [*leaks, *reasons] if leaks else reasons,
        {f"{horizon:g}s": v.numbers for horizon, v in verdicts.items()},
    )
