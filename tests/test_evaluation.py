"""Evaluation math on hand-made cases with known answers."""

from __future__ import annotations

import html.parser
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.special import softmax

from bmlt_assets.core.backtest import SECONDS_PER_YEAR, run_backtest
from bmlt_assets.core.book import book_arrays
from bmlt_assets.core.calibration import (
    Calibration,
    expected_calibration_error,
    fit_calibration,
    validation_calibration,
)
from bmlt_assets.core.checkpoint import spec_calibration
from bmlt_assets.core.config import PlatformConfig, load_config
from bmlt_assets.core.dataset import TrainingData, build_dataset, load_dataset, save_dataset
from bmlt_assets.core.days import LabelledDay
from bmlt_assets.core.evaluation import direction_classes, evaluate, fold_summary
from bmlt_assets.core.evaluation_report import EvaluationReport, FreshScores, HorizonReport, Interval
from bmlt_assets.core.labels import classify
from bmlt_assets.core.metrics import (
    classification_metrics,
    logistic_baseline,
    order_book_features,
    persistence_probabilities,
)
from bmlt_assets.core.report import write_report
from bmlt_assets.core.representation import day_grid_ns
from bmlt_assets.core.train import build_model
from bmlt_assets.core.uncertainty import independent_outcomes, mean_interval
from bmlt_resources.binance import with_market_fee
from bmlt_resources.synthetic import SyntheticMarketResource
from tests.helpers import synthetic_days, write_config


def test_a_perfectly_calibrated_predictor_has_ece_near_zero() -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(4), size=200_000)
    classes = (rng.random(len(probabilities))[:, None] > probabilities.cumsum(axis=1)).sum(axis=1)
    assert expected_calibration_error(probabilities, classes) < 0.01
    overconfident = probabilities**3 / (probabilities**3).sum(axis=1, keepdims=True)
    assert expected_calibration_error(overconfident, classes) > 0.1


def test_a_checkpoint_from_before_the_class_bias_keeps_its_temperatures() -> None:
    legacy = spec_calibration({"temperatures": [1.5, 0.8], "n_classes": 3})
    assert legacy == [Calibration(1.5, (0.0, 0.0, 0.0)), Calibration(0.8, (0.0, 0.0, 0.0))]
    logits = np.array([[1.0, 2.0, 0.5]])
    np.testing.assert_allclose(legacy[0].probabilities(logits), softmax(logits / 1.5, axis=1))


def test_the_calibration_is_fitted_on_the_validation_part_only(tiny_config: PlatformConfig) -> None:
    data = build_dataset(synthetic_days(tiny_config), tiny_config)
    model = build_model(tiny_config, data).eval()  # untrained: any fixed logits will do
    fitted = validation_calibration(model, data)
    data.parts["test"].classes[:] = 0  # every test label rewritten: nothing changes
    data.parts["train"].classes[:] = 0
    assert validation_calibration(model, data) == fitted
    data.parts["val"].classes[:] = 0  # the validation labels are what it is fitted on
    assert validation_calibration(model, data)[0].bias[0] > fitted[0].bias[0] + 1


def test_constant_predictor_brier_matches_the_closed_form() -> None:
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 3, 5000)
    q = np.array([0.2, 0.5, 0.3])
    frequency = np.bincount(classes, minlength=3) / len(classes)
    # E||q - e_y||^2 = sum_c q_c^2 - 2 sum_c q_c f_c + 1
    expected = (q**2).sum() - 2 * (q * frequency).sum() + 1
    got = classification_metrics(classes, np.broadcast_to(q, (len(classes), 3)).copy()).brier
    assert got == pytest.approx(expected, rel=1e-9)


