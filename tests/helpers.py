"""Helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.dataset import build_folds, save_dataset
from bmlt_assets.core.labels import forward_log_returns, trailing_volatility
from bmlt_assets.core.representation import day_tensors_from_frame
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


def synthetic_days(config: PlatformConfig) -> list[dict[str, np.ndarray]]:
    """Per-day tensors, returns and volatility of the config's synthetic market, in memory."""
    source = SyntheticMarketResource.for_config(config)
    days = []
    for date in config.data.dates:
        d = config.data
        arrays = day_tensors_from_frame(
            source.snapshots(date, d.symbols), date, d.symbols, d.cadence_ms, d.staleness_ms, config.representation
        )
        arrays["returns"] = forward_log_returns(
            arrays["mids"], arrays["valid"], config.horizon_steps, len(arrays["mids"])
        )
        arrays["volatility"] = trailing_volatility(arrays["mids"], arrays["valid"], config.vol_lookback_steps)
        days.append(arrays)
    return days


def stored_dataset(config: PlatformConfig) -> StorageResource:
    """The config's storage, holding its training dataset (every fold) of the synthetic market."""
    storage = StorageResource.for_config(config)
    with storage.commit(storage.dataset) as staging:
        save_dataset(build_folds(synthetic_days(config), config), staging)
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
