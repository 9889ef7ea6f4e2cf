"""Evaluation on fresh days: whole sessions after the configured range, which nothing was fitted on.

The purged test part is one window at the end of the range, so its figures describe that window
(its regimes, its realized drift) as much as the model. A simulated market generates the days after
the range at no cost: the model, its calibration and the baselines fitted on the range are scored
on each of them with the test part's own functions, per day and pooled, with block-bootstrap
intervals, the volatility regimes each day covered and its count of independent outcomes.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from bmlt_assets.core.calibration import Calibration
from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.dataset import Part, TrainingData
from bmlt_assets.core.days import DayReturns, DayTensors, LabelledDay
from bmlt_assets.core.evaluation_report import FreshScores, Interval
from bmlt_assets.core.gradient_boosting import GradientBoosted, sample_features
from bmlt_assets.core.labels import REGIMES, class_edges, classify, volatility_regimes
from bmlt_assets.core.metrics import per_sample_log_loss, prior_probabilities
from bmlt_assets.core.readable import DIGITS, PROSE, interval, number
from bmlt_assets.core.sources import OracleProbabilities
from bmlt_assets.core.splits import eligible_steps
from bmlt_assets.core.tables import table_lines
from bmlt_assets.core.uncertainty import independent_outcomes, mean_interval, ratio_interval
from bmlt_assets.core.windows import WindowSource

FRESH = "fresh"  # the one part of a fresh day's data


def fresh_dates(config: PlatformConfig) -> list[dt.date]:
    """The ``evaluation.fresh_days`` days right after the configured range."""
    return [config.data.end_date + dt.timedelta(days=i) for i in range(1, config.fresh_day_count + 1)]


def fresh_day(snapshots: pl.DataFrame, date: dt.date, config: PlatformConfig) -> LabelledDay:
    """One day's tensors and labels from its snapshots, as the ingest assets make them. A simulated
    day is a session of its own (nothing is published in its first minute), so no label needs the
    next day."""
    tensors = DayTensors.from_frame(snapshots, date, config)
    return LabelledDay(tensors, DayReturns.of(tensors, None, config))


def fresh_stride(config: PlatformConfig) -> int:
    """Fresh days are sampled once per shortest horizon: closer samples share most of their label
    (the independent outcomes stay the same), and a day of every step would cost a model
    evaluation of 86,400 windows at 1 s."""
    return min(config.horizon_steps)


def fresh_day_data(day: LabelledDay, config: PlatformConfig, fitted: TrainingData) -> TrainingData:
    """A fresh day's eligible steps, one per shortest horizon (``fresh_stride``), as the part
    ``fresh``, labelled with the training part's class edges (quantile edges as fitted there) and
    read through its normalizer."""
    target = config.data.symbols.index(config.target)
    tensors = day.tensors
    returns, volatility = day.returns.returns[:, :, target], day.returns.volatility[:, target]
    label_ok = np.isfinite(returns).all(axis=1) & np.isfinite(volatility) & (volatility > 0)
    steps = eligible_steps(np.asarray(tensors.valid.all(axis=1)), config.dataset.window_steps, label_ok)
    steps = steps[steps % fresh_stride(config) == 0]
    horizons, n = config.horizon_steps, len(steps)
    edges = np.empty((n, len(horizons), config.labels.n_classes - 1))
    for i, horizon in enumerate(horizons):
        if config.labels.edges == "quantile":  # fitted on the training part: never refitted on the day
            edges[:, i] = fitted.parts["train"].edges[0, i]
        else:
            edges[:, i] = class_edges(config.labels, returns[steps, i], volatility[steps], horizon, np.zeros(n, bool))
    classes = np.stack([classify(returns[steps, i], edges[:, i]) for i in range(len(horizons))], axis=1)
    part = Part(steps, classes, edges, returns[steps], np.full(classes.shape, -1), volatility[steps])
    window = config.dataset.window_steps
    source = WindowSource(tensors.base, tensors.mids, tensors.timestamps, window, fitted.source.normalizer)
    return TrainingData(
        source, tensors.quotes, {FRESH: part}, fitted.n_classes, horizons, config.data.symbols, config.target
    )


def fresh_scores(
    day: str,
    overlap: float,
    classes: np.ndarray,
    probabilities: dict[str, np.ndarray],
    regime: np.ndarray,
    outcomes: int,
) -> FreshScores:
    """Scores of ``probabilities`` (``model``, ``prior`` and ``oracle`` at least) for ``classes``;
    intervals from the stationary block bootstrap, blocks at least ``overlap`` samples long (the
    samples one outcome spans)."""
    losses = {name: per_sample_log_loss(p, classes) for name, p in probabilities.items()}
    hits = {name: (p.argmax(axis=1) == classes).astype(np.float64) for name, p in probabilities.items()}
    return FreshScores(
        day=day,
        samples=len(classes),
        independent_outcomes=outcomes,
        regimes={label: float(np.mean(regime == r)) for r, label in enumerate(REGIMES)},
        log_loss={name: float(loss.mean()) for name, loss in losses.items()},
        accuracy={name: float(hit.mean()) for name, hit in hits.items()},
        logloss_capture=ratio_interval(
            losses["prior"] - losses["model"], losses["prior"] - losses["oracle"], minimum_block=overlap
        ),
        accuracy_capture=ratio_interval(
            hits["model"] - hits["prior"], hits["oracle"] - hits["prior"], minimum_block=overlap
        ),
        model_minus={
            name: mean_interval(losses["model"] - loss, overlap) for name, loss in losses.items() if name != "model"
        },
    )


def pooled(day_inputs: list[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, int]], overlap: float) -> FreshScores:
    """All days as one sample: ``day_inputs`` holds each day's classes, probabilities, regimes and
    independent outcomes (a block of the bootstrap may join two days' ends: the days are
    independent sessions, so that only blurs one block in thousands)."""
    names = day_inputs[0][1].keys()
    return fresh_scores(
        "pooled",
        overlap,
        np.concatenate([classes for classes, _, _, _ in day_inputs]),
        {name: np.concatenate([p[name] for _, p, _, _ in day_inputs]) for name in names},
        np.concatenate([regime for _, _, regime, _ in day_inputs]),
        sum(outcomes for _, _, _, outcomes in day_inputs),
    )


def score_fresh_days(
    fitted: TrainingData,
    days: list[tuple[str, TrainingData]],
    day_logits: list[np.ndarray],
    calibration: list[Calibration],
    baselines: list[GradientBoosted] | None,
    oracles: list[OracleProbabilities],
) -> list[list[FreshScores]]:
    """Per horizon: each fresh day's scores, then the pooled ones. ``day_logits``: the model's
    (N, H, C) logits of each day's samples; ``oracles``: each day's oracle. Scored: the model as
    shipped, the model with its temperature alone (the calibration's comparator), the class prior,
    the gradient-boosted baseline and the oracle; the regimes are the training part's terciles.
    Every day holds at least one sample; no day gives no scores."""
    train = fitted.parts["train"]
    stride = min(fitted.horizons)  # fresh_stride: the steps between two samples of a fresh day
    overlaps = [-(-horizon // stride) for horizon in fitted.horizons]  # the samples an outcome spans
    scores: list[list[FreshScores]] = [[] for _ in fitted.horizons]
    inputs: list[list[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, int]]] = [[] for _ in fitted.horizons]
    for (label, data), logits, oracle in zip(days, day_logits, oracles):
        part = data.parts[FRESH]
        regime = volatility_regimes(train.volatility, part.volatility)
        features = None if baselines is None else sample_features(data, part.steps)
        for i, horizon in enumerate(fitted.horizons):
            classes = part.classes[:, i]
            probabilities = {
                "model": calibration[i].probabilities(logits[:, i]),
                "prior": prior_probabilities(train.classes[:, i], fitted.n_classes, len(classes)),
                "oracle": oracle(i, part.steps, part.edges[:, i]),
            }
            alone = calibration[i].without_bias()
            if alone is not None:
                probabilities["temperature_alone"] = alone.probabilities(logits[:, i])
            if baselines is not None and features is not None:  # the one check, as mypy narrows it
                probabilities["gbm"] = baselines[i].probabilities(features)
            outcomes = independent_outcomes(part.steps, horizon)
            scores[i].append(fresh_scores(label, overlaps[i], classes, probabilities, regime, outcomes))
            inputs[i].append((classes, probabilities, regime, outcomes))
    if not days:
        return []
    return [
        [*day_scores, pooled(day_inputs, overlap)] for day_scores, day_inputs, overlap in zip(scores, inputs, overlaps)
    ]


def _interval(d: Interval, digits: int = PROSE) -> str:
    """``mean [low, high]``, as the report writes an estimate with its interval."""
    return f"{number(d.mean, digits)} {interval(d.low, d.high, digits)}"


def fresh_headline(scores: list[FreshScores]) -> str:
    """One horizon's pooled fresh days in a sentence, for the headline and the terminal."""
    pooled = scores[-1]
    return (
        f"On {len(scores) - 1} fresh days after the range: log-loss capture {_interval(pooled.logloss_capture)}, "
        f"accuracy capture {_interval(pooled.accuracy_capture)} (95% CIs; {number(pooled.independent_outcomes)} "
        "independent outcomes)."
    )


def fresh_day_lines(fresh: list[list[FreshScores]], horizons_s: list[int | float]) -> list[str]:
    """The fresh-day section of the report: per horizon, a row per day and one pooled."""
    if not fresh:
        return []
    days = len(fresh[0]) - 1
    lines = [
        "## Fresh days: the days after the range, which nothing was fitted on",
        "",
        f"The model, its calibration and the baselines fitted on the range, scored on the {days} days after it "
        "(one sample per shortest horizon; every class edge as fitted on the training part). Capture: 0 = the class "
        "prior, 1 = the oracle. Differences: log loss, model minus the other predictor, in nats (below 0: the model "
        "is better); `temperature alone` is the model calibrated without its class bias. 95% block-bootstrap CIs.",
        "",
    ]
    for horizon_s, scores in zip(horizons_s, fresh):
        header = [
            "day",
            "samples (count)",
            "independent outcomes (count)",
            "regimes low / mid / high (share)",
            "log-loss capture [95% CI]",
            "accuracy capture [95% CI]",
        ]
        comparators = [name for name in ("temperature_alone", "gbm", "oracle") if name in scores[0].model_minus]
        header += [f"model − {name.replace('_', ' ')} (nats) [95% CI]" for name in comparators]
        rows = []
        for s in scores:
            regimes = " / ".join(number(s.regimes[r], 2) for r in REGIMES)
            row = [s.day, s.samples, s.independent_outcomes, regimes]
            row += [_interval(s.logloss_capture, DIGITS), _interval(s.accuracy_capture, DIGITS)]
            row += [_interval(s.model_minus[name], DIGITS) for name in comparators]
            rows.append(row)
        lines += [f"### {horizon_s:g} s horizon", "", *table_lines(header, rows), ""]
    return lines
