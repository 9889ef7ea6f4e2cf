"""The evaluation report's Markdown: front matter, order, warnings, wording, classes and units."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bmlt_assets.core.config import PromotionConfig, load_config
from bmlt_assets.core.evaluation_report import (
    Capture,
    Classification,
    EvaluationReport,
    FoldHorizon,
    FoldSummary,
    FreshScores,
    HorizonReport,
    Interval,
)
from bmlt_assets.core.promotion import Verdict, gate
from bmlt_assets.core.report import FrontMatter, markdown, write_report
from tests.helpers import BETTER, LOSING_PNL, START_NS, TIED, report_entry, tracked_run, write_config

FRONT = FrontMatter(
    model="bmlt-synthetic-default",
    version="7",
    aliases=["challenger", "champion"],
    run_id="0123abcd",
    run_url="http://127.0.0.1:5000/#/experiments/1/runs/0123abcd",
    config_name="synthetic-default",
    config_path="/work/configs/default.yaml",
    commit="deadbeefcafe",
    data_range="2025-01-06 to 2025-01-07 (2 days)",
    verdict=Verdict(
        False, ["30 s: does not beat logistic_obi: log-loss difference (challenger minus it) CI [-0.0432, 0.0012]"]
    ),
    verdict_note="no champion yet",
)


def synthetic_report(**options: Any) -> EvaluationReport:
    """One 30 s horizon (``report_entry``'s options), read from metrics.json's layout."""
    return EvaluationReport([HorizonReport.from_json(report_entry(**options))])


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("> **WARNING**")]


def test_the_front_matter_comes_first_then_headline_figures_and_details(tmp_path: Path) -> None:
    write_report(tmp_path, synthetic_report(), "Evaluation", front_matter=FRONT)
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    for row in (
        "| model | bmlt-synthetic-default |",
        "| version | 7 |",
        "| aliases | @challenger, @champion |",
        "| MLflow run | [0123abcd](http://127.0.0.1:5000/#/experiments/1/runs/0123abcd) |",
        "| config | synthetic-default (/work/configs/default.yaml) |",
        "| commit | deadbeefcafe |",
        "| data range | 2025-01-06 to 2025-01-07 (2 days) |",
        "| test period (UTC) | 2025-01-07 00:00:00 to 2025-01-17 00:00:00 (10.00 days, 500 samples; independent "
        "outcomes: 17 at 30 s) |",
        "| costs | fee 1 bps per side + half the quoted spread per side (median spread 1.20 bps) |",
    ):
        assert row in text, row
    assert (
        "**Verdict: NOT PROMOTED** on forecast quality (log loss against every baseline and the champion, and "
        "calibration).\n\nChampion: no champion yet." in text
    )
    assert FRONT.verdict is not None and f"- {FRONT.verdict.reasons[0]}" in text
    markers = ("| model |", "**Verdict:", "## Headline", "## Warnings", "| model | 1.900 [1.850, 1.950]", "## Figures")
    positions = [text.index(marker) for marker in markers]
    positions += [text.index("![equity 30s]"), text.index("![reliability 30s]"), text.index("![confusion 30s]")]
    positions += [text.index("## Details"), text.index("| predictor | accuracy (share) | balanced accuracy")]
    assert positions == sorted(positions)
    assert text[: text.index("## Figures")].count("\n|---") == 2  # front matter and the headline: nothing denser


def test_a_tie_a_worse_calibration_and_a_short_window_each_raise_a_warning() -> None:
    quiet = markdown(synthetic_report(vs_logistic=BETTER), "t", front_matter=FRONT)
    assert _warnings(quiet) == [] and "## Warnings" not in quiet

    tie = _warnings(markdown(synthetic_report(vs_logistic=TIED), "t"))
    assert tie == [
        "> **WARNING** 30 s: the model ties logistic_obi: the 95% CI of the log-loss difference "
        "(model minus logistic_obi) [-0.0432, 0.00120] includes 0."
    ]
    worse = _warnings(markdown(synthetic_report(vs_logistic=BETTER, ece_before=0.021, ece_after=0.0344), "t"))
    assert worse == [
        "> **WARNING** 30 s: the validation-fitted calibration made it worse on the test part: top-label ECE rose from "
        "0.0210 (uncalibrated) to 0.0344 (calibrated); lower is better."
    ]
    short = _warnings(markdown(synthetic_report(vs_logistic=BETTER, days=2.5), "t"))
    assert short == [
        "> **WARNING** The test window is short: 2.50 days (2025-01-07 00:00:00 to 2025-01-09 12:00:00 UTC), "
        "under 7 days: intervals and P&L are noisy."
    ]
    everything = _warnings(markdown(synthetic_report(ece_after=0.09, days=1.0), "t"))
    assert len(everything) == 3


def test_the_comparison_cannot_be_read_backwards() -> None:
    text = markdown(synthetic_report(vs_logistic=TIED), "t")
    assert "does NOT beat every baseline" not in text
    assert (
        "The model beats prior (CI [-0.0800, -0.0200] entirely below 0), persistence (CI [-0.0800, -0.0200] "
        "entirely below 0) and gbm (CI [-0.0800, -0.0200] entirely below 0); it does not beat logistic_obi (CI "
        "[-0.0432, 0.00120] includes 0): a tie; it is worse than oracle (CI [0.0500, 0.200] entirely above 0)." in text
    )
    assert "| logistic_obi | -0.02000 | [-0.04320, 0.001200] | tie (CI includes 0) |" in text


@pytest.mark.parametrize("volatility_scaled", [True, False])
def test_classes_read_as_return_ranges(volatility_scaled: bool) -> None:
    text = markdown(synthetic_report(volatility_scaled=volatility_scaled), "t")
    assert "p0" not in text and "| r0 |" not in text
    if volatility_scaled:
        assert "| 2 | [-1.1σ, -0.45σ) | [-11.0, -4.5) bps | 17 | 17 |" in text
        assert "| 7 | ≥ 2σ | ≥ 20.0 bps |" in text
        assert "its median over the test part is 10.00 bps" in text
    else:
        assert "| 2 | [-11.0, -4.5) bps | 17 | 17 |" in text and "σ" not in text
        assert "| 0 | < -20.0 bps |" in text


def test_every_column_has_a_unit(tmp_path: Path) -> None:
    text = markdown(synthetic_report(), "t", front_matter=FRONT)
    headers = [line for line, below in zip(text.splitlines(), text.splitlines()[1:]) if below.startswith("|---")]
    assert len(headers) >= 8
    labels = {"field", "value", "reading", "comparator", "class"}  # row labels and words, not quantities
    for header in headers:
        cells = [c.strip() for c in header.strip("|").split("|")][1:]
        for cell in cells:
            assert cell in labels or re.search(r"\(.+\)|σ|bps", cell), f"no unit: {cell!r} in {header}"
    assert "turnover (position changes per day)" in text and "max drawdown (bps)" in text
    assert "mean net return (bps per trade)" in text and "log loss (nats)" in text


def test_the_fresh_days_follow_the_headline_and_a_fold_leak_is_a_warning() -> None:
    ci, worse = Interval(0.9, 0.85, 0.95, 10.0), Interval(0.004, 0.002, 0.006, 10.0)
    day = FreshScores("2025-01-08", 8000, 800, {"low": 0.2, "mid": 0.3, "high": 0.5}, {}, {}, ci, ci, {"gbm": worse})
    scores = Classification(0.3, 0.3, 0.3, 0.1, 1.9, 0.8)
    captured = Capture(0.9, 0.9)
    folds = [FoldSummary(k, 0, 86_400 * 10**9, 100, [FoldHorizon(scores, scores, captured, k == 0)]) for k in (0, 1)]
    report = replace(synthetic_report(), fresh=[[day, replace(day, day="pooled")]], walk_forward=folds)
    text = markdown(report, "t")
    assert text.index("## Headline") < text.index("## Fresh days") < text.index("## Figures")
    headline = text[text.index("## Headline") : text.index("## Warnings")]
    assert (
        "- On 1 fresh days after the range: log-loss capture 0.900 [0.850, 0.950], accuracy capture 0.900 "
        "[0.850, 0.950] (95% CIs; 800 independent outcomes)." in headline
    )
    assert "| pooled | 8,000 | 800 | 0.20 / 0.30 / 0.50 | 0.9000 [0.8500, 0.9500] | 0.9000 [0.8500, 0.9500] |" in text
    warnings = _warnings(text)
    assert "PROBABLE LEAK in walk-forward fold 0" in warnings[0]  # a leak outranks every other warning
    # The latest fold's test block is the test part: its flag is the report's own, not warned twice.
    latest = [FoldSummary(k, 0, 86_400 * 10**9, 100, [FoldHorizon(scores, scores, captured, k == 1)]) for k in (0, 1)]
    assert not any("walk-forward fold" in w for w in _warnings(markdown(replace(report, walk_forward=latest), "t")))
    assert any(
        "on the fresh days the model does not beat the gradient-boosted baseline: the 95% CI of the log-loss "
        "difference (model minus gbm) [0.00200, 0.00600] lies entirely above 0." in w
        for w in warnings
    )
    assert "Leak check of every fold's model: PROBABLE LEAK in fold 0 at 30 s." in text


def _losing(**pnl: float) -> dict[str, float]:
    """The losing model's P&L with some fields replaced."""
    return LOSING_PNL | pnl


LOSES = (
    "> **WARNING** 30 s: **the model loses money at the stated costs**: -16.4 bps per trade net (95% CI [-16.9, "
    "-15.9]) over 1,865 trades (hit rate 0.000536), paying 1 bps per side plus half the spread: an edge of -13.2 "
    "bps per trade before costs of 3.20 bps, break-even at a fee of -7.20 bps per side."
)


@pytest.mark.parametrize("net_bps", [-16.4, -0.01, 0.01, 2.5])
def test_the_money_warning_appears_exactly_when_the_model_loses_money(net_bps: float) -> None:
    pnl = _losing(mean_return_bps=net_bps, total_return_bps=net_bps * 1865)
    warnings = _warnings(markdown(synthetic_report(vs_logistic=BETTER, model_pnl=pnl), "t"))
    losing = [w for w in warnings if "loses money at the stated costs" in w]
    assert len(losing) == (net_bps < 0), warnings
    if net_bps == -16.4:  # the oracle, profitable here, shows the signal could pay the costs
        assert losing == [
            LOSES + " The oracle makes +1.25 bps per trade at these costs: the signal pays them, "
            "the model does not capture enough of it."
        ]


def test_the_money_warning_says_when_even_the_oracle_loses_and_when_the_model_never_traded() -> None:
    oracle = {"mean_return_bps": -3.0, "total_return_bps": -300.0, "trades": 100}
    text = markdown(synthetic_report(vs_logistic=BETTER, model_pnl=_losing(), oracle_pnl=oracle), "t")
    assert _warnings(text) == [
        LOSES + " Even the oracle loses (-3.00 bps per trade): at this horizon and threshold the signal cannot pay "
        "these costs."
    ]
    idle = {"trades": 0, "hit_rate": 0.0, "mean_return_bps": 0.0, "total_return_bps": 0.0, "costs_bps": 0.0}
    never = _warnings(markdown(synthetic_report(vs_logistic=BETTER, model_pnl=_losing(**idle)), "t"))
    assert never == [
        "> **WARNING** 30 s: **the model never traded**: no direction's probability mass exceeded 0.6, so what it "
        "is worth to a trader is unmeasured."
    ]


def test_warnings_are_ranked_by_materiality_and_a_trivial_calibration_change_is_none() -> None:
    """Losing money outranks a tie, a short window and a worse calibration, whatever the order they were found in."""
    text = markdown(synthetic_report(model_pnl=_losing(), ece_before=0.021, ece_after=0.0344, days=2.5), "t")
    found = [w.split(": ", 1)[1] if w.startswith("> **WARNING** 30 s") else w for w in _warnings(text)]
    assert [w[:40] for w in found] == [
        "**the model loses money at the stated co",
        "the model ties logistic_obi: the 95% CI ",
        "> **WARNING** The test window is short: ",
        "the validation-fitted calibration made i",
    ]
    worse = synthetic_report(model_pnl=_losing(), vs_logistic={"mean": 0.02, "low": 0.01, "high": 0.03})
    assert "forecasts worse than logistic_obi" in _warnings(markdown(worse, "t"))[1]
    trivial = markdown(synthetic_report(vs_logistic=BETTER, ece_before=0.0210, ece_after=0.0215), "t")
    assert _warnings(trivial) == []  # a 0.0005 rise in ECE is noise


def _significant_digits(token: str) -> int:
    digits = token.lstrip("+-").replace(",", "").replace(".", "").lstrip("0")
    return len(digits)


LONG = {
    "sharpe_annualized": -5298.9491,
    "turnover_per_day": 12345.678901,
    "hit_rate": 0.000536193029,
    "max_drawdown_bps": 30587.3254,
}


def test_numbers_have_at_most_four_significant_digits_and_large_ones_are_whole() -> None:
    entry = report_entry(model_pnl=_losing(**LONG))
    entry["metrics"]["model"] |= {"accuracy": 0.43127891, "log_loss": 1.234567891, "ece": 0.0123456789}
    entry["calibration"]["temperature"] = 1.3456789
    text = markdown(EvaluationReport([HorizonReport.from_json(entry)]), "t", front_matter=FRONT)
    decimals = re.findall(r"(?<![\w.])[-+]?\d[\d,]*\.\d+(?![\w.])", text)
    assert len(decimals) > 100
    assert [d for d in decimals if _significant_digits(d) > 4] == []
    assert "-5,299" in text and "-5298.9" not in text  # the Sharpe of issue 25
    assert "| 0.4313 [" in text and "0.000536" in text and "12,346" in text and "1.346" in text


def test_independent_outcomes_stand_beside_every_sample_count() -> None:
    fold = FoldSummary(0, START_NS, START_NS + 10**12, 480, [FoldHorizon(*_fold_scores(), independent_outcomes=16)])
    report = EvaluationReport([HorizonReport.from_json(report_entry())], [fold])
    text = markdown(report, "t", front_matter=FRONT)
    assert "500 samples; independent outcomes: 17 at 30 s)" in text  # front matter
    assert "**30 s** (500 samples, 17 independent outcomes)" in text  # headline
    assert "### 30 s horizon (500 samples, 17 independent outcomes)" in text  # results
    assert "a 30 s outcome spans 30 steps, so the 500 samples hold 17 independent outcomes." in text  # classes
    assert "| volatility regime (train terciles) | samples (count) | independent outcomes (count) |" in text
    assert "| low | 166 | 6 |" in text
    assert "| independent outcomes 30 s (count) |" in text and "| 480 | 16 |" in text  # walk-forward
    # What the intervals rest on: blocks at least as long as the overlap.
    assert (
        "Intervals: a stationary block bootstrap of the 500 overlapping samples, expected block length 31.5 samples "
        "(Politis-White), at least the horizon's 30 steps: the overlap is not counted as independent." in text
    )
    older = report_entry(independent_outcomes=None)  # a report of an earlier version
    older["regimes"] = {
        r: {k: v for k, v in scores.items() if k != "independent_outcomes"} for r, scores in older["regimes"].items()
    }
    earlier = markdown(EvaluationReport([HorizonReport.from_json(older)]), "t")
    assert "### 30 s horizon (500 samples)" in earlier and "independent outcomes" not in earlier


def _fold_scores() -> tuple[Classification, Classification]:
    scores = {"balanced_accuracy": 0.3, "macro_f1": 0.3, "mcc": 0.1, "brier": 0.8}
    return Classification(accuracy=0.31, log_loss=1.8, **scores), Classification(accuracy=0.2, log_loss=2.0, **scores)


def test_the_headline_comes_first_with_capture_the_best_baseline_and_the_margin() -> None:
    entry = report_entry(vs_logistic=BETTER, model_pnl=_losing())
    entry["metrics"]["logistic_obi"] = entry["metrics"]["logistic_obi"] | {"log_loss": 1.85}  # the best baseline
    entry["log_loss_differences"]["model_minus_logistic_obi"] = {"mean": -0.0123, "low": -0.0166, "high": -0.0081}
    text = markdown(EvaluationReport([HorizonReport.from_json(entry)]), "t", front_matter=FRONT)
    headline = text[text.index("## Headline") : text.index("## Warnings")]
    assert headline.splitlines()[4:8] == [
        "- Capture: 0.400 of the oracle's log-loss edge over the class prior (0.500 of its accuracy edge; 0 = the "
        "prior, 1 = the oracle).",
        "- Best baseline: logistic_obi. The model's margin over it: +0.0123 nats of log loss per sample, 95% CI "
        "[0.00810, 0.0166] (the model is better beyond noise).",
        "- Money: at the stated costs (1 bps per side plus half the spread) the model LOSES 16.4 bps per trade net "
        "(95% CI [-16.9, -15.9]) over 1,865 trades (hit rate 0.000536): an edge of -13.2 bps per trade before "
        "costs of 3.20 bps, break-even at a fee of -7.20 bps per side.",
        "- Intervals: a stationary block bootstrap of the 500 overlapping samples, expected block length 31.5 "
        "samples (Politis-White), at least the horizon's 30 steps: the overlap is not counted as independent.",
    ]
    assert text.index("## Headline") < text.index("## Warnings") < text.index("## Results per horizon")


@pytest.mark.parametrize(("promote", "profitable"), [(True, False), (True, True), (False, False), (False, True)])
def test_the_verdict_says_in_one_sentence_what_it_rests_on_and_whether_the_model_makes_money(
    promote: bool, profitable: bool
) -> None:
    pnl = _losing() if not profitable else _losing(mean_return_bps=2.5, total_return_bps=4662.5)
    entry = report_entry(vs_logistic=BETTER if promote else TIED, model_pnl=pnl)
    entry["metrics"]["model"] = entry["metrics"]["model"] | {"ece": 0.01}
    report = EvaluationReport([HorizonReport.from_json(entry)])
    verdict = gate(report.horizons, False, False, PromotionConfig(), "no champion yet")
    assert verdict.promote == promote
    text = markdown(report, "t", front_matter=replace(FRONT, verdict=verdict))
    line = next(line for line in text.splitlines() if line.startswith("**Verdict:"))
    outcome = "PROMOTED to @champion" if promote else "NOT PROMOTED"
    basis = "on forecast quality (log loss against every baseline and the champion, and calibration) alone"
    money = (
        "at the stated costs the model also makes money: 30 s: +2.50 bps per trade net"
        if profitable
        else "a statistical verdict and not a trading one: at the stated costs the model LOSES money: 30 s: -16.4 "
        "bps per trade net (95% CI [-16.9, -15.9]) over 1,865 trades at 1 bps per side"
    )
    assert line.startswith(f"**Verdict: {outcome}** {basis}")
    assert money in line  # in the same sentence as the verdict
    assert line.count(". ") == 0 and line.endswith(".")


def test_bmlt_report_prints_the_headline_counts_and_warnings_most_material_first(tmp_path: Path) -> None:
    """The terminal view of a report logged to a real MLflow store reads like the Markdown."""
    config_path = write_config(tmp_path)
    tracker = tracked_run(load_config(config_path))
    entry = report_entry(model_pnl=_losing(**LONG), ece_before=0.021, ece_after=0.0344)
    report, folder = EvaluationReport([HorizonReport.from_json(entry)]), tmp_path / "report"
    folder.mkdir()
    write_report(folder, report, "t", front_matter=FRONT)
    tracker.client.log_artifacts(tracker.run_id, str(folder), "report")
    verdict = gate(report.horizons, False, False, PromotionConfig(), "no champion yet")
    tracker.client.log_dict(tracker.run_id, {"sentence": verdict.sentence}, "report/promotion.json")
    shown = subprocess.run(
        [str(Path(sys.executable).parent / "bmlt"), "report", tracker.run_id, "--config", str(config_path)]
        + ["--out", str(tmp_path / "report.html")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"Verdict: {verdict.sentence}" and "LOSES money" in lines[0]
    assert "Horizon 30s, 500 samples, 17 independent outcomes" in lines
    start = lines.index("Horizon 30s, 500 samples, 17 independent outcomes")
    assert [line.split(":")[0] for line in lines[start + 1 : start + 5]] == [
        "  Capture",
        "  Best baseline",
        "  Money",
        "  Intervals",
    ]
    table = lines[start + 5 : start + 12]
    names = [row.split()[0] for row in table]
    assert names == ["predictor", "model", "prior", "persistence", "logistic_obi", "gbm", "oracle"]
    assert table[1].split() == ["model", "0.2500", "1.900", "0.2500", "-16.40", "-5,299"]
    warnings = lines[lines.index("Warnings, most material first:") + 1 :]
    assert [w.split(": ")[1][:24] for w in warnings if w.startswith("  - ")] == [
        "the model loses money at",
        "the model ties logistic_",
        "the validation-fitted ca",
    ]
    decimals = re.findall(r"(?<![\w.])[-+]?\d[\d,]*\.\d+(?![\w.])", shown.stdout)
    assert decimals and [d for d in decimals if _significant_digits(d) > 4] == []