def test_calibration_recovers_a_known_temperature_and_class_bias() -> None:
    """Logits scaled by 2.5 and shifted per class (as a class-weighted loss shifts them) are
    mapped back to the true probabilities."""
    rng = np.random.default_rng(2)
    true_logits = rng.normal(0, 2, (40_000, 5))
    classes = np.array([rng.choice(5, p=np.exp(z) / np.exp(z).sum()) for z in true_logits])
    shift = np.array([0.8, -0.3, 0.0, -0.2, -0.3])  # sums to 0, like the fitted bias
    calibration = fit_calibration((true_logits - shift) * 2.5, classes)
    assert calibration.temperature == pytest.approx(2.5, rel=0.05)
    np.testing.assert_allclose(calibration.bias, shift, atol=0.05)
    recovered = calibration.probabilities((true_logits - shift) * 2.5)
    np.testing.assert_allclose(recovered, np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True), atol=0.02)


def _drawn(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    probabilities = softmax(logits, axis=1)
    return (rng.random(len(logits))[:, None] > probabilities.cumsum(axis=1)).sum(axis=1)


def test_a_class_bias_within_its_own_noise_is_shrunk_to_zero_and_a_real_one_is_kept() -> None:
    """800 independent outcomes, each label seen by 4 overlapping samples (as a 30 s label is by
    neighbouring steps): the maximum-likelihood bias of well-calibrated logits is pure noise, and
    its prior, scaled by the independent outcomes, takes it back to 0; a real shift is kept."""
    rng = np.random.default_rng(5)
    outcomes, overlap = 800, 4
    true_logits = rng.normal(0, 1.0, (outcomes, 8))
    classes = np.repeat(_drawn(true_logits, rng), overlap)
    logits = np.repeat(true_logits, overlap, axis=0)
    maximum_likelihood = fit_calibration(logits, classes, outcomes=10**9)  # every sample independent: no shrinkage
    assert np.abs(maximum_likelihood.bias).max() > 0.1  # noise the next window does not repeat
    shrunk = fit_calibration(logits, classes, outcomes=outcomes)
    assert np.abs(shrunk.bias).max() < min(0.03, np.abs(maximum_likelihood.bias).max() / 4)
    assert shrunk.temperature == pytest.approx(shrunk.temperature_alone, abs=0.01)
    assert shrunk.temperature_alone == pytest.approx(1.0, abs=0.1)
    assert shrunk.without_bias() == Calibration(shrunk.temperature_alone, (0.0,) * 8)

    shift = np.array([0.6, -0.3, 0.0, 0.1, -0.2, 0.0, 0.1, -0.3])  # what class weights leave: real
    shifted = np.repeat(_drawn(true_logits + shift, rng), overlap)
    kept = fit_calibration(logits, shifted, outcomes=outcomes)
    assert kept.bias_prior_sd > 0.1
    np.testing.assert_allclose(kept.bias, shift, atol=0.15)


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
    turnover_trades = 2 * free.trades  # every trade enters and exits
    assert free.total_return_bps - paid.total_return_bps == pytest.approx(3 * turnover_trades)


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
    assert summary.sharpe_annualized == pytest.approx(sharpe)
    assert summary.max_drawdown_bps == pytest.approx(drawdown * 1e4)
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
        covered += interval.low <= 1.0 <= interval.high
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


def _fake_report(leak: bool) -> EvaluationReport:
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
    entries = [
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
                "bias": [0.0, 0.1, -0.1],
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
    return EvaluationReport([HorizonReport.from_json(entry) for entry in entries])


@pytest.mark.parametrize("leak", [False, True])
def test_report_files_figures_html_and_the_leak_flag(tmp_path: Path, leak: bool) -> None:
    embedded, pngs = write_report(tmp_path, _fake_report(leak), "test report")
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
    uncalibrated = [Calibration.identity(data.n_classes)] * 2
    honest = evaluate(data, oracle_logits, uncalibrated, oracle, costs, d.cadence_ms / 1000)
    leaky = evaluate(data, future, uncalibrated, oracle, costs, d.cadence_ms / 1000)
    assert not any(entry.leak_suspected for entry in honest)
    assert all(entry.leak_suspected for entry in leaky)
    assert all(entry.capture is not None and entry.capture.accuracy_capture > 1 for entry in leaky)
    # The same check on a walk-forward fold's summary (every fold's model is checked, not only the latest).
    for logits, leak in ((oracle_logits, False), (future, True)):
        summary = fold_summary(0, data, logits, uncalibrated, oracle)
        assert [h.leak_suspected for h in summary.horizons] == [leak] * len(data.horizons)


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


# Baselines and costs under every representation, normalization and edges option (issue 12).
REPRESENTATIONS = [(kind, rolling_s) for kind in ("full", "aggregated", "hybrid") for rolling_s in (None, 300)]
EDGES = {
    "fixed_pct": {"fixed_pct_edges": [-0.05, -0.02, 0.0, 0.02, 0.05]},
    "volatility_scaled": {},
    "quantile": {"quantile_classes": 6},
}
Built = tuple[PlatformConfig, TrainingData, list[LabelledDay]]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Built]:
    """The tiny config's dataset under the given options (built once per module and options)."""
    cache: dict[tuple, Built] = {}

    def build(kind: str = "hybrid", rolling_s: int | None = None, edges: str = "volatility_scaled") -> Built:
        if (kind, rolling_s, edges) not in cache:
            overrides = {
                "representation": {"kind": kind, "rolling_normalization_s": rolling_s},
                "labels": {"edges": edges, **EDGES[edges]},
            }
            config = load_config(write_config(tmp_path_factory.mktemp("options"), overrides))
            days = synthetic_days(config)
            cache[kind, rolling_s, edges] = (config, build_dataset(days, config), days)
        return cache[kind, rolling_s, edges]

    return build


@pytest.fixture(scope="module")
def raw_books(built: Callable[..., Built]) -> dict[str, np.ndarray]:
    """Per joined grid step (S, K), straight from the synthetic snapshots, without the tensors'
    code: the best bid and ask price and quantity, and each side's total quantity."""
    config = built()[0]
    source, d = SyntheticMarketResource.for_config(config), config.data
    days = []
    for date in d.dates:
        snapshots, grid = source.snapshots(date, d.symbols), day_grid_ns(date, d.cadence_ms)
        columns = []
        for symbol in d.symbols:
            rows = snapshots.filter(pl.col("symbol") == symbol).sort("receive_ts")
            used = np.maximum(np.searchsorted(rows["receive_ts"].to_numpy(), grid, side="right") - 1, 0)
            books = book_arrays(rows)
            columns.append(
                {
                    "bid_px": books["bid_px"][used, 0],
                    "ask_px": books["ask_px"][used, 0],
                    "bid_qty": books["bid_qty"][used, 0],
                    "ask_qty": books["ask_qty"][used, 0],
                    "book_bid_qty": books["bid_qty"][used].sum(axis=1),
                    "book_ask_qty": books["ask_qty"][used].sum(axis=1),
                }
            )
        days.append({name: np.stack([column[name] for column in columns], axis=1) for name in columns[0]})
    return {name: np.concatenate([day[name] for day in days]) for name in days[0]}


def _evaluate(config: PlatformConfig, data: TrainingData, logits: np.ndarray) -> list[HorizonReport]:
    costs = config.evaluation.model_copy(update={"fee_bps": 1.0})
    uncalibrated = [Calibration.identity(data.n_classes)] * len(data.horizons)
    return evaluate(data, logits, uncalibrated, None, costs, config.data.cadence_ms / 1000)


def _book_features(raw: dict[str, np.ndarray], steps: np.ndarray) -> np.ndarray:
    """The order-book baseline's features computed by hand from the raw book (per symbol):
    queue imbalance, best-level order flow, whole-book imbalance, spread, micro-price offset, log depth."""
    bid, ask, bid_qty, ask_qty = (raw[name] for name in ("bid_px", "ask_px", "bid_qty", "ask_qty"))
    mid, before = (bid + ask) / 2, np.maximum(steps - 1, 0)
    depth = bid_qty + ask_qty
    micro_price = (ask * bid_qty + bid * ask_qty) / depth
    book_bid, book_ask = raw["book_bid_qty"], raw["book_ask_qty"]
    flow = (bid_qty[steps] - bid_qty[before]) - (ask_qty[steps] - ask_qty[before])
    return np.concatenate(
        [
            ((bid_qty - ask_qty) / depth)[steps],
            flow / depth[steps],
            ((book_bid - book_ask) / (book_bid + book_ask))[steps],
            ((ask - bid) / mid * 1e4)[steps],
            ((micro_price - mid) / mid * 1e4)[steps],
            np.log1p(depth)[steps],
        ],
        axis=1,
    )


@pytest.mark.parametrize(("kind", "rolling_s"), REPRESENTATIONS)
def test_costs_pay_the_best_quote_spread_under_every_representation(
    built: Callable[..., Built], raw_books: dict[str, np.ndarray], kind: str, rolling_s: int | None
) -> None:
    config, data, _ = built(kind, rolling_s)
    test, target = data.parts["test"], config.data.symbols.index(config.target)
    mid = (raw_books["bid_px"] + raw_books["ask_px"]) / 2
    spread_bps = ((raw_books["ask_px"] - raw_books["bid_px"]) / mid * 1e4)[:, target]
    knows_the_class = 5.0 * np.eye(data.n_classes)[test.classes]  # trades at every free sample
    for entry in _evaluate(config, data, knows_the_class):
        assert entry.costs.median_spread_bps == pytest.approx(np.median(spread_bps[test.steps]), rel=1e-6)
        entered = np.asarray(entry.model.equity.steps)
        assert len(entered) > 20
        # Each trade pays the fee on entry and exit plus the quoted spread at entry (half on each side).
        expected = np.sum(2 * 1.0 + spread_bps[entered])
        assert entry.model.pnl.costs_bps == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("kind", "rolling_s"), REPRESENTATIONS)
