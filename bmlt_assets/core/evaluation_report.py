"""The evaluation report as typed data: what ``evaluation_report`` measured, per horizon.

Frozen dataclasses, read by attribute (``report.horizons[0].model.metrics.log_loss``), so that
the report, the promotion gate and the CLI are checked by mypy rather than by string keys. One
:class:`HorizonReport` per horizon holds every predictor's :class:`PredictorScores` (metrics,
bootstrap intervals, P&L, equity curve and, on a market with an oracle, signal capture), the
model's calibration and fee sensitivity, and the leak flag. :class:`EvaluationReport` adds the
walk-forward folds.

``to_json``/``from_json`` keep the ``metrics.json`` layout of earlier versions (per-predictor
dicts under ``metrics``, ``intervals``, ``pnl``, ``equity``; ``log_loss_differences`` keyed
``model_minus_<name>``), so reports logged before still load. A field added later gets a
default, for the same reason. Validation and conversion of the nested values is pydantic's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pydantic import TypeAdapter


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% block-bootstrap confidence interval (``core.uncertainty``)."""

    mean: float
    low: float
    high: float
    block_length: float = 1.0  # the bootstrap's expected block length (samples)

    @property
    def below_zero(self) -> bool:
        return self.high < 0

    @property
    def above_zero(self) -> bool:
        return self.low > 0


@dataclass(frozen=True)
class Classification:
    """Classification metrics of one forecaster on the test part (``core.metrics``)."""

    accuracy: float  # share
    balanced_accuracy: float  # share
    macro_f1: float
    mcc: float
    log_loss: float  # nats
    brier: float  # multi-class Brier score, 0 to 2


@dataclass(frozen=True)
class Scores(Classification):
    """A predictor's classification metrics plus its calibration and direction."""

    ece: float  # top-label expected calibration error, share
    directional_accuracy: float  # share of samples that moved whose sign the forecaster got right


@dataclass(frozen=True)
class Capture:
    """Share of the achievable edge over the class prior a forecaster captured: 0 is the prior, 1 the oracle."""

    accuracy_capture: float
    logloss_capture: float


@dataclass(frozen=True)
class Pnl:
    """The backtest of a forecaster after costs (``core.backtest``). The economics fields are None
    where they were not measured (no trade; too few trades for an interval; older reports)."""

    trades: int
    hit_rate: float  # share of trades
    mean_return_bps: float  # net, per trade
    total_return_bps: float  # net
    costs_bps: float  # paid in total
    sharpe_annualized: float  # 24/7 market
    max_drawdown_bps: float
    turnover_per_day: float  # position changes
    gross_mean_bps: float | None = None  # the edge per trade before costs
    break_even_fee_bps: float | None = None  # per side: the fee at which the mean net return is 0
    mean_return_low_bps: float | None = None  # 95% bootstrap CI of the net mean return per trade
    mean_return_high_bps: float | None = None

    @property
    def profitable(self) -> bool:
        """It made money after costs (a point estimate: see :attr:`profitable_beyond_noise`)."""
        return self.trades > 0 and self.total_return_bps > 0

    @property
    def profitable_beyond_noise(self) -> bool:
        """The 95% interval of its net mean return per trade lies above zero."""
        return self.mean_return_low_bps is not None and self.mean_return_low_bps > 0

    @property
    def costs_per_trade_bps(self) -> float | None:
        return self.costs_bps / self.trades if self.trades else None


@dataclass(frozen=True, kw_only=True)  # keyword-only: after Pnl's defaulted fields
class PnlAtFee(Pnl):
    """The model's backtest at one assumed fee (the report's fee sensitivity)."""

    fee_bps_per_side: float


@dataclass(frozen=True)
class EquityCurve:
    steps: list[int]  # the entry step of each trade
    timestamps_ns: list[int]  # its time
    equity_bps: list[float]  # cumulative net return after it


@dataclass(frozen=True)
class PredictorIntervals:
    accuracy: Interval
    log_loss: Interval


@dataclass(frozen=True)
class PredictorScores:
    """Everything measured of one predictor (the model, a baseline, the champion, the oracle)."""

    metrics: Scores
    intervals: PredictorIntervals
    pnl: Pnl
    equity: EquityCurve
    capture: Capture | None = None  # only on a market with an oracle


@dataclass(frozen=True)
class CalibrationScore:
    ece: float
    log_loss: float


@dataclass(frozen=True)
class ReliabilityCurve:
    """One class against the rest: mean predicted probability and observed frequency per bin."""

    predicted: list[float]
    observed: list[float]


