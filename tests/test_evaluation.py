"""Evaluation math on hand-made cases with known answers."""

from __future__ import annotations

import html.parser
from pathlib import Path

import numpy as np
import pytest

from bmlt_assets.core.backtest import SECONDS_PER_YEAR, run_backtest
from bmlt_assets.core.calibration import expected_calibration_error, fit_temperature
from bmlt_assets.core.evaluation import direction_classes
from bmlt_assets.core.metrics import classification_metrics, persistence_probabilities
from bmlt_assets.core.report import write_report
from bmlt_assets.core.uncertainty import mean_interval
from bmlt_resources.binance import with_market_fee


def test_a_perfectly_calibrated_predictor_has_ece_near_zero() -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(4), size=200_000)
    classes = (rng.random(len(probabilities))[:, None] > probabilities.cumsum(axis=1)).sum(axis=1)
    assert expected_calibration_error(probabilities, classes) < 0.01
    overconfident = probabilities**3 / (probabilities**3).sum(axis=1, keepdims=True)
    assert expected_calibration_error(overconfident, classes) > 0.1


def test_constant_predictor_brier_matches_the_closed_form() -> None:
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 3, 5000)
    q = np.array([0.2, 0.5, 0.3])
    frequency = np.bincount(classes, minlength=3) / len(classes)
    # E||q - e_y||^2 = sum_c q_c^2 - 2 sum_c q_c f_c + 1
    expected = (q**2).sum() - 2 * (q * frequency).sum() + 1
    got = classification_metrics(classes, np.broadcast_to(q, (len(classes), 3)).copy())["brier"]
    assert got == pytest.approx(expected, rel=1e-9)


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(2)
    true_logits = rng.normal(0, 2, (40_000, 5))
    classes = np.array([rng.choice(5, p=np.exp(z) / np.exp(z).sum()) for z in true_logits])
    assert fit_temperature(true_logits * 2.5, classes) == pytest.approx(2.5, rel=0.05)


def _path() -> tuple[np.ndarray, np.ndarray]:
    steps = np.arange(0, 40, 2)  # a sample every 2 steps
    realized = np.where(np.arange(20) % 2 == 0, 0.002, -0.001)
    return steps, realized


def test_backtest_never_overlaps_positions() -> None:
    steps, realized = _path()
    trades = run_backtest(
        steps, np.full(20, 0.9), np.zeros(20), realized, np.zeros(20), horizon=5, threshold=0.5, fee_bps=0, cadence_s=1
    )
    entered = steps[trades.entries]
    assert (np.diff(entered) >= 5).all()
    np.testing.assert_array_equal(entered, [0, 6, 12, 18, 24, 30, 36])


def test_costs_reduce_pnl_by_exactly_fee_times_turnover() -> None:
    steps, realized = _path()
    args = {"horizon": 5, "threshold": 0.5, "cadence_s": 1}
    free = run_backtest(steps, np.full(20, 0.9), np.zeros(20), realized, np.zeros(20), fee_bps=0, **args).summary()
    paid = run_backtest(steps, np.full(20, 0.9), np.zeros(20), realized, np.zeros(20), fee_bps=3, **args).summary()
    turnover_trades = 2 * free["trades"]  # every trade enters and exits
    assert free["total_return_bps"] - paid["total_return_bps"] == pytest.approx(3 * turnover_trades)


def test_sharpe_and_drawdown_match_a_hand_computation() -> None:
    steps, realized = _path()
    trades = run_backtest(
        steps, np.full(20, 0.9), np.zeros(20), realized, np.zeros(20), horizon=5, threshold=0.5, fee_bps=0, cadence_s=1
    )
    net = realized[trades.entries]  # long every time, no costs
    span = steps[-1] - steps[0] + 5
    sharpe = net.mean() / net.std(ddof=1) * np.sqrt(len(net) / span * SECONDS_PER_YEAR)
    equity = np.concatenate([[0], np.cumsum(net)])
    drawdown = (np.maximum.accumulate(equity) - equity).max()
    summary = trades.summary()
    assert summary["sharpe_annualized"] == pytest.approx(sharpe)
    assert summary["max_drawdown_bps"] == pytest.approx(drawdown * 1e4)
    short = run_backtest(
        steps, np.zeros(20), np.full(20, 0.9), realized, np.zeros(20), horizon=5, threshold=0.5, fee_bps=0, cadence_s=1
    )
    np.testing.assert_allclose(short.gross, -trades.gross)