def test_the_order_book_baseline_sees_the_books_features_under_every_representation(
    built: Callable[..., Built], raw_books: dict[str, np.ndarray], kind: str, rolling_s: int | None
) -> None:
    config, data, _ = built(kind, rolling_s)
    train, test = data.parts["train"], data.parts["test"]
    expected_train, expected_test = _book_features(raw_books, train.steps), _book_features(raw_books, test.steps)
    np.testing.assert_allclose(order_book_features(data.quotes, test.steps), expected_test, rtol=1e-5, atol=1e-5)
    report = _evaluate(config, data, np.zeros((len(test), len(data.horizons), data.n_classes)))
    for i, entry in enumerate(report):
        expected = logistic_baseline(
            expected_train, train.classes[:, i], expected_test, data.n_classes, config.evaluation.logistic_max_iter
        )
        expected_log_loss = classification_metrics(test.classes[:, i], expected).log_loss
        assert entry.predictors["logistic_obi"].metrics.log_loss == pytest.approx(expected_log_loss, abs=1e-5)
        assert expected_log_loss < entry.predictors["prior"].metrics.log_loss - 0.01  # the features carry the signal


@pytest.mark.parametrize("edges", list(EDGES))
def test_regime_terciles_are_finite_and_cover_the_test_part_under_every_edges_option(
    built: Callable[..., Built], edges: str
) -> None:
    config, data, _ = built(edges=edges)
    test = data.parts["test"]
    for entry in _evaluate(config, data, np.zeros((len(test), len(data.horizons), data.n_classes))):
        regimes = entry.regimes
        assert sum(regime.samples for regime in regimes.values()) == len(test)
        for regime in regimes.values():
            assert regime.samples > 0
            assert np.isfinite(regime.accuracy) and np.isfinite(regime.log_loss)


