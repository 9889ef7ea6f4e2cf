"""The test-part evaluation. The test part is touched here only; everything fitted (baselines,
regime thresholds, temperature) is fitted on the training or validation part.

Per horizon: classification metrics, direction, calibration, baselines (class prior,
persistence, logistic regression on order-book features, and the oracle on the synthetic
market), simulated P&L after costs, block-bootstrap confidence intervals and per-regime metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import softmax

from bmlt_assets.core.backtest import direction_masses, run_backtest
from bmlt_assets.core.calibration import Calibration, expected_calibration_error, reliability_curves
from bmlt_assets.core.config import EvaluationConfig, LabelsConfig
from bmlt_assets.core.dataset import TrainingData
from bmlt_assets.core.gradient_boosting import GradientBoosted, sample_features
from bmlt_assets.core.metrics import (
    classification_metrics,
    confusion,
    logistic_baseline,
    order_book_features,
    persistence_probabilities,
    prior_probabilities,
    signal_capture,
)
from bmlt_assets.core.representation import quoted_spread_bps
from bmlt_assets.core.sources import Oracle
from bmlt_assets.core.uncertainty import mean_interval

# (horizon index, test steps, test edges (N, C-1)) -> (N, C) probabilities
OracleProbabilities = Callable[[int, np.ndarray, np.ndarray], np.ndarray]
REGIMES = ("low", "mid", "high")


def oracle_for(oracle: Oracle | None, symbol: str, data: TrainingData) -> OracleProbabilities | None:
    """The source's oracle at the samples of ``data``, or None where the source has none."""
    if oracle is None:
        return None
    return lambda i, steps, edges: oracle.oracle_at(symbol, data.source.timestamps[steps], data.horizons[i], edges)


# Beating the Bayes-optimal forecaster beyond noise means information from the future. The oracle
# is tick-exact (the class probabilities of the shown, rounded mids), so this holds for coarse-tick
# targets too: on XRP/USDT, whose tick is about a 1 s move's standard deviation, a stacker that
# reads where the mid sits on the grid does not beat it (tests/test_synthetic.py, docs/benchmarks.md).
# The tolerance only absorbs floating-point ties with the oracle itself.
LEAK_TOLERANCE = 1e-6  # nats