def test_block_bootstrap_interval_covers_the_truth_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(3)
    covered = 0
    runs = 60
    for _ in range(runs):
        noise = rng.normal(size=400)
        series = 1.0 + np.convolve(noise, np.ones(5) / 5, mode="same")  # autocorrelated, mean 1
        interval = mean_interval(series, minimum_block=5, seed=int(rng.integers(1 << 30)))
        covered += interval["low"] <= 1.0 <= interval["high"]
    assert 0.85 <= covered / runs <= 1.0


def test_direction_classes_follow_the_zero_edge() -> None:
    up, down = direction_classes(np.array([-2.0, -1.0, 0.0, 1.0, 2.0]))
    np.testing.assert_array_equal(up, [3, 4, 5])
    np.testing.assert_array_equal(down, [0, 1, 2])
    up, down = direction_classes(np.array([-1.0, 1.0]))  # a flat middle class
    np.testing.assert_array_equal(up, [2])
    np.testing.assert_array_equal(down, [0])


def test_persistence_uses_the_training_transitions() -> None:
    previous = np.array([0, 0, 0, 1, 1, -1])
    classes = np.array([0, 0, 1, 1, 1, 0])
    p = persistence_probabilities(previous, classes, np.array([0, 1, -1]), 2)
    np.testing.assert_allclose(p[0], [3 / 5, 2 / 5])  # add-one smoothing: (2+1, 1+1)
    np.testing.assert_allclose(p[1], [1 / 4, 3 / 4])
    np.testing.assert_allclose(p[2], [1 / 2, 1 / 2])  # unknown: the class prior


class _Collector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def _fake_report(leak: bool) -> list[dict]:
    rng = np.random.default_rng(4)
    predictors = ("model", "prior", "oracle")
    metric = {
        k: float(rng.random())
        for k in (
            "accuracy",
            "balanced_accuracy",
            "macro_f1",
            "mcc",
            "log_loss",
            "brier",
            "ece",
            "directional_accuracy",
        )
    }
    ci = {"mean": 0.1, "low": 0.05, "high": 0.2, "block_length": 3}
    pnl = {
        "trades": 3,
        "hit_rate": 0.5,
        "mean_return_bps": 1.0,
        "sharpe_annualized": 1.0,
        "max_drawdown_bps": 2.0,
        "turnover_per_day": 10.0,
        "total_return_bps": 3.0,
        "costs_bps": 1.0,
    }
    return [
        {
            "horizon_steps": 3,
            "horizon_s": 30,
            "samples": 100,
            "test_period": {"first_ns": 1_736_200_000 * 10**9, "last_ns": 1_736_900_000 * 10**9},
            "costs": {
                "fee_bps_per_side": 1.0,
                "half_spread_per_side": True,
                "median_spread_bps": 0.5,
                "pnl_threshold": 0.6,
            },
            "classes": {"kind": "quantile", "edges_bps": [-3.0, 3.0]},
            "metrics": dict.fromkeys(predictors, metric),
            "intervals": {p: {"accuracy": ci, "log_loss": ci} for p in predictors},
            "log_loss_differences": {"model_minus_prior": ci, "model_minus_oracle": ci},
            "calibration": {
                "temperature": 1.2,
                "bins": "15 equal-width top-label confidence bins",
                "before": {"ece": 0.1, "log_loss": 2.0},
                "after": {"ece": 0.05, "log_loss": 1.9},
                "reliability": [{"predicted": [0.1, 0.5], "observed": [0.12, 0.4]}] * 3,
            },
            "confusion": [[5, 1, 0], [2, 6, 1], [0, 1, 4]],
            "class_distribution": {"realized": [6, 9, 5], "predicted": [7, 8, 5]},
            "pnl": dict.fromkeys(predictors, pnl),
            "equity": {
                p: {
                    "steps": [1, 4, 7],
                    "timestamps_ns": [(1_736_200_000 + 3600 * k) * 10**9 for k in (1, 4, 7)],
                    "equity_bps": [1.0, -0.5, 2.0],
                }
                for p in predictors
            },
            "regimes": {r: {"samples": 30, "accuracy": 0.3, "log_loss": 1.9} for r in ("low", "mid", "high")},
            "beats_baselines": True,
            "capture": {"accuracy_capture": 0.9, "logloss_capture": 0.8},
            "leak_suspected": leak,
        }
    ]