@dataclass(frozen=True)
class CalibrationSummary:
    """The model's calibration (``softmax(logits / temperature + bias)``, fitted on validation)
    and what it did on the test part."""

    temperature: float
    bias: list[float]
    bins: str  # how the ECE was binned
    before: CalibrationScore
    after: CalibrationScore
    reliability: list[ReliabilityCurve]  # per class, after calibration
    bias_prior_sd: float | None = None  # the class bias's empirical-Bayes prior sd (0: no bias)
    outcomes: int | None = None  # the independent validation outcomes it was fitted on
    temperature_alone: float | None = None  # the temperature fitted without a bias


@dataclass(frozen=True)
class ClassRanges:
    """What each class means as a return over the horizon."""

    kind: str  # labels.edges
    edges_bps: list[float]  # median edges over the test part
    edges_sigma: list[float] | None = None  # volatility-scaled edges, in units of σ·√h
    sigma_bps_median: float | None = None

    @property
    def volatility_scaled(self) -> bool:
        return self.edges_sigma is not None


@dataclass(frozen=True)
class Costs:
    fee_bps_per_side: float
    half_spread_per_side: bool  # half the quoted spread at entry, paid on entry and on exit
    median_spread_bps: float  # over the test part
    pnl_threshold: float  # the probability mass above (below) zero that opens a long (short)


@dataclass(frozen=True)
class TestPeriod:
    first_ns: int  # UTC
    last_ns: int

    __test__ = False  # not a pytest test class

    @property
    def days(self) -> float:
        return (self.last_ns - self.first_ns) / (86_400 * 10**9)


@dataclass(frozen=True)
class ClassCounts:
    realized: list[int]
    predicted: list[int]  # the model's argmax


@dataclass(frozen=True)
class RegimeScores:
    """The model within one volatility regime (terciles of the training part's volatility)."""

    samples: int
    accuracy: float  # NaN when the regime holds no test sample
    log_loss: float
    independent_outcomes: int | None = None  # non-overlapping samples (None in older reports)


MODEL = "model"
BASELINES = ("prior", "persistence", "logistic_obi", "gbm")  # fitted on the training part
ORACLE = "oracle"
CHAMPION = "champion"


@dataclass(frozen=True)
class HorizonReport:
    """The test-part report of one horizon."""

    horizon_steps: int
    horizon_s: int | float  # an int where the horizon is a whole number of seconds
    samples: int
    test_period: TestPeriod
    costs: Costs
    classes: ClassRanges
    predictors: dict[str, PredictorScores]  # the model first, then the baselines, champion and oracle
    model_minus: dict[str, Interval]  # per other predictor: the model's per-sample log loss minus its own
    calibration: CalibrationSummary
    confusion: list[list[int]]  # the model's, rows realized, columns predicted
    class_distribution: ClassCounts
    regimes: dict[str, RegimeScores]
    beats_baselines: bool
    pnl_by_fee: list[PnlAtFee] = field(default_factory=list)  # the model at no fee, the fee and twice it
    leak_suspected: bool | None = None  # None without an oracle to compare with
    # Samples whose outcome windows do not overlap (``core.uncertainty``); None in older reports.
    independent_outcomes: int | None = None

    @property
    def model(self) -> PredictorScores:
        return self.predictors[MODEL]

    @property
    def capture(self) -> Capture | None:
        """The model's signal capture (on a market with an oracle)."""
        return self.model.capture

    @property
    def best_baseline(self) -> str:
        """The baseline with the lowest test log loss."""
        return min((b for b in BASELINES if b in self.predictors), key=lambda b: self.predictors[b].metrics.log_loss)

    def margin_over(self, other: str) -> Interval:
        """How much lower the model's per-sample log loss is than ``other``'s (nats; above 0: the
        model is better), with its interval: ``model_minus[other]`` with the sign turned."""
        d = self.model_minus[other]
        return Interval(-d.mean, -d.high, -d.low, d.block_length)

    def to_json(self) -> dict[str, Any]:
        plain: dict[str, Any] = _adapter(HorizonReport).dump_python(self, exclude_none=True)
        predictors = plain.pop("predictors")
        for part in ("metrics", "intervals", "pnl", "equity"):
            plain[part] = {name: scores[part] for name, scores in predictors.items()}
        captured = {name: scores["capture"] for name, scores in predictors.items() if "capture" in scores}
        if captured:
            plain["capture"] = captured[MODEL]
            plain["capture_by_predictor"] = captured
        plain["log_loss_differences"] = {f"model_minus_{name}": d for name, d in plain.pop("model_minus").items()}
        return plain

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> HorizonReport:
        """From ``to_json``'s layout, and from reports of earlier versions (without the fee
        sensitivity, or with the model's capture alone)."""
        plain = {k: v for k, v in entry.items() if k not in _GROUPED}
        captured = entry.get("capture_by_predictor") or ({MODEL: entry["capture"]} if "capture" in entry else {})
        plain["predictors"] = {  # metrics.json sorts its keys: back in reading order, the model first
            name: {
                "metrics": metrics,
                "intervals": entry["intervals"][name],
                "pnl": entry["pnl"][name],
                "equity": entry["equity"][name],
                "capture": captured.get(name),
            }
            for name, metrics in sorted(entry["metrics"].items(), key=lambda item: _reading_order(item[0]))
        }
        differences = entry["log_loss_differences"].items()
        plain["model_minus"] = {name.removeprefix("model_minus_"): d for name, d in differences}
        return _adapter(HorizonReport).validate_python(plain)