def test_every_edges_option_sees_the_same_samples_and_persistence_knows_each_past_label(
    built: Callable[..., Built],
) -> None:
    reference = built()[1]
    for edges in EDGES:
        config, data, days = built(edges=edges)
        target = config.data.symbols.index(config.target)
        returns = np.concatenate([day.returns.returns for day in days])[:, :, target]
        volatility = np.concatenate([day.returns.volatility for day in days])[:, target]
        for name, part in data.parts.items():
            np.testing.assert_array_equal(part.steps, reference.parts[name].steps)
            assert np.isfinite(part.volatility).all()
            for i, horizon in enumerate(data.horizons):
                # The label that ended at t is known at t wherever its return is; only volatility-scaled
                # edges also need the volatility at t - h to classify it.
                before = part.steps - horizon
                known = (before >= 0) & np.isfinite(returns[np.maximum(before, 0), i])
                if edges == "volatility_scaled":
                    known &= np.isfinite(volatility[np.maximum(before, 0)])
                np.testing.assert_array_equal(part.previous[:, i] >= 0, known)
                if edges != "volatility_scaled":  # constant edges: the past label is classified like any label
                    np.testing.assert_array_equal(
                        part.previous[known, i], classify(returns[before[known], i], part.edges[known, i])
                    )


def test_a_dataset_saved_before_the_best_quotes_names_what_to_rematerialize(
    built: Callable[..., Built], tmp_path: Path
) -> None:
    config, data, _ = built()
    save_dataset([data], tmp_path, config)
    np.testing.assert_array_equal(load_dataset(tmp_path, config).quotes, data.quotes)
    np.save(tmp_path / "quotes.npy", data.quotes[:, :6])  # the best level only, as stored before the deeper levels
    with pytest.raises(FileNotFoundError, match="re-materialize book_tensors and training_dataset"):
        load_dataset(tmp_path, config)
    (tmp_path / "quotes.npy").unlink()
    with pytest.raises(FileNotFoundError, match="re-materialize book_tensors and training_dataset"):
        load_dataset(tmp_path, config)


