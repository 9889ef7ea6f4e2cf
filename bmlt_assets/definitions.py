"""Dagster Definitions: assets, jobs and the resources of one deployment.

The config comes from ``$BMLT_CONFIG`` (default ``configs/default.yaml``) and is validated when
the code location loads, so a bad config fails before any run starts. The data source resource
(``book_source``) is chosen by ``data.source``: the embedded synthetic market, Binance
recordings in the landing zone, or tardis.dev's archive.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from dagster_mlflow import end_mlflow_on_run_finished

from bmlt_assets.core.config import config_path_from_env
from bmlt_assets.dataset import training_classes_are_balanced, training_dataset
from bmlt_assets.evaluation import evaluation_report
from bmlt_assets.recording import record_job
from bmlt_assets.returns import forward_returns, labels_never_cross_gaps
from bmlt_assets.snapshots import orderbook_snapshots, snapshots_are_sound
from bmlt_assets.tensors import book_tensors, tensors_are_sound
from bmlt_assets.training import trained_model
from bmlt_resources.binance import BinanceResource
from bmlt_resources.mlflow import MlflowTracking
from bmlt_resources.settings import SettingsResource
from bmlt_resources.storage import LandingZoneResource, StorageResource
from bmlt_resources.synthetic import SyntheticMarketResource
from bmlt_resources.tardis import TardisArchiveResource
from bmlt_resources.torchrun import LocalTorchrun

INGEST_ASSETS = [orderbook_snapshots, book_tensors, forward_returns]
TRAINING_ASSETS = [training_dataset, trained_model, evaluation_report]
CHECKS = [snapshots_are_sound, tensors_are_sound, labels_never_cross_gaps, training_classes_are_balanced]


def asset_jobs(
    ingest: list[dg.AssetsDefinition], training: list[dg.AssetsDefinition]
) -> list[dg.UnresolvedAssetJobDefinition]:
    return [
        dg.define_asset_job(
            "ingest_job",
            selection=ingest,
            description="Snapshots -> tensors -> forward returns for one day or a range (single-run backfill).",
        ),
        dg.define_asset_job(
            "training_job",
            selection=training,
            hooks={end_mlflow_on_run_finished},
            description="Dataset -> model -> evaluation over the config's date range (ingested beforehand).",
        ),
        dg.define_asset_job(
            "full_pipeline",
            selection=ingest + training,
            hooks={end_mlflow_on_run_finished},
            description="Everything, end to end; run it with the config's partition range tags (see README).",
        ),
    ]


def build_resources(config_path: Path) -> dict[str, object]:
    settings = SettingsResource.from_file(config_path)  # the only parse of the config file
    config = settings.get()
    data = config.data
    if data.source == "synthetic":
        book_source: dg.ConfigurableResource = SyntheticMarketResource.for_config(config)
    elif data.source == "tardis":
        book_source = TardisArchiveResource(
            exchange=data.tardis_exchange,
            data_type=data.tardis.data_type,
            market=data.market,
            depth=data.depth,
            download_dir=str(config.base_dir / data.tardis.download_dir),
            endpoint=data.tardis.endpoint,
            keep_every_ms=config.recording_cadence_ms,
        )
    else:
        book_source = LandingZoneResource(base_dir=str(config.base_dir), market=data.market, depth=data.depth)
    resources: dict[str, object] = {}
    if data.source == "binance":
        # Credentials only from the environment, and only when set: public market data needs none.
        credentials = {
            field: dg.EnvVar(variable)
            for field, variable in (("api_key", "BINANCE_API_KEY"), ("api_secret", "BINANCE_API_SECRET"))
            if os.environ.get(variable)
        }
        resources["binance"] = BinanceResource.for_config(data, **credentials)
    return resources | {
        "settings": settings,
        "storage": StorageResource(base_dir=str(config.base_dir), config_name=config.name),
        "book_source": book_source,
        "mlflow": MlflowTracking(
            experiment_name=config.mlflow.experiment,
            mlflow_tracking_uri=config.tracking_uri,
            artifact_location=config.artifact_location,
            run_name=config.run_name,
        ),
        # training.launcher torchrun runs here; KubernetesTorchrun runs it in a pod of its own.
        "torchrun": LocalTorchrun(),
    }


def build_definitions(config_path: Path, key_prefix: str | None = None) -> dg.Definitions:
    """The code location of one config. ``key_prefix`` puts its assets under their own keys, so
    that several configs' locations can share one Dagster instance and UI (see locations.py)."""
    resources = build_resources(config_path)
    ingest, training, checks = INGEST_ASSETS, TRAINING_ASSETS, CHECKS
    if key_prefix:
        renamed = {key: key.with_prefix(key_prefix) for asset in ingest + training for key in asset.keys}
        ingest = [asset.with_attributes(asset_key_replacements=renamed) for asset in ingest]
        training = [asset.with_attributes(asset_key_replacements=renamed) for asset in training]
        checks = [check.with_attributes(asset_key_replacements=renamed) for check in checks]
    live = [record_job] if "binance" in resources else []  # recording needs a Binance source
    return dg.Definitions(
        assets=ingest + training,
        asset_checks=checks,
        jobs=[*asset_jobs(ingest, training), *live],
        resources=resources,
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The code location of $BMLT_CONFIG (default configs/default.yaml), built when Dagster loads it."""
    return build_definitions(config_path_from_env())
