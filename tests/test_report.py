"""The evaluation report's Markdown: front matter, order, warnings, wording, classes and units."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from bmlt_assets.core.evaluation_report import EvaluationReport, HorizonReport
from bmlt_assets.core.promotion import Verdict
from bmlt_assets.core.report import FrontMatter, markdown, write_report
from tests.helpers import BETTER, TIED, report_entry

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
        "| test period (UTC) | 2025-01-07 00:00:00 to 2025-01-17 00:00:00 (10.00 days, 500 samples) |",
        "| costs | fee 1 bps per side + half the quoted spread per side (median spread 1.20 bps) |",
    ):
        assert row in text, row
    assert "**Verdict: NOT PROMOTED** (no champion yet). Reasons:" in text
    assert FRONT.verdict is not None and f"- {FRONT.verdict.reasons[0]}" in text
    positions = [
        text.index(marker)
        for marker in ("| model |", "**Verdict:", "## Headline", "| model | 1.9000 [1.8500, 1.9500]", "## Figures")
    ]
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
        "(model minus logistic_obi) [-0.0432, 0.0012] includes 0."
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
        "The model beats prior (CI [-0.0800, -0.0200] entirely below 0) and persistence (CI [-0.0800, -0.0200] "
        "entirely below 0); it does not beat logistic_obi (CI [-0.0432, 0.0012] includes 0): a tie; it is worse "
        "than oracle (CI [0.0500, 0.2000] entirely above 0)." in text
    )
    assert "| logistic_obi | -0.0200 | [-0.0432, 0.0012] | tie (CI includes 0) |" in text


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