def test_the_typed_report_survives_its_json_and_reads_reports_of_earlier_versions(built) -> None:
    """metrics.json keeps its layout: what to_json writes, from_json reads back into the same report,
    and an entry written before the fee sensitivity and the per-predictor capture still loads."""
    import json

    from bmlt_assets.core.evaluation import oracle_for

    config, data, _ = built()
    oracle = oracle_for(SyntheticMarketResource.for_config(config).market(), config.target, data)
    logits = np.random.default_rng(5).normal(size=(len(data.parts["test"]), len(data.horizons), data.n_classes))
    costs = config.evaluation.model_copy(update={"fee_bps": 1.0})
    uncalibrated = [Calibration.identity(data.n_classes)] * len(data.horizons)
    ci = Interval(0.9, 0.85, 0.95, 10.0)
    fresh = FreshScores("2025-01-08", 8000, 800, {"low": 0.5, "mid": 0.5, "high": 0.0}, {}, {}, ci, ci, {"gbm": ci})
    horizons = evaluate(data, logits, uncalibrated, oracle, costs, 10.0, labels=config.labels)
    report = EvaluationReport(horizons, fresh=[[fresh, replace(fresh, day="pooled")]] * 2)
    saved = json.loads(json.dumps(report.to_json()))  # through text, as metrics.json
    assert EvaluationReport.from_json(saved) == report
    assert EvaluationReport.from_json({**saved, "fresh": []}).fresh == []  # a report from before the fresh days
    entry = saved["report"][0]
    assert saved["horizons_s"] == config.labels.horizons_s and entry["horizon_s"] == 30
    assert set(entry["metrics"]) == {"model", "prior", "persistence", "logistic_obi", "gbm", "oracle"}
    assert entry["capture"] == entry["capture_by_predictor"]["model"] and isinstance(entry["leak_suspected"], bool)
    assert set(entry["log_loss_differences"]) == {f"model_minus_{n}" for n in entry["metrics"] if n != "model"}

    earlier = {key: value for key, value in entry.items() if key not in ("pnl_by_fee", "capture_by_predictor")}
    legacy = HorizonReport.from_json(earlier)
    assert legacy.pnl_by_fee == [] and legacy.capture == report.horizons[0].capture
    assert legacy.predictors["prior"].capture is None and legacy.model_minus == report.horizons[0].model_minus


