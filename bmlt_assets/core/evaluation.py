"""The test-part evaluation. The test part is touched here only; everything fitted (baselines,
regime thresholds, temperature) is fitted on the training or validation part.

Per horizon (:func:`evaluate`): the predictors compared (:func:`horizon_predictors`: the model,
the class prior, persistence, logistic regression on order-book features, and the champion and
the oracle where there are), each scored alike (:func:`score_predictor`: classification metrics,
calibration, direction, block-bootstrap intervals, simulated P&L after costs), then assembled
into one :class:`~bmlt_assets.core.evaluation_report.HorizonReport` (:func:`assemble_horizon`:
log-loss differences, signal capture, calibration, fee sensitivity, regimes, the leak flag).
A new predictor is one more entry in :func:`horizon_predictors`: it is then scored, compared and
reported like the others.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax

from bmlt_assets.core.backtest import Backtest, direction_masses, run_backtest
from bmlt_assets.core.calibration import Calibration, expected_calibration_error, reliability_curves
from bmlt_assets.core.checkpoint import CHECKPOINT, load_checkpoint, spec_calibration
from bmlt_assets.core.config import EvaluationConfig, LabelsConfig, PlatformConfig
from bmlt_assets.core.dataset import TrainingData, fold_count, load_dataset
from bmlt_assets.core.distributed import resolve_device
from bmlt_assets.core.evaluation_report import (
    BASELINES,
    CHAMPION,
    MODEL,
    ORACLE,
    CalibrationScore,
    CalibrationSummary,
    ClassCounts,
    ClassRanges,
    Costs,
    EquityCurve,
    EvaluationReport,
    FoldHorizon,
    FoldSummary,
    FreshScores,
    HorizonReport,
    PnlAtFee,
    PredictorIntervals,
    PredictorScores,
    RegimeScores,
    Scores,
    TestPeriod,
)
from bmlt_assets.core.fresh import FRESH, fresh_dates, fresh_day, fresh_day_data, score_fresh_days
from bmlt_assets.core.gradient_boosting import GradientBoosted, fit_gradient_boosting, sample_features
from bmlt_assets.core.labels import REGIMES, volatility_regimes
from bmlt_assets.core.metrics import (
    classification_metrics,
    confusion,
    logistic_baseline,
    order_book_features,
    per_sample_log_loss,
    persistence_probabilities,
    prior_probabilities,
    signal_capture,
)
from bmlt_assets.core.representation import quoted_spread_bps
from bmlt_assets.core.sources import BookSource, Oracle, OracleProbabilities
from bmlt_assets.core.train import predict_logits
from bmlt_assets.core.uncertainty import independent_outcomes, mean_interval
from bmlt_assets.core.walk_forward import fold_checkpoint

# Beating the Bayes-optimal forecaster beyond noise means information from the future. The oracle
# is tick-exact (the class probabilities of the shown, rounded mids), so this holds for coarse-tick
# targets too: on XRP/USDT, whose tick is about a 1 s move's standard deviation, a stacker that
# reads where the mid sits on the grid does not beat it (tests/test_synthetic.py, docs/benchmarks.md).
# The tolerance only absorbs floating-point ties with the oracle itself.
LEAK_TOLERANCE = 1e-6  # nats


def oracle_for(oracle: Oracle | None, symbol: str, data: TrainingData) -> OracleProbabilities | None:
    """The source's oracle at the samples of ``data``, or None where the source has none."""
    if oracle is None:
        return None
    return lambda i, steps, edges: oracle.oracle_at(symbol, data.source.timestamps[steps], data.horizons[i], edges)


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


def class_ranges(edges: np.ndarray, volatility: np.ndarray, horizon: int, labels: LabelsConfig | None) -> ClassRanges:
    """What each class means as a return range over the horizon, from the test part's per-sample
    edges (N, C-1) in log-return units: the median edge in bps over the test part (constant for
    fixed and quantile edges) and, for volatility-scaled edges, the edges in units of σ, the
    trailing per-step volatility known at t times √(horizon steps)."""
    kind = labels.edges if labels is not None else "unknown"
    edges_bps = [float(v) for v in np.median(edges, axis=0) * 1e4]
    if labels is None or labels.edges != "volatility_scaled":
        return ClassRanges(kind, edges_bps)
    sigma_bps = float(np.median(volatility * np.sqrt(horizon)) * 1e4)
    return ClassRanges(kind, edges_bps, [float(v) for v in labels.volatility_edges], sigma_bps)