@pytest.mark.parametrize("leak", [False, True])
def test_report_files_figures_html_and_the_leak_flag(tmp_path: Path, leak: bool) -> None:
    embedded, pngs = write_report(tmp_path, _fake_report(leak), [30], "test report")
    assert set(pngs) == {"confusion_30s.png", "reliability_30s.png", "equity_30s.png", "classes_30s.png"}
    for name in pngs:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 2000
    page = (tmp_path / "report.html").read_text()
    collector = _Collector()
    collector.feed(page)
    assert collector.tags[:3] == ["html", "head", "meta"] and "table" in collector.tags
    assert len(collector.images) == 4 and all(src.startswith("data:image/png;base64,") for src in collector.images)
    flagged = "PROBABLE LEAK" in page and 'style="color:red"' in page
    assert flagged == leak
    assert ("PROBABLE LEAK" in (tmp_path / "report.md").read_text()) == leak
    assert "![equity 30s](data:image/png;base64," in embedded


def test_the_leak_flag_fires_when_a_model_sees_the_future_and_only_then(tiny_config) -> None:
    from bmlt_assets.core.dataset import build_dataset
    from bmlt_assets.core.evaluation import evaluate
    from bmlt_resources.synthetic import SyntheticMarketResource
    from tests.helpers import synthetic_days

    data = build_dataset(synthetic_days(tiny_config), tiny_config)
    d = tiny_config.data
    market = SyntheticMarketResource.for_config(tiny_config).market()

    def oracle(i, steps, edges):
        return market.oracle_at(tiny_config.target, data.source.timestamps[steps], data.horizons[i], edges)

    test = data.parts["test"]
    oracle_logits = np.stack(
        [np.log(oracle(i, test.steps, test.edges[:, i])) for i in range(len(data.horizons))], axis=1
    )
    future = 5.0 * np.eye(data.n_classes)[test.classes]  # a "model" that knows the realized class
    costs = with_market_fee(tiny_config.evaluation, d.market)
    honest = evaluate(data, oracle_logits, [1.0, 1.0], oracle, costs, d.cadence_ms / 1000)
    leaky = evaluate(data, future, [1.0, 1.0], oracle, costs, d.cadence_ms / 1000)
    assert not any(entry["leak_suspected"] for entry in honest)
    assert all(entry["leak_suspected"] for entry in leaky)
    assert all(entry["capture"]["accuracy_capture"] > 1 for entry in leaky)


def test_the_default_fee_is_the_markets_taker_fee(tiny_config) -> None:
    from bmlt_assets.core.dataset import build_dataset
    from bmlt_assets.core.evaluation import evaluate
    from bmlt_resources.binance import taker_fee_bps
    from tests.helpers import synthetic_days

    assert taker_fee_bps("spot") == pytest.approx(10.0)  # Binance's published base-tier taker fees
    assert taker_fee_bps("usdm") == pytest.approx(5.0)
    assert tiny_config.evaluation.fee_bps is None  # the default: the market's fee, not a made-up 1 bp
    assert with_market_fee(tiny_config.evaluation, "usdm").fee_bps == pytest.approx(5.0)
    configured = tiny_config.evaluation.model_copy(update={"fee_bps": 2.5})
    assert with_market_fee(configured, "spot").fee_bps == 2.5
    with pytest.raises(ValueError, match="fee_bps is unresolved"):
        evaluate(build_dataset(synthetic_days(tiny_config), tiny_config), None, [], None, tiny_config.evaluation, 1.0)
