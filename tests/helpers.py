"""Helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.dataset import build_folds, save_dataset
from bmlt_assets.core.days import DayTensors, LabelledDay, label_days
from bmlt_resources.mlflow import RunTracker
from bmlt_resources.storage import StorageResource
from bmlt_resources.synthetic import SyntheticMarketResource

TESTS = Path(__file__).parent
RECORDING_NAME = "binance_spot_btcusdt_20240808_depth_ws.gz"


def real_recording() -> Path:
    """The real Binance spot recording committed beside the tests (see tests/data/README.md)."""
    return TESTS / "data" / RECORDING_NAME


TINY = TESTS / "configs" / "tiny.yaml"


def write_config(folder: Path, overrides: dict | None = None, name: str = "config.yaml") -> Path:
    """The tiny config with storage under ``folder`` and optional section overrides."""
    raw = yaml.safe_load(TINY.read_text())
    raw["storage"] = {"uri": str(folder / "data")}
    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    path = folder / name
    path.write_text(yaml.safe_dump(raw))
    return path


def synthetic_days(config: PlatformConfig) -> list[LabelledDay]:
    """The config's days of its synthetic market, with their labels, in memory: what the daily
    assets store, made by the same functions (each day labelled with the next, as forward_returns
    labels it once both days are materialized)."""
    source, symbols = SyntheticMarketResource.for_config(config), config.data.symbols
    days = [DayTensors.from_frame(source.snapshots(date, symbols), date, config) for date in config.data.dates]
    return label_days(days, config)


def stored_dataset(config: PlatformConfig) -> StorageResource:
    """The config's storage, holding its training dataset (every fold) of the synthetic market."""
    storage = StorageResource.for_config(config)
    with storage.commit(storage.dataset) as staging:
        save_dataset(build_folds(synthetic_days(config), config), staging, config)
    return storage


def tracked_run(config: PlatformConfig) -> RunTracker:
    """A fresh MLflow run in the config's tracking store and experiment, as a step would log into."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=config.tracking_uri)
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(config.mlflow.experiment, artifact_location=config.artifact_location)
    )
    return RunTracker(client, client.create_run(experiment_id).info.run_id)


# A report horizon in metrics.json's layout, for tests of what reads reports.
DAY_NS = 86_400 * 10**9
START_NS = 1_736_208_000 * 10**9  # 2025-01-07 00:00:00 UTC
BETTER = {"mean": -0.05, "low": -0.08, "high": -0.02, "block_length": 3}
TIED = {"mean": -0.02, "low": -0.0432, "high": 0.0012, "block_length": 3}
WORSE = {"mean": 0.1, "low": 0.05, "high": 0.2, "block_length": 3}
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "mcc", "log_loss", "brier", "ece", "directional_accuracy")
PREDICTORS = ("model", "prior", "persistence", "logistic_obi", "gbm", "oracle")


# Like the demo's model of issue 25: it loses 16.4 bps per trade (1 winner in 1,865 trades). At the
# report's 1 bps fee per side and a 1.2 bps spread a trade costs 3.2 bps: the edge before costs is
# -13.2 bps, and no fee breaks even ((-13.2 - 1.2) / 2 = -7.2 bps per side).
LOSING_PNL = {
    "trades": 1865,
    "hit_rate": 1 / 1865,
    "mean_return_bps": -16.4,
    "total_return_bps": -16.4 * 1865,
    "costs_bps": 3.2 * 1865,
    "sharpe_annualized": -5298.9491,
    "max_drawdown_bps": 16.4 * 1865,
    "turnover_per_day": 12_345.678,
    "gross_mean_bps": -13.2,
    "break_even_fee_bps": -7.2,
    "mean_return_low_bps": -16.93,
    "mean_return_high_bps": -15.87,
}


def report_entry(
    ece_before: float = 0.05,
    ece_after: float = 0.02,
    vs_logistic: dict[str, float] = TIED,
    days: float = 10.0,
    volatility_scaled: bool = True,
    model_pnl: dict[str, float] | None = None,
    oracle_pnl: dict[str, float] | None = None,
    independent_outcomes: int | None = 17,
) -> dict[str, Any]:
    """One 30 s horizon of a report in metrics.json's layout, with chosen calibration, tie, window,
    P&L of the model and the oracle (overrides of a small profitable one) and independent outcomes."""
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
    interval = {"mean": 1.9, "low": 1.85, "high": 1.95, "block_length": 31.5}
    entry = {
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
            "model_minus_gbm": BETTER,
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
        "pnl": dict.fromkeys(PREDICTORS, pnl) | {"model": pnl | (model_pnl or {}), "oracle": pnl | (oracle_pnl or {})},
        "equity": {
            p: {
                "steps": [3, 90, 200],
                "timestamps_ns": [first + k * (last - first) // 4 for k in (1, 2, 3)],
                "equity_bps": [1.0, -0.5, 3.75],
            }
            for p in PREDICTORS
        },
        "regimes": {
            r: {"samples": 166, "accuracy": 0.25, "log_loss": 1.9, "independent_outcomes": 6}
            for r in ("low", "mid", "high")
        },
        "beats_baselines": False,
        "capture": {"accuracy_capture": 0.5, "logloss_capture": 0.4},
        "capture_by_predictor": {p: {"accuracy_capture": 0.5, "logloss_capture": 0.4} for p in PREDICTORS},
        "leak_suspected": False,
    }
    if independent_outcomes is not None:
        entry["independent_outcomes"] = independent_outcomes
    return entry