def purged_test_period(data: TrainingData) -> TestPeriod:
    """First and last sample timestamp (ns, UTC) of the test part."""
    steps = data.parts["test"].steps
    return TestPeriod(int(data.source.timestamps[steps[0]]), int(data.source.timestamps[steps[-1]]))


@dataclass(frozen=True)
class TestPart:
    """What every horizon's evaluation shares: the test part, the costs of trading it, the
    volatility regime of each sample, and the order-book features the logistic baseline reads."""

    data: TrainingData
    config: EvaluationConfig  # its fee resolved
    cadence_s: float
    spread_bps: np.ndarray  # quoted spread of the target at each test sample
    costs: Costs
    period: TestPeriod
    regime: np.ndarray  # 0, 1, 2: the sample's volatility against the training part's terciles
    train_features: np.ndarray
    test_features: np.ndarray
    gradient_boosted: list[GradientBoosted]  # per horizon, fitted on the training part
    flow_features: np.ndarray  # the order-flow features of the test samples, which it reads

    __test__ = False  # not a pytest test class

    @classmethod
    def of(
        cls, data: TrainingData, config: EvaluationConfig, cadence_s: float, baselines: list[GradientBoosted] | None
    ) -> TestPart:
        """``baselines``: the gradient-boosted baseline per horizon (fitted here when None)."""
        if config.fee_bps is None:
            raise ValueError("evaluation.fee_bps is unresolved: resolve it to the market's fee first (with_market_fee)")
        train, test = data.parts["train"], data.parts["test"]
        # Costs and the order-book baseline read the raw best quotes, never the base array: its level 0
        # is a bucket under ``aggregated`` and its quantities are z-scores under rolling normalization.
        target = data.symbols.index(data.target)
        spread_bps = quoted_spread_bps(np.asarray(data.quotes[test.steps][:, :, target], dtype=np.float64))
        costs = Costs(config.fee_bps, True, float(np.median(spread_bps)), config.pnl_threshold)
        regime = volatility_regimes(train.volatility, test.volatility)
        features = (order_book_features(data.quotes, train.steps), order_book_features(data.quotes, test.steps))
        flow = sample_features(data, test.steps)
        fitted = baselines if baselines is not None else fit_gradient_boosting(data, seed=0)
        return cls(
            data, config, cadence_s, spread_bps, costs, purged_test_period(data), regime, *features, fitted, flow
        )

    @property
    def fee_bps(self) -> float:
        return self.costs.fee_bps_per_side

    def backtest(self, probabilities: np.ndarray, outcomes: Outcomes, fee_bps: float) -> Backtest:
        p_up, p_down = direction_masses(probabilities, outcomes.up, outcomes.down)
        steps, threshold = self.data.parts["test"].steps, self.config.pnl_threshold
        return run_backtest(
            steps, p_up, p_down, outcomes.returns, self.spread_bps, outcomes.horizon, threshold, fee_bps, self.cadence_s
        )


@dataclass(frozen=True)
class Outcomes:
    """What happened at one horizon over the test part, and which classes mean up and down."""

    horizon: int  # steps
    classes: np.ndarray
    returns: np.ndarray  # realized forward log returns
    up: np.ndarray
    down: np.ndarray

    @classmethod
    def at(cls, test: TestPart, i: int) -> Outcomes:
        part = test.data.parts["test"]
        up, down = direction_classes(part.edges[0, i])
        return cls(test.data.horizons[i], part.classes[:, i], part.returns[:, i], up, down)