def _reading_order(predictor: str) -> int:
    """The model, the baselines, any other comparator, the champion, the oracle."""
    order = (MODEL, *BASELINES, "", CHAMPION, ORACLE)  # "": where any other comparator goes
    return order.index(predictor if predictor in order else "")


# metrics.json keys that from_json regroups into ``predictors`` and ``model_minus``
_GROUPED = {"metrics", "intervals", "pnl", "equity", "capture", "capture_by_predictor", "log_loss_differences"}


@dataclass(frozen=True)
class FoldHorizon:
    """One horizon of a walk-forward fold: its model and the class prior on its own test block."""

    model: Classification
    prior: Classification
    capture: Capture | None = None
    leak_suspected: bool | None = None  # None without an oracle to compare with
    independent_outcomes: int | None = None  # non-overlapping test samples (None in older reports)


@dataclass(frozen=True)
class FoldSummary:
    """A walk-forward fold's model on its own test block (oldest fold first)."""

    fold: int
    test_first_ns: int
    test_last_ns: int
    samples: int
    horizons: list[FoldHorizon]


@dataclass(frozen=True)
class FreshScores:
    """One horizon on one fresh day after the range (``day``: its date) or on all of them
    (``day``: "pooled"), ``core.fresh``."""

    day: str
    samples: int
    independent_outcomes: int  # non-overlapping horizon-long stretches
    regimes: dict[str, float]  # share of the samples in each trailing-volatility regime (training terciles)
    log_loss: dict[str, float]  # per predictor (nats)
    accuracy: dict[str, float]  # per predictor (share)
    logloss_capture: Interval  # (prior - model) / (prior - oracle) log loss
    accuracy_capture: Interval  # (model - prior) / (oracle - prior) accuracy
    model_minus: dict[str, Interval]  # log loss, the model minus each other predictor


@dataclass(frozen=True)
class EvaluationReport:
    """Every horizon's report, every walk-forward fold's model on its own test block, and per
    horizon the model on each fresh day after the range and on all of them pooled."""

    horizons: list[HorizonReport]
    walk_forward: list[FoldSummary] = field(default_factory=list)
    fresh: list[list[FreshScores]] = field(default_factory=list)

    @property
    def test_period(self) -> TestPeriod:
        return self.horizons[0].test_period

    def fresh_at(self, horizon: int) -> list[FreshScores]:
        """The ``horizon``-th horizon's fresh days, then their pooled scores ([]: none scored)."""
        return self.fresh[horizon] if self.fresh else []

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.json`` of the report folder."""
        return {
            "horizons_s": [h.horizon_s for h in self.horizons],
            "report": [h.to_json() for h in self.horizons],
            "walk_forward": [_adapter(FoldSummary).dump_python(f, exclude_none=True) for f in self.walk_forward],
            "fresh": _adapter(list[list[FreshScores]]).dump_python(self.fresh),
        }

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> EvaluationReport:
        horizons = [HorizonReport.from_json(entry) for entry in saved["report"]]
        folds = [_adapter(FoldSummary).validate_python(fold) for fold in saved.get("walk_forward", [])]
        return cls(horizons, folds, _adapter(list[list[FreshScores]]).validate_python(saved.get("fresh", [])))


@cache
def _adapter(kind: type) -> TypeAdapter[Any]:
    return TypeAdapter(kind)
