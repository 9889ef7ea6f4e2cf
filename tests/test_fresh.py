"""Fresh days: whole sessions after the configured range, labelled and scored with what was fitted on the range."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from bmlt_assets.core.calibration import Calibration
from bmlt_assets.core.config import ConfigError, PlatformConfig, load_config
from bmlt_assets.core.dataset import build_dataset
from bmlt_assets.core.evaluation import evaluate_fresh_days, oracle_for
from bmlt_assets.core.evaluation_report import FreshScores, Interval
from bmlt_assets.core.fresh import (
    FRESH,
    fresh_dates,
    fresh_day,
    fresh_day_data,
    fresh_day_lines,
    fresh_stride,
    score_fresh_days,
)
from bmlt_assets.core.labels import classify
from bmlt_assets.core.report import Materiality, fresh_day_warnings
from bmlt_assets.core.uncertainty import independent_outcomes, ratio_interval
from bmlt_resources.synthetic import SyntheticMarketResource
from tests.helpers import synthetic_days, write_config


def test_fresh_days_follow_the_range_and_only_a_simulation_has_them(tmp_path) -> None:
    config = load_config(write_config(tmp_path))
    assert config.evaluation.fresh_days is None and config.fresh_day_count == 2  # the synthetic default
    assert fresh_dates(config) == [dt.date(2025, 1, 8), dt.date(2025, 1, 9)]
    assert load_config(write_config(tmp_path, {"evaluation": {"fresh_days": 0}})).fresh_day_count == 0
    recorded = {"data": {"source": "binance", "symbols": ["BTC/USDT", "ETH/USDT"]}}
    assert load_config(write_config(tmp_path, recorded)).fresh_day_count == 0
    with pytest.raises(ConfigError, match="only the synthetic market generates days after the range"):
        load_config(write_config(tmp_path, {**recorded, "evaluation": {"fresh_days": 3}}))


@pytest.fixture
def fitted_and_fresh(tiny_config: PlatformConfig):
    """The tiny range's dataset and its first fresh day (quantile edges: fitted on the range)."""
    config = load_config(
        write_config(tiny_config.local_dir.parent, {"labels": {"edges": "quantile", "quantile_classes": 5}})
    )
    fitted = build_dataset(synthetic_days(config), config)
    source = SyntheticMarketResource.for_config(config)
    date = fresh_dates(config)[0]
    day = fresh_day(source.snapshots(date, config.data.symbols), date, config)
    return config, fitted, fresh_day_data(day, config, fitted), day, source


def test_a_fresh_day_is_labelled_with_the_ranges_edges_and_read_through_its_normalizer(fitted_and_fresh) -> None:
    config, fitted, day, labelled, _ = fitted_and_fresh
    part = day.parts[FRESH]
    assert day.source.normalizer is fitted.source.normalizer  # fitted on the range's training part only
    # One eligible step per shortest horizon over the whole session (dropouts cut a few windows).
    assert (part.steps % fresh_stride(config) == 0).all() and fresh_stride(config) == min(config.horizon_steps)
    assert len(part) > 0.8 * config.data.steps_per_day / fresh_stride(config)
    target = config.data.symbols.index(config.target)
    for i in range(len(config.horizon_steps)):
        train_edges = fitted.parts["train"].edges[0, i]
        np.testing.assert_array_equal(part.edges[:, i], np.broadcast_to(train_edges, part.edges[:, i].shape))
        returns = labelled.returns.returns[part.steps, i, target]
        np.testing.assert_array_equal(part.classes[:, i], classify(returns, part.edges[:, i]))
        # The day's own quantiles would be other edges: the range's are kept.
        assert not np.allclose(np.quantile(returns, [0.2, 0.4, 0.6, 0.8]), train_edges)


def test_fresh_day_scores_know_the_oracle_and_the_prior(fitted_and_fresh) -> None:
    """A "model" whose logits are the oracle's log-probabilities captures all of the edge, one
    whose logits are flat none of it; the pooled row joins the days."""
    config, fitted, day, _, source = fitted_and_fresh
    part = day.parts[FRESH]
    oracle = oracle_for(source.oracle(), config.target, day)
    assert oracle is not None
    best = np.stack([oracle(i, part.steps, part.edges[:, i]) for i in range(len(day.horizons))], axis=1)
    identity = [Calibration.identity(day.n_classes)] * len(day.horizons)
    days = [("2025-01-08", day), ("again", day)]
    scores = score_fresh_days(fitted, days, [np.log(best)] * 2, identity, None, [oracle] * 2)
    for horizon, (first, _, pooled) in zip(day.horizons, scores):
        assert first.logloss_capture.mean == pytest.approx(1.0)
        assert first.model_minus["oracle"].mean == pytest.approx(0.0, abs=1e-12)
        assert first.independent_outcomes == independent_outcomes(part.steps, horizon)
        assert sum(first.regimes.values()) == pytest.approx(1.0)
        assert pooled.day == "pooled" and pooled.samples == 2 * first.samples
        assert pooled.independent_outcomes == 2 * first.independent_outcomes
    assert score_fresh_days(fitted, [], [], identity, None, []) == []  # no day, no scores (and no error)
    flat = np.zeros_like(best)
    for entry in score_fresh_days(fitted, days[:1], [flat], identity, None, [oracle])[0][:1]:
        # Flat logits: uniform probabilities, which even the class prior beats.
        assert entry.logloss_capture.high < 0