def horizon_predictors(
    test: TestPart,
    i: int,
    test_logits: np.ndarray,
    calibration: list[Calibration],
    oracle: OracleProbabilities | None,
    champion: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """The (N, C) test probabilities of every predictor compared at horizon ``i``: the model
    (calibrated), the baselines (fitted on the training part), and the current champion and the
    oracle where there are."""
    data = test.data
    train, part, n_classes = data.parts["train"], data.parts["test"], data.n_classes
    predictors = {
        MODEL: calibration[i].probabilities(test_logits[:, i]),
        "prior": prior_probabilities(train.classes[:, i], n_classes, len(part)),
        "persistence": persistence_probabilities(
            train.previous[:, i], train.classes[:, i], part.previous[:, i], n_classes
        ),
        "logistic_obi": logistic_baseline(
            test.train_features, train.classes[:, i], test.test_features, n_classes, test.config.logistic_max_iter
        ),
        "gbm": test.gradient_boosted[i].probabilities(test.flow_features),
    }
    if champion is not None:
        predictors[CHAMPION] = champion[:, i]
    if oracle is not None:
        predictors[ORACLE] = oracle(i, part.steps, part.edges[:, i])
    return predictors


def score_predictor(
    probabilities: np.ndarray, losses: np.ndarray, outcomes: Outcomes, test: TestPart
) -> PredictorScores:
    """One predictor's metrics, intervals, P&L and equity curve; ``losses`` its per-sample log loss."""
    y, horizon = outcomes.classes, outcomes.horizon
    metrics = Scores(
        **asdict(classification_metrics(y, probabilities)),
        ece=expected_calibration_error(probabilities, y, test.config.ece_bins),
        directional_accuracy=directional_accuracy(probabilities, outcomes.returns, outcomes.up, outcomes.down),
    )
    hits = (probabilities.argmax(axis=1) == y).astype(np.float64)
    intervals = PredictorIntervals(mean_interval(hits, horizon), mean_interval(losses, horizon))
    trades = test.backtest(probabilities, outcomes, test.fee_bps)
    entered = test.data.parts["test"].steps[trades.entries]
    timestamps = [int(t) for t in test.data.source.timestamps[entered]]
    equity = EquityCurve(entered.tolist(), timestamps, (trades.equity * 1e4).tolist())
    return PredictorScores(metrics, intervals, trades.summary(), equity)


def assemble_horizon(
    test: TestPart,
    i: int,
    predictors: dict[str, np.ndarray],
    uncalibrated: np.ndarray,
    calibration: Calibration,
    labels: LabelsConfig | None = None,
) -> HorizonReport:
    """Horizon ``i``'s report from its predictors' probabilities (the model's also ``uncalibrated``)."""
    outcomes, part = Outcomes.at(test, i), test.data.parts["test"]
    y, horizon, model = outcomes.classes, outcomes.horizon, predictors[MODEL]
    losses = {name: per_sample_log_loss(p, y) for name, p in predictors.items()}
    scored = {name: score_predictor(p, losses[name], outcomes, test) for name, p in predictors.items()}
    model_minus = {name: mean_interval(losses[MODEL] - losses[name], horizon) for name in predictors if name != MODEL}
    if ORACLE in scored:
        prior, best = scored["prior"].metrics, scored[ORACLE].metrics
        scored = {name: replace(s, capture=signal_capture(s.metrics, prior, best)) for name, s in scored.items()}
    horizon_s = horizon * test.cadence_s
    return HorizonReport(
        horizon_steps=horizon,
        horizon_s=int(horizon_s) if float(horizon_s).is_integer() else horizon_s,
        samples=len(y),
        test_period=test.period,
        costs=test.costs,
        classes=class_ranges(part.edges[:, i], part.volatility, horizon, labels),
        predictors=scored,
        model_minus=model_minus,
        calibration=calibration_summary(calibration, uncalibrated, model, y, scored[MODEL].metrics, test.config),
        confusion=confusion(y, model).tolist(),
        class_distribution=ClassCounts(
            np.bincount(y, minlength=test.data.n_classes).tolist(),
            np.bincount(model.argmax(axis=1), minlength=test.data.n_classes).tolist(),
        ),
        regimes=regime_scores(model, y, losses[MODEL], test.regime, part.steps, horizon),
        beats_baselines=all(model_minus[b].below_zero for b in BASELINES),
        pnl_by_fee=fee_sensitivity(model, outcomes, test),
        leak_suspected=model_minus[ORACLE].high < -LEAK_TOLERANCE if ORACLE in model_minus else None,
        independent_outcomes=independent_outcomes(part.steps, horizon),
    )


def calibration_summary(
    calibration: Calibration,
    uncalibrated: np.ndarray,
    calibrated: np.ndarray,
    classes: np.ndarray,
    after: Scores,
    config: EvaluationConfig,
) -> CalibrationSummary:
    """The head's calibration and what it did on the test part."""
    before = CalibrationScore(
        expected_calibration_error(uncalibrated, classes, config.ece_bins),
        float(per_sample_log_loss(uncalibrated, classes).mean()),
    )
    return CalibrationSummary(
        temperature=calibration.temperature,
        bias=list(calibration.bias),
        bins=f"{config.ece_bins} equal-width top-label confidence bins",
        before=before,
        after=CalibrationScore(after.ece, after.log_loss),
        reliability=reliability_curves(calibrated, classes),
        bias_prior_sd=calibration.bias_prior_sd,
        outcomes=calibration.outcomes,
        temperature_alone=calibration.temperature_alone,
    )


def fee_sensitivity(model: np.ndarray, outcomes: Outcomes, test: TestPart) -> list[PnlAtFee]:
    """What the costs assumption is worth: the model's P&L at no fee, at the fee and at twice it."""
    return [
        PnlAtFee(**asdict(test.backtest(model, outcomes, fee).summary()), fee_bps_per_side=fee)
        for fee in (0.0, test.fee_bps, 2 * test.fee_bps)
    ]


def regime_scores(
    model: np.ndarray,
    classes: np.ndarray,
    losses: np.ndarray,
    regime: np.ndarray,
    steps: np.ndarray,
    horizon: int,
) -> dict[str, RegimeScores]:
    """The model's accuracy and log loss within each volatility regime (NaN where it has no
    sample), with the regime's independent outcomes (its samples at ``steps``)."""
    scores = {}
    for r, label in enumerate(REGIMES):
        inside = regime == r
        hits = (model.argmax(axis=1) == classes)[inside]
        accuracy = float(hits.mean()) if inside.any() else float("nan")
        log_loss = float(losses[inside].mean()) if inside.any() else float("nan")
        outcomes = independent_outcomes(steps[inside], horizon)
        scores[label] = RegimeScores(int(inside.sum()), accuracy, log_loss, outcomes)
    return scores


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
) -> list[HorizonReport]:
    """Every horizon's report. ``champion``: the current champion's (N, H, C) test probabilities,
    compared like a baseline; ``labels``: how the class edges were made (for the classes' return
    ranges in the report); ``baselines``: the gradient-boosted baseline per horizon, fitted on the
    training part (fitted here when not given)."""
    test = TestPart.of(data, config, cadence_s, baselines)
    reports = []
    for i in range(len(data.horizons)):
        predictors = horizon_predictors(test, i, test_logits, calibration, oracle, champion)
        uncalibrated = softmax(test_logits[:, i].astype(np.float64), axis=1)
        reports.append(assemble_horizon(test, i, predictors, uncalibrated, calibration[i], labels))
    return reports