def direction_classes(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes entirely above zero (up) and entirely below zero (down), from one edge row."""
    lower = np.concatenate([[-np.inf], edges])
    upper = np.concatenate([edges, [np.inf]])
    return np.flatnonzero(lower >= 0), np.flatnonzero(upper <= 0)


def directional_accuracy(probabilities: np.ndarray, returns: np.ndarray, up: np.ndarray, down: np.ndarray) -> float:
    """Share of samples with a non-zero realized move whose sign the forecaster's mass got right."""
    p_up, p_down = direction_masses(probabilities, up, down)
    moved = returns != 0
    return float((np.sign(p_up - p_down)[moved] == np.sign(returns[moved])).mean())


def class_ranges(
    edges: np.ndarray, volatility: np.ndarray, horizon: int, labels: LabelsConfig | None
) -> dict[str, Any]:
    """What each class means as a return range over the horizon, from the test part's per-sample
    edges (N, C-1) in log-return units: the median edge in bps over the test part (constant for
    fixed and quantile edges) and, for volatility-scaled edges, the edges in units of σ, the
    trailing per-step volatility known at t times √(horizon steps)."""
    ranges: dict[str, Any] = {
        "kind": labels.edges if labels is not None else "unknown",
        "edges_bps": [float(v) for v in np.median(edges, axis=0) * 1e4],
    }
    if labels is not None and labels.edges == "volatility_scaled":
        ranges["edges_sigma"] = [float(v) for v in labels.volatility_edges]
        ranges["sigma_bps_median"] = float(np.median(volatility * np.sqrt(horizon)) * 1e4)
    return ranges


def purged_test_period(data: TrainingData) -> dict[str, int]:
    """First and last sample timestamp (ns, UTC) of the test part."""
    steps = data.parts["test"].steps
    return {"first_ns": int(data.source.timestamps[steps[0]]), "last_ns": int(data.source.timestamps[steps[-1]])}


def per_sample_log_loss(probabilities: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(probabilities[np.arange(len(classes)), classes], 1e-12, 1.0))


def evaluate(
    data: TrainingData,
    test_logits: np.ndarray,
    calibration: list[Calibration],
    oracle: OracleProbabilities | None,
    config: EvaluationConfig,
    cadence_s: float,
    champion: np.ndarray | None = None,
    labels: LabelsConfig | None = None,
    baselines: list[GradientBoosted] | None = None,
) -> list[dict[str, Any]]:
    """``champion``: the current champion's (N, H, C) test probabilities, compared like a baseline;
    ``labels``: how the class edges were made (for the classes' return ranges in the report);
    ``baselines``: the gradient-boosted baseline of each horizon (``gbm``), fitted on train."""
    if config.fee_bps is None:
        raise ValueError("evaluation.fee_bps is unresolved: resolve it to the market's fee first (with_market_fee)")
    fee_bps = config.fee_bps
    train, test = data.parts["train"], data.parts["test"]
    # Costs and the order-book baseline read the raw best quotes, never the base array: its level 0
    # is a bucket under ``aggregated`` and its quantities are z-scores under rolling normalization.
    train_features = order_book_features(data.quotes, train.steps)
    test_features = order_book_features(data.quotes, test.steps)
    flow_features = sample_features(data, test.steps) if baselines is not None else None
    target = data.symbols.index(data.target)
    spread_bps = quoted_spread_bps(np.asarray(data.quotes[test.steps][:, :, target], dtype=np.float64))
    costs = {
        "fee_bps_per_side": fee_bps,
        "half_spread_per_side": True,  # half the quoted spread at entry, paid on entry and on exit
        "median_spread_bps": float(np.median(spread_bps)),
        "pnl_threshold": config.pnl_threshold,
    }
    period = purged_test_period(data)
    thresholds = np.quantile(train.volatility, [1 / 3, 2 / 3])
    regime = np.searchsorted(thresholds, test.volatility)
    report = []
    for i, horizon in enumerate(data.horizons):
        y, realized = test.classes[:, i], test.returns[:, i]
        raw = softmax(test_logits[:, i].astype(np.float64), axis=1)
        predictors = {
            "model": calibration[i].probabilities(test_logits[:, i]),
            "prior": prior_probabilities(train.classes[:, i], data.n_classes, len(y)),
            "persistence": persistence_probabilities(
                train.previous[:, i], train.classes[:, i], test.previous[:, i], data.n_classes
            ),
            "logistic_obi": logistic_baseline(
                train_features, train.classes[:, i], test_features, data.n_classes, config.logistic_max_iter
            ),
        }
        if baselines is not None and flow_features is not None:
            predictors["gbm"] = baselines[i].probabilities(flow_features)
        if champion is not None:
            predictors["champion"] = champion[:, i]
        if oracle is not None:
            predictors["oracle"] = oracle(i, test.steps, test.edges[:, i])
        up, down = direction_classes(test.edges[0, i])
        metrics, intervals, pnl, equity = {}, {}, {}, {}
        losses = {name: per_sample_log_loss(p, y) for name, p in predictors.items()}
        for name, p in predictors.items():
            metrics[name] = classification_metrics(y, p) | {
                "ece": expected_calibration_error(p, y, config.ece_bins),
                "directional_accuracy": directional_accuracy(p, realized, up, down),
            }
            hits = (p.argmax(axis=1) == y).astype(np.float64)
            intervals[name] = {
                "accuracy": mean_interval(hits, horizon),
                "log_loss": mean_interval(losses[name], horizon),
            }
            p_up, p_down = direction_masses(p, up, down)
            trades = run_backtest(
                test.steps, p_up, p_down, realized, spread_bps, horizon, config.pnl_threshold, fee_bps, cadence_s
            )
            pnl[name] = trades.summary()
            if name == "model":  # what the costs assumption is worth: the model's P&L at 0, 1x and 2x the fee
                pnl_by_fee = [
                    {"fee_bps_per_side": fee}
                    | run_backtest(
                        test.steps, p_up, p_down, realized, spread_bps, horizon, config.pnl_threshold, fee, cadence_s
                    ).summary()
                    for fee in (0.0, fee_bps, 2 * fee_bps)
                ]
            entered = test.steps[trades.entries]
            equity[name] = {
                "steps": entered.tolist(),
                "timestamps_ns": [int(t) for t in data.source.timestamps[entered]],
                "equity_bps": (trades.equity * 1e4).tolist(),
            }
        differences = {
            f"model_minus_{name}": mean_interval(losses["model"] - losses[name], horizon)
            for name in predictors
            if name != "model"
        }
        horizon_s = horizon * cadence_s
        entry = {
            "horizon_steps": horizon,
            "horizon_s": int(horizon_s) if float(horizon_s).is_integer() else horizon_s,
            "samples": len(y),
            "test_period": period,
            "costs": costs,
            "pnl_by_fee": pnl_by_fee,
            "classes": class_ranges(test.edges[:, i], test.volatility, horizon, labels),
            "metrics": metrics,
            "intervals": intervals,
            "log_loss_differences": differences,
            "calibration": {
                "temperature": calibration[i].temperature,
                "bias": list(calibration[i].bias),
                "bins": f"{config.ece_bins} equal-width top-label confidence bins",
                "before": {
                    "ece": expected_calibration_error(raw, y, config.ece_bins),
                    "log_loss": float(per_sample_log_loss(raw, y).mean()),
                },
                "after": {"ece": metrics["model"]["ece"], "log_loss": metrics["model"]["log_loss"]},
                "reliability": reliability_curves(predictors["model"], y),
            },
            "confusion": confusion(y, predictors["model"]).tolist(),
            "class_distribution": {
                "realized": np.bincount(y, minlength=data.n_classes).tolist(),
                "predicted": np.bincount(predictors["model"].argmax(axis=1), minlength=data.n_classes).tolist(),
            },
            "pnl": pnl,
            "equity": equity,
            "regimes": {
                label: {
                    "samples": int((regime == r).sum()),
                    "accuracy": float((predictors["model"].argmax(axis=1) == y)[regime == r].mean())
                    if (regime == r).any()
                    else float("nan"),
                    "log_loss": float(losses["model"][regime == r].mean()) if (regime == r).any() else float("nan"),
                }
                for r, label in enumerate(REGIMES)
            },
            "beats_baselines": all(
                differences[f"model_minus_{b}"]["high"] < 0
                for b in ("prior", "persistence", "logistic_obi", "gbm")
                if f"model_minus_{b}" in differences
            ),
        }
        if oracle is not None:
            entry["capture"] = signal_capture(metrics["model"], metrics["prior"], metrics["oracle"])
            entry["capture_by_predictor"] = {
                name: signal_capture(m, metrics["prior"], metrics["oracle"]) for name, m in metrics.items()
            }
            # Beating the Bayes-optimal forecaster beyond noise means information from the future
            # (the tolerance only absorbs floating-point ties with the oracle itself).
            entry["leak_suspected"] = differences["model_minus_oracle"]["high"] < -LEAK_TOLERANCE
        report.append(entry)
    return report


def fold_summary(
    data: TrainingData, test_logits: np.ndarray, calibration: list[Calibration], oracle: OracleProbabilities | None
) -> dict[str | int, Any]:
    """Headline test metrics of one walk-forward fold: the model against the class prior (and
    the oracle's capture on the synthetic market), with the fold's test period."""
    train, test = data.parts["train"], data.parts["test"]
    row: dict[str | int, Any] = {
        "test_first_ns": int(data.source.timestamps[test.steps[0]]),
        "test_last_ns": int(data.source.timestamps[test.steps[-1]]),
        "samples": len(test),
    }
    for i, horizon in enumerate(data.horizons):
        y = test.classes[:, i]
        probabilities = calibration[i].probabilities(test_logits[:, i])
        model = classification_metrics(y, probabilities)
        prior = classification_metrics(y, prior_probabilities(train.classes[:, i], data.n_classes, len(y)))
        row[i] = {"model": model, "prior": prior}
        if oracle is not None:
            best = oracle(i, test.steps, test.edges[:, i])
            row[i]["capture"] = signal_capture(model, prior, classification_metrics(y, best))
            # Every fold's model is checked for a leak, not only the registered one's.
            beyond = mean_interval(per_sample_log_loss(probabilities, y) - per_sample_log_loss(best, y), horizon)
            row[i]["leak_suspected"] = beyond["high"] < -LEAK_TOLERANCE
    return row


def flat_metrics(
    report: list[dict[str, Any]], horizons_s: list[int], walk_forward: list[dict[str, Any]]
) -> dict[str, float]:
    """The report as flat ``name_<horizon>s`` scalars, as tracking stores want them."""
    metrics: dict[str, float] = {}
    for entry, horizon in zip(report, horizons_s):
        for predictor, values in entry["metrics"].items():
            metrics |= {f"test_{predictor}_{name}_{horizon}s": value for name, value in values.items()}
        for predictor, values in entry["pnl"].items():
            metrics |= {f"pnl_{predictor}_{name}_{horizon}s": value for name, value in values.items()}
        metrics |= {f"test_{name}_{horizon}s": value for name, value in entry.get("capture", {}).items()}
        metrics[f"test_leak_suspected_{horizon}s"] = float(entry.get("leak_suspected", False))
    for i, horizon in enumerate(horizons_s):
        for name in ("accuracy", "log_loss"):
            values = [fold["horizons"][i]["model"][name] for fold in walk_forward]
            if values:
                metrics[f"walk_forward_mean_{name}_{horizon}s"] = float(np.mean(values))
                metrics[f"walk_forward_std_{name}_{horizon}s"] = float(np.std(values))
    return metrics
