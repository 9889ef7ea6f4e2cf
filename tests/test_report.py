"""The evaluation report's Markdown: front matter, order, warnings, wording, classes and units."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from bmlt_assets.core.report import markdown, write_report

DAY_NS = 86_400 * 10**9
START_NS = 1_736_208_000 * 10**9  # 2025-01-07 00:00:00 UTC
BETTER = {"mean": -0.05, "low": -0.08, "high": -0.02, "block_length": 3}
TIED = {"mean": -0.02, "low": -0.0432, "high": 0.0012, "block_length": 3}
WORSE = {"mean": 0.1, "low": 0.05, "high": 0.2, "block_length": 3}
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "mcc", "log_loss", "brier", "ece", "directional_accuracy")
PREDICTORS = ("model", "prior", "persistence", "logistic_obi", "oracle")
FRONT = {
    "model": "bmlt-synthetic-default",
    "version": "7",
    "aliases": ["challenger", "champion"],
    "run_id": "0123abcd",
    "run_url": "http://127.0.0.1:5000/#/experiments/1/runs/0123abcd",
    "config_name": "synthetic-default",
    "config_path": "/work/configs/default.yaml",
    "commit": "deadbeefcafe",
    "data_range": "2025-01-06 to 2025-01-07 (2 days)",
    "verdict": {
        "promote": False,
        "reasons": ["30 s: does not beat logistic_obi: log-loss difference (challenger minus it) CI [-0.0432, 0.0012]"],
        "note": "no champion yet",
    },
}


def synthetic_report(
    ece_before: float = 0.05,
    ece_after: float = 0.02,
    vs_logistic: dict[str, float] = TIED,
    days: float = 10.0,
    volatility_scaled: bool = True,
) -> list[dict[str, Any]]:
    """One 30 s horizon, shaped as ``evaluate`` makes it, with chosen calibration, tie and window."""
    edges_sigma = [-2.0, -1.1, -0.45, 0.0, 0.45, 1.1, 2.0]
    classes: dict[str, Any] = {"kind": "quantile", "edges_bps": [e * 10.0 for e in edges_sigma]}
    if volatility_scaled:
        classes = {"kind": "volatility_scaled", "edges_bps": classes["edges_bps"], "edges_sigma": edges_sigma}
        classes["sigma_bps_median"] = 10.0
    first, last = START_NS, START_NS + int(days * DAY_NS)
    pnl = {
        "trades": 3,
        "hit_rate": 0.5,
        "mean_return_bps": 1.25,
        "total_return_bps": 3.75,
        "costs_bps": 6.0,
        "sharpe_annualized": 1.5,
        "max_drawdown_bps": 2.0,
        "turnover_per_day": 10.0,
    }
    interval = {"mean": 1.9, "low": 1.85, "high": 1.95, "block_length": 3}
    return [
        {
            "horizon_steps": 30,
            "horizon_s": 30,
            "samples": 500,
            "test_period": {"first_ns": first, "last_ns": last},
            "costs": {
                "fee_bps_per_side": 1.0,
                "half_spread_per_side": True,
                "median_spread_bps": 1.2,
                "pnl_threshold": 0.6,
            },
            "classes": classes,
            "metrics": {p: dict.fromkeys(METRICS, 0.25) | {"log_loss": 1.9} for p in PREDICTORS},
            "intervals": {p: {"accuracy": interval, "log_loss": interval} for p in PREDICTORS},
            "log_loss_differences": {
                "model_minus_prior": BETTER,
                "model_minus_persistence": BETTER,
                "model_minus_logistic_obi": vs_logistic,
                "model_minus_oracle": WORSE,
            },
            "calibration": {
                "temperature": 1.3,
                "bias": [0.1, -0.05, -0.05],
                "bins": "15 equal-width top-label confidence bins",
                "before": {"ece": ece_before, "log_loss": 1.95},
                "after": {"ece": ece_after, "log_loss": 1.9},
                "reliability": [{"predicted": [0.1, 0.3], "observed": [0.12, 0.28]}] * 8,
            },
            "confusion": [[10 if i == j else 1 for j in range(8)] for i in range(8)],
            "class_distribution": {"realized": [17] * 8, "predicted": [17] * 8},
            "pnl": dict.fromkeys(PREDICTORS, pnl),
            "equity": {
                p: {
                    "steps": [3, 90, 200],
                    "timestamps_ns": [first + k * (last - first) // 4 for k in (1, 2, 3)],
                    "equity_bps": [1.0, -0.5, 3.75],
                }
                for p in PREDICTORS
            },
            "regimes": {r: {"samples": 166, "accuracy": 0.25, "log_loss": 1.9} for r in ("low", "mid", "high")},
            "beats_baselines": False,
            "capture": {"accuracy_capture": 0.5, "logloss_capture": 0.4},
            "capture_by_predictor": {p: {"accuracy_capture": 0.5, "logloss_capture": 0.4} for p in PREDICTORS},
            "leak_suspected": False,
        }
    ]


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("> **WARNING**")]


def test_the_front_matter_comes_first_then_headline_figures_and_details(tmp_path: Path) -> None:
    write_report(tmp_path, synthetic_report(), [30], "Evaluation", front_matter=FRONT)
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
    assert f"- {FRONT['verdict']['reasons'][0]}" in text
    positions = [
        text.index(marker)
        for marker in ("| model |", "**Verdict:", "## Headline", "| model | 1.9000 [1.8500, 1.9500]", "## Figures")
    ]
    positions += [text.index("![equity 30s]"), text.index("![reliability 30s]"), text.index("![confusion 30s]")]
    positions += [text.index("## Details"), text.index("| predictor | accuracy (share) | balanced accuracy")]
    assert positions == sorted(positions)
    assert text[: text.index("## Figures")].count("\n|---") == 2  # front matter and the headline: nothing denser


def test_a_tie_a_worse_calibration_and_a_short_window_each_raise_a_warning() -> None:
    quiet = markdown(synthetic_report(vs_logistic=BETTER), [30], "t", front_matter=FRONT)
    assert _warnings(quiet) == [] and "## Warnings" not in quiet

    tie = _warnings(markdown(synthetic_report(vs_logistic=TIED), [30], "t"))
    assert tie == [
        "> **WARNING** 30 s: the model ties logistic_obi: the 95% CI of the log-loss difference "
        "(model minus logistic_obi) [-0.0432, 0.0012] includes 0."
    ]
    worse = _warnings(markdown(synthetic_report(vs_logistic=BETTER, ece_before=0.021, ece_after=0.0344), [30], "t"))
    assert worse == [
        "> **WARNING** 30 s: the validation-fitted calibration made it worse on the test part: top-label ECE rose from "
        "0.0210 (uncalibrated) to 0.0344 (calibrated); lower is better."
    ]
    short = _warnings(markdown(synthetic_report(vs_logistic=BETTER, days=2.5), [30], "t"))
    assert short == [
        "> **WARNING** The test window is short: 2.50 days (2025-01-07 00:00:00 to 2025-01-09 12:00:00 UTC), "
        "under 7 days: intervals and P&L are noisy."
    ]
    everything = _warnings(markdown(synthetic_report(ece_after=0.09, days=1.0), [30], "t"))
    assert len(everything) == 3


def test_the_comparison_cannot_be_read_backwards() -> None:
    text = markdown(synthetic_report(vs_logistic=TIED), [30], "t")
    assert "does NOT beat every baseline" not in text
    assert (
        "The model beats prior (CI [-0.0800, -0.0200] entirely below 0) and persistence (CI [-0.0800, -0.0200] "
        "entirely below 0); it does not beat logistic_obi (CI [-0.0432, 0.0012] includes 0): a tie; it is worse "
        "than oracle (CI [0.0500, 0.2000] entirely above 0)." in text
    )
    assert "| logistic_obi | -0.0200 | [-0.0432, 0.0012] | tie (CI includes 0) |" in text


@pytest.mark.parametrize("volatility_scaled", [True, False])
def test_classes_read_as_return_ranges(volatility_scaled: bool) -> None:
    text = markdown(synthetic_report(volatility_scaled=volatility_scaled), [30], "t")
    assert "p0" not in text and "| r0 |" not in text
    if volatility_scaled:
        assert "| 2 | [-1.1σ, -0.45σ) | [-11.0, -4.5) bps | 17 | 17 |" in text
        assert "| 7 | ≥ 2σ | ≥ 20.0 bps |" in text
        assert "its median over the test part is 10.00 bps" in text
    else:
        assert "| 2 | [-11.0, -4.5) bps | 17 | 17 |" in text and "σ" not in text
        assert "| 0 | < -20.0 bps |" in text


def test_every_column_has_a_unit(tmp_path: Path) -> None:
    text = markdown(synthetic_report(), [30], "t", front_matter=FRONT)
    headers = [line for line, below in zip(text.splitlines(), text.splitlines()[1:]) if below.startswith("|---")]
    assert len(headers) >= 8
    labels = {"field", "value", "reading", "comparator", "class"}  # row labels and words, not quantities
    for header in headers:
        cells = [c.strip() for c in header.strip("|").split("|")][1:]
        for cell in cells:
            assert cell in labels or re.search(r"\(.+\)|σ|bps", cell), f"no unit: {cell!r} in {header}"
    assert "turnover (position changes per day)" in text and "max drawdown (bps)" in text
    assert "mean net return (bps per trade)" in text and "log loss (nats)" in text