def test_a_capture_ratio_interval_covers_the_truth() -> None:
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(40):
        gain = 0.3 + rng.normal(0, 1, 2_000)
        edge = 0.5 + rng.normal(0, 1, 2_000)
        interval = ratio_interval(gain, edge, seed=int(rng.integers(1 << 30)))
        covered += interval.low <= 0.6 <= interval.high
    assert covered >= 34  # about 95 % of 40


def test_evaluate_fresh_days_scores_each_day_from_the_source_then_pools_them(fitted_and_fresh) -> None:
    from bmlt_assets.core.train import build_model

    config, fitted, _, _, source = fitted_and_fresh
    model = build_model(config, fitted).eval()  # untrained: any fixed logits will do
    identity = [Calibration.identity(fitted.n_classes)] * len(fitted.horizons)
    scores = evaluate_fresh_days(config, fitted, model, identity, None, source, source.oracle())
    assert [[s.day for s in horizon] for horizon in scores] == [["2025-01-08", "2025-01-09", "pooled"]] * 2
    assert scores[0][0].samples != scores[0][1].samples  # two different sessions
    assert evaluate_fresh_days(config, fitted, model, identity, None, source, None) == []  # no oracle, no capture


def test_the_fresh_day_section_shows_every_day_and_the_pooled_row_and_warns() -> None:
    ci = Interval(0.9, 0.85, 0.95, 10.0)
    worse = Interval(0.002, 0.001, 0.003, 10.0)
    better = Interval(-0.04, -0.05, -0.03, 10.0)

    def scores(day: str, alone: Interval) -> FreshScores:
        differences = {"temperature_alone": alone, "gbm": better, "oracle": worse}
        regimes = {"low": 0.2, "mid": 0.3, "high": 0.5}
        return FreshScores(day, 8000, 800, regimes, {}, {}, ci, ci, differences)

    fresh = [[scores("2025-01-08", better), scores("pooled", better)]] * 2
    text = "\n".join(fresh_day_lines(fresh, [10, 30]))
    assert "### 10 s horizon" in text and "### 30 s horizon" in text
    assert "| pooled | 8,000 | 800 | 0.20 / 0.30 / 0.50 | 0.9000 [0.8500, 0.9500]" in text
    assert "model − gbm (nats)" in text and "model − temperature alone (nats)" in text
    assert fresh_day_warnings(fresh, [10, 30]) == []
    bias_hurts = [[scores("2025-01-08", better), scores("pooled", worse)]]
    assert fresh_day_warnings(bias_hurts, [10]) == [
        (
            Materiality.CALIBRATION,
            "10 s: on the fresh days the calibration's class bias does worse than the temperature alone: the 95% CI "
            "of the log-loss difference (shipped minus temperature alone) [0.00100, 0.00300] lies entirely above 0.",
        )
    ]


def test_fresh_days_score_the_shipped_calibration_against_its_temperature_and_the_fitted_gbm(fitted_and_fresh) -> None:
    """The comparators a report shows on fresh days are the ones fitted on the range: the model's
    temperature without its bias, and the gradient-boosted baseline, each scored on the day's samples."""
    from bmlt_assets.core.gradient_boosting import fit_gradient_boosting, sample_features
    from bmlt_assets.core.metrics import per_sample_log_loss

    config, fitted, day, _, source = fitted_and_fresh
    part = day.parts[FRESH]
    oracle = oracle_for(source.oracle(), config.target, day)
    assert oracle is not None
    logits = np.random.default_rng(3).normal(0, 1, (len(part.steps), len(day.horizons), day.n_classes))
    biased = [
        Calibration(1.5, tuple(np.linspace(-0.3, 0.3, day.n_classes)), temperature_alone=0.8) for _ in day.horizons
    ]
    baselines = fit_gradient_boosting(fitted, seed=0)
    (first, pooled), *_ = score_fresh_days(fitted, [("2025-01-08", day)], [logits], biased, baselines, [oracle])
    classes = part.classes[:, 0]
    model = per_sample_log_loss(biased[0].probabilities(logits[:, 0]), classes)
    alone = per_sample_log_loss(Calibration(0.8, (0.0,) * day.n_classes).probabilities(logits[:, 0]), classes)
    gbm = per_sample_log_loss(baselines[0].probabilities(sample_features(day, part.steps)), classes)
    assert first.log_loss["model"] == pytest.approx(model.mean())
    assert first.model_minus["temperature_alone"].mean == pytest.approx((model - alone).mean())
    assert first.model_minus["gbm"].mean == pytest.approx((model - gbm).mean())
    assert first.log_loss["gbm"] < first.log_loss["prior"]  # fitted on the range, it still knows something here
    assert pooled.model_minus.keys() == first.model_minus.keys()

    # The bootstrap's blocks span one outcome in samples (one per shortest horizon), not in steps: a
    # calibration identical to its temperature alone gives a constant difference, whose block is that minimum.
    same = [Calibration(1.0, (0.0,) * day.n_classes, temperature_alone=1.0)] * len(day.horizons)
    scored = score_fresh_days(fitted, [("2025-01-08", day)], [logits], same, None, [oracle])
    for horizon, (entry, _) in zip(day.horizons, scored):
        assert entry.model_minus["temperature_alone"].block_length == -(-horizon // fresh_stride(config))
