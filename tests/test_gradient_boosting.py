"""The gradient-boosted baseline: its order-flow features on hand-made books, causality, and how it is fitted."""

from __future__ import annotations

import numpy as np
import pytest

from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.dataset import build_dataset
from bmlt_assets.core.gradient_boosting import fit_gradient_boosting, sample_features
from bmlt_assets.core.metrics import classification_metrics, prior_probabilities
from bmlt_assets.core.order_flow import feature_names, order_flow_features
from bmlt_assets.core.representation import best_quotes
from tests.helpers import synthetic_days

DEPTH = 6


def _books(best: list[tuple[float, float, float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Quotes (S, F, 1) and mids (S, 1) of books whose best level is ``best`` (bid px, bid qty,
    ask px, ask qty) per step and whose deeper levels never change."""
    rows = len(best)
    bid_px = np.array([b[0] for b in best])[:, None] - 0.1 * np.arange(DEPTH)
    ask_px = np.array([b[2] for b in best])[:, None] + 0.1 * np.arange(DEPTH)
    bid_qty = np.tile(np.arange(1.0, DEPTH + 1), (rows, 1))
    ask_qty = np.tile(np.arange(2.0, DEPTH + 2), (rows, 1))
    bid_qty[:, 0] = [b[1] for b in best]
    ask_qty[:, 0] = [b[3] for b in best]
    bid_px[:, 1:] = bid_px[0, 1:] - 0.2  # deeper levels fixed, below every best bid
    ask_px[:, 1:] = ask_px[0, 1:] + 0.2
    quotes = best_quotes(bid_px, bid_qty, ask_px, ask_qty)[:, :, None]
    return quotes, ((bid_px[:, 0] + ask_px[:, 0]) / 2)[:, None]


def test_order_flow_queue_imbalance_returns_and_volatility_on_hand_made_books() -> None:
    best = [
        (100.0, 5.0, 100.2, 3.0),
        (100.0, 7.0, 100.2, 1.0),  # same prices: bid queue +2, ask queue -2 -> flow +4
        (100.1, 4.0, 100.2, 1.0),  # bid price up: its whole new queue counts -> +4
        (100.0, 6.0, 100.1, 2.0),  # bid down (-old 4) and ask down (its new 2 counts against) -> -6
    ]
    quotes, mids = _books(best)
    window = 4
    values = dict(zip(feature_names(["X"], window), order_flow_features(quotes, mids, np.array([3]), window)[0]))
    depth_top5 = [best[s][1] + best[s][3] + sum(range(2, 6)) + sum(range(3, 7)) for s in range(4)]
    scale = np.mean(depth_top5[1:])  # the window's last W - 1 steps
    assert values["X order flow level 1 over 1 steps"] == pytest.approx(-6 / scale)
    assert values["X order flow level 1 over 3 steps"] == pytest.approx((4 + 4 - 6) / scale)
    assert values["X order flow level 2 over 3 steps"] == 0.0  # unchanged deeper levels carry no flow
    assert values["X queue imbalance top 1"] == pytest.approx((6 - 2) / (6 + 2))
    assert values["X queue imbalance top 2"] == pytest.approx((6 + 2 - 2 - 3) / (6 + 2 + 2 + 3))
    assert values["X spread bps"] == pytest.approx(0.1 / 100.05 * 1e4, rel=1e-5)
    log_mid = np.log(mids[:, 0])
    assert values["X return bps over 1 steps"] == pytest.approx((log_mid[3] - log_mid[2]) * 1e4)
    assert values["X return bps over 3 steps"] == pytest.approx((log_mid[3] - log_mid[0]) * 1e4)
    moves = np.diff(log_mid) * 1e4
    assert values["X realized volatility bps over 3 steps"] == pytest.approx(np.sqrt(np.mean(moves**2)))
    assert values["X log1p best depth"] == pytest.approx(np.log1p(8.0))


def test_order_flow_features_read_the_window_only() -> None:
    """Changing the books before the window or after t leaves a sample's features unchanged."""
    rng = np.random.default_rng(0)
    best = [(100 + rng.integers(0, 3) * 0.1, rng.uniform(1, 9), 100.5 + rng.integers(0, 3) * 0.1, rng.uniform(1, 9))]
    for _ in range(59):
        best.append(
            (100 + rng.integers(0, 3) * 0.1, rng.uniform(1, 9), 100.5 + rng.integers(0, 3) * 0.1, rng.uniform(1, 9))
        )
    quotes, mids = _books(best)
    window, step = 10, np.array([30])
    reference = order_flow_features(quotes, mids, step, window)
    for changed in (slice(0, 21), slice(31, 60)):  # before the window [21, 30], and after t
        other_quotes, other_mids = quotes.copy(), mids.copy()
        other_quotes[changed] *= rng.uniform(0.5, 1.5, other_quotes[changed].shape)
        other_mids[changed] *= 1.01
        # (equal up to the rounding of the running sums the window sums come from)
        np.testing.assert_allclose(order_flow_features(other_quotes, other_mids, step, window), reference, rtol=1e-12)
    inside = quotes.copy()
    inside[25, 2] *= 2  # the best bid queue inside the window
    assert not np.array_equal(order_flow_features(inside, mids, step, window), reference)
    with pytest.raises(ValueError, match="no full window"):
        order_flow_features(quotes, mids, np.array([5]), window)


def test_the_gradient_boosted_baseline_is_fitted_on_train_calibrated_on_validation_and_learns(
    tiny_config: PlatformConfig,
) -> None:
    data = build_dataset(synthetic_days(tiny_config), tiny_config)
    test = data.parts["test"]
    features = sample_features(data, test.steps)
    assert features.shape == (len(test), len(feature_names(data.symbols, data.source.window)))
    assert np.isfinite(features).all()
    fitted = fit_gradient_boosting(data, seed=0)
    for i, baseline in enumerate(fitted):
        probabilities = baseline.probabilities(features)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
        prior = prior_probabilities(data.parts["train"].classes[:, i], data.n_classes, len(test))
        ours = classification_metrics(test.classes[:, i], probabilities).log_loss
        assert ours < classification_metrics(test.classes[:, i], prior).log_loss - 0.01  # the flow carries signal
    test.classes[:] = 0  # the test labels are never read
    again = fit_gradient_boosting(data, seed=0)
    np.testing.assert_array_equal(again[0].probabilities(features), fitted[0].probabilities(features))
    data.parts["val"].classes[:] = 0  # the validation labels early-stop and calibrate it
    assert not np.allclose(
        fit_gradient_boosting(data, seed=0)[0].probabilities(features), fitted[0].probabilities(features)
    )