def evaluate_stored_model(
    config: PlatformConfig,
    evaluation: EvaluationConfig,
    dataset_dir: Path,
    model_dir: Path,
    source: BookSource,
    champion: np.ndarray | None = None,
) -> EvaluationReport:
    """The report of the model saved in ``model_dir`` on its dataset's test part (scored on
    ``training.device``), with every walk-forward fold's model on its own test block and, where
    ``source`` generates days after the range, the model on those fresh days.
    ``evaluation``: the config's, its fee resolved."""
    data = load_dataset(dataset_dir, config)
    model, _, spec = load_checkpoint(model_dir / CHECKPOINT, resolve_device(config.training.device))
    logits = predict_logits(model, data, data.parts["test"].steps)
    cadence_s = config.data.cadence_ms / 1000
    oracle = source.oracle()
    target_oracle = oracle_for(oracle, config.target, data)
    calibration = spec_calibration(spec)
    baselines = fit_gradient_boosting(data, seed=0, threads=config.training.threads)
    horizons = evaluate(
        data, logits, calibration, target_oracle, evaluation, cadence_s, champion, config.labels, baselines
    )
    folds = evaluate_folds(config, dataset_dir, model_dir, oracle) if fold_count(config) > 1 else []
    fresh = evaluate_fresh_days(config, data, model, calibration, baselines, source, oracle)
    return EvaluationReport(horizons, folds, fresh)


def evaluate_fresh_days(
    config: PlatformConfig,
    fitted: TrainingData,
    model: torch.nn.Module,
    calibration: list[Calibration],
    baselines: list[GradientBoosted] | None,
    source: BookSource,
    oracle: Oracle | None,
) -> list[list[FreshScores]]:
    """The model fitted on ``fitted`` on each of the config's fresh days, from ``source`` (per
    horizon: each day, then pooled); nothing where there are no fresh days or no oracle to measure
    the capture against."""
    dates = fresh_dates(config)
    if not dates or oracle is None:
        return []
    days = []
    for date in dates:
        day = fresh_day(source.snapshots(date, config.data.symbols), date, config)
        data = fresh_day_data(day, config, fitted)
        if len(data.parts[FRESH].steps):  # a day without an eligible sample has nothing to score
            days.append((date.isoformat(), data))
    logits = [predict_logits(model, day, day.parts[FRESH].steps) for _, day in days]
    oracles = [oracle_for(oracle, config.target, day) for _, day in days]
    return score_fresh_days(fitted, days, logits, calibration, baselines, oracles)  # type: ignore[arg-type]