def _most_non_overlapping(steps: list[int], horizon: int) -> int:
    """The largest set of samples whose outcome windows do not overlap, by exhaustive dynamic
    programming (best[i]: the most among the samples from i on)."""
    best = [0] * (len(steps) + 1)
    for i in range(len(steps) - 1, -1, -1):
        following = next((j for j in range(i + 1, len(steps)) if steps[j] >= steps[i] + horizon), len(steps))
        best[i] = max(best[i + 1], 1 + best[following])
    return best[0]


def test_independent_outcomes_are_the_most_non_overlapping_samples() -> None:
    assert independent_outcomes(np.arange(100), 10) == 10  # contiguous: one per horizon
    assert independent_outcomes(np.arange(101), 10) == 11
    assert independent_outcomes(np.array([0, 1, 2, 50, 51, 95]), 10) == 3  # each gap starts a new window
    assert independent_outcomes(np.array([], dtype=np.int64), 10) == 0
    rng = np.random.default_rng(6)
    for _ in range(50):
        steps = np.unique(rng.integers(0, 300, rng.integers(1, 80)))
        horizon = int(rng.integers(1, 40))
        assert independent_outcomes(steps, horizon) == _most_non_overlapping(steps.tolist(), horizon)


def test_the_report_counts_independent_outcomes_per_horizon_and_regime(built) -> None:
    config, data, _ = built()
    logits = np.random.default_rng(7).normal(size=(len(data.parts["test"]), len(data.horizons), data.n_classes))
    steps = data.parts["test"].steps
    for entry, horizon in zip(_evaluate(config, data, logits), data.horizons, strict=True):
        assert entry.independent_outcomes == _most_non_overlapping(steps.tolist(), horizon)
        assert entry.samples / horizon <= entry.independent_outcomes < entry.samples
        regimes = entry.regimes.values()
        assert sum(r.samples for r in regimes) == entry.samples
        assert all(r.independent_outcomes is not None and r.independent_outcomes <= r.samples for r in regimes)


def test_the_edge_and_the_break_even_fee_are_what_the_trades_earn_before_costs() -> None:
    rng = np.random.default_rng(8)
    steps = np.arange(0, 400)
    realized = rng.normal(2e-4, 5e-4, 400)  # a 2 bps drift, long every horizon
    spread = rng.uniform(0.5, 1.5, 400)
    args = {"horizon": 5, "threshold": 0.5, "cadence_s": 1}
    paid = run_backtest(steps, np.full(400, 0.9), np.zeros(400), realized, spread, fee_bps=3, **args)
    summary = paid.summary()
    assert summary.trades == 80
    assert summary.gross_mean_bps == pytest.approx(realized[paid.entries].mean() * 1e4)
    assert summary.costs_per_trade_bps == pytest.approx(6 + spread[paid.entries].mean())
    # At the break-even fee the same trades net exactly nothing; the fee never changes which trades.
    even = run_backtest(
        steps, np.full(400, 0.9), np.zeros(400), realized, spread, fee_bps=summary.break_even_fee_bps, **args
    )
    assert even.summary().mean_return_bps == pytest.approx(0.0, abs=1e-9)
    assert even.summary().break_even_fee_bps == pytest.approx(summary.break_even_fee_bps)
    assert summary.mean_return_low_bps < summary.mean_return_bps < summary.mean_return_high_bps
    assert summary.profitable == (summary.total_return_bps > 0)
    few = run_backtest(steps[:40], np.full(40, 0.9), np.zeros(40), realized, spread, fee_bps=3, **args).summary()
    assert few.trades == 8 and few.mean_return_low_bps is None and few.gross_mean_bps is not None
    none = run_backtest(steps, np.zeros(400), np.zeros(400), realized, spread, fee_bps=3, **args).summary()
    assert none.trades == 0 and none.gross_mean_bps is None and not none.profitable