def evaluate_folds(
    config: PlatformConfig, dataset_dir: Path, model_dir: Path, oracle: Oracle | None
) -> list[FoldSummary]:
    """Headline test metrics of every fold's model on its own test block, oldest first (scored on
    ``training.device``)."""
    summaries = []
    n_folds = fold_count(config)
    device = resolve_device(config.training.device)
    for k in range(n_folds):
        fold = load_dataset(dataset_dir, config, fold=k)
        model, _, spec = load_checkpoint(fold_checkpoint(model_dir, k, n_folds), device)
        logits = predict_logits(model, fold, fold.parts["test"].steps)
        summaries.append(fold_summary(k, fold, logits, spec_calibration(spec), oracle_for(oracle, config.target, fold)))
    return summaries


def fold_summary(
    fold: int,
    data: TrainingData,
    test_logits: np.ndarray,
    calibration: list[Calibration],
    oracle: OracleProbabilities | None,
) -> FoldSummary:
    """Headline test metrics of one walk-forward fold: the model against the class prior (and
    the oracle's capture on the synthetic market), with the fold's test period."""
    train, test = data.parts["train"], data.parts["test"]
    horizons = []
    for i, horizon in enumerate(data.horizons):
        y = test.classes[:, i]
        probabilities = calibration[i].probabilities(test_logits[:, i])
        model = classification_metrics(y, probabilities)
        prior = classification_metrics(y, prior_probabilities(train.classes[:, i], data.n_classes, len(y)))
        outcomes = independent_outcomes(test.steps, horizon)
        if oracle is None:
            horizons.append(FoldHorizon(model, prior, independent_outcomes=outcomes))
            continue
        best = oracle(i, test.steps, test.edges[:, i])
        # Every fold's model is checked for a leak, not only the registered one's.
        beyond = mean_interval(per_sample_log_loss(probabilities, y) - per_sample_log_loss(best, y), horizon)
        capture = signal_capture(model, prior, classification_metrics(y, best))
        horizons.append(FoldHorizon(model, prior, capture, beyond.high < -LEAK_TOLERANCE, outcomes))
    period = purged_test_period(data)
    return FoldSummary(fold, period.first_ns, period.last_ns, len(test), horizons)


def flat_metrics(report: EvaluationReport) -> dict[str, float]:
    """The report as flat ``name_<horizon>s`` scalars, as tracking stores want them."""
    metrics: dict[str, float] = {}
    for i, entry in enumerate(report.horizons):
        horizon = f"{entry.horizon_s}s"
        for predictor, scores in entry.predictors.items():
            metrics |= {f"test_{predictor}_{name}_{horizon}": v for name, v in asdict(scores.metrics).items()}
            pnl = asdict(scores.pnl).items()
            metrics |= {f"pnl_{predictor}_{name}_{horizon}": v for name, v in pnl if v is not None}
        if entry.capture is not None:
            metrics |= {f"test_{name}_{horizon}": v for name, v in asdict(entry.capture).items()}
        metrics[f"test_leak_suspected_{horizon}"] = float(bool(entry.leak_suspected))
        metrics[f"test_samples_{horizon}"] = float(entry.samples)
        if entry.independent_outcomes is not None:
            metrics[f"test_independent_outcomes_{horizon}"] = float(entry.independent_outcomes)
        if report.fresh:  # the fresh days pooled: capture, and the model against the others
            pooled = report.fresh[i][-1]
            metrics[f"fresh_logloss_capture_{horizon}"] = pooled.logloss_capture.mean
            metrics[f"fresh_accuracy_capture_{horizon}"] = pooled.accuracy_capture.mean
            metrics |= {f"fresh_model_minus_{name}_{horizon}": d.mean for name, d in pooled.model_minus.items()}
        for name in ("accuracy", "log_loss"):
            values = [getattr(fold.horizons[i].model, name) for fold in report.walk_forward]
            if values:
                metrics[f"walk_forward_mean_{name}_{horizon}"] = float(np.mean(values))
                metrics[f"walk_forward_std_{name}_{horizon}"] = float(np.std(values))
    return metrics
