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

from bmlt_assets.boundary import code_location_errors, refuse_unwritable
from bmlt_assets.core.config import (
    ConfigError,
    DeploymentConfig,
    PlatformConfig,
    StepResources,
    config_path_from_env,
)
from bmlt_assets.core.files import landing_base
from bmlt_assets.dataset import training_classes_are_balanced, training_dataset
from bmlt_assets.evaluation import evaluation_report
from bmlt_assets.partitions import backfill_policy
from bmlt_assets.recording import record_job
from bmlt_assets.returns import forward_returns, labels_never_cross_gaps
from bmlt_assets.snapshots import orderbook_snapshots, snapshots_are_sound
from bmlt_assets.tensors import book_tensors, tensors_are_sound
from bmlt_assets.training.asset import trained_model
from bmlt_resources.binance import BinanceResource
from bmlt_resources.dagster_private import process_config
from bmlt_resources.mlflow import MlflowTracking
from bmlt_resources.settings import SettingsResource
from bmlt_resources.storage import LandingZoneResource, StorageResource
from bmlt_resources.synthetic import SyntheticMarketResource
from bmlt_resources.tardis import TardisArchiveResource
from bmlt_resources.torchrun import torchrun_launcher

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
            description="Snapshots -> tensors -> forward returns for one day or a range (deployment.backfill).",
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


def run_description(config: PlatformConfig, config_path: Path) -> str:
    """The MLflow run page's description: what is trained on what, and from which config."""
    data, labels = config.data, config.labels
    horizons = ", ".join(f"{h} s" for h in labels.horizons_s)
    return (
        f"**{config.name}**: {config.model.architecture} ({config.model.multi_asset}) predicting {config.target} "
        f"over {labels.n_classes} {labels.edges} classes at {horizons}, from {data.source} {data.market} books of "
        f"{', '.join(data.symbols)}, {data.start_date}..{data.end_date}.\n\n"
        f"Config `{Path(config_path).resolve()}` (content hash {config.content_hash}); "
        "its resolved copy is config/resolved.yaml."
    )


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
            download_dir=str(config.local_dir / data.tardis.download_dir),
            mirror=f"{config.storage.uri}/{data.tardis.download_dir}" if config.storage.is_remote else None,
            mirror_endpoint_url=config.storage.endpoint_url,
            endpoint=data.tardis.endpoint,
            keep_every_ms=config.recording_cadence_ms,
        )
    else:
        book_source = LandingZoneResource(
            base=str(landing_base(config)),
            endpoint_url=config.storage.endpoint_url,
            market=data.market,
            depth=data.depth,
        )
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
        "storage": StorageResource.for_config(config),
        "book_source": book_source,
        "mlflow": MlflowTracking(
            experiment_name=config.mlflow.experiment,
            mlflow_tracking_uri=config.tracking_uri,
            artifact_location=config.artifact_location,
            run_name=config.run_name,
            description=run_description(config, config_path),
        ),
        # training.launcher torchrun: here, or in pods of its own (deployment.torchrun).
        "torchrun": torchrun_launcher(config),
    }


def step_k8s_config(resources: StepResources) -> dict[str, object]:
    """One step pod's config, in the shape of dagster-k8s's per-step config: cpu is requested but
    not capped (a cap only throttles), memory and ephemeral storage are requested and capped alike
    (the scheduler's promise is the pod's limit), GPUs are a limit as Kubernetes requires; the
    step's image, node selector, tolerations and affinity when given (dagster-k8s takes the
    Kubernetes camelCase names)."""
    requests = {
        key: value
        for key, value in (
            ("cpu", resources.cpu),
            ("memory", resources.memory),
            ("ephemeral-storage", resources.ephemeral_storage),
        )
        if value
    }
    limits = {key: value for key, value in requests.items() if key != "cpu"}
    limits |= {"nvidia.com/gpu": str(resources.gpus)} if resources.gpus else {}
    container: dict[str, object] = {
        "resources": ({"requests": requests} if requests else {}) | ({"limits": limits} if limits else {})
    }
    if resources.image:
        container["image"] = resources.image
    placement = {
        "nodeSelector": resources.node_selector,
        "tolerations": [toleration.model_dump(exclude_none=True) for toleration in resources.tolerations],
        "affinity": resources.affinity,
    }
    pod_spec = {key: value for key, value in placement.items() if value}
    return {"container_config": container} | ({"pod_spec_config": pod_spec} if pod_spec else {})


def k8s_executor_config(deployment: DeploymentConfig) -> dict[str, object]:
    """The k8s_job_executor config of ``deployment``: its ``k8s`` section, ``max_concurrent`` and
    each step's pod resources. Checked against dagster-k8s's schema: a misspelled key fails here,
    when the code location loads, not when a run starts."""
    from dagster_k8s import k8s_job_executor  # the Kubernetes deployment's dependency, imported when chosen

    # Keyed by op name, which is the asset's name also under a key prefix.
    per_step = {name: step_k8s_config(wanted) for name, wanted in deployment.step_resources.items()}
    concurrency = {} if deployment.max_concurrent is None else {"max_concurrent": deployment.max_concurrent}
    config = {**deployment.k8s, **concurrency, "per_step_k8s_config": per_step}
    checked = process_config(k8s_job_executor.config_schema.config_type, config)
    if not checked.success:
        details = "; ".join(error.message for error in checked.errors or [])
        raise ConfigError(f"deployment.k8s: not a valid k8s_job_executor config: {details}")
    return config


def build_executor(deployment: DeploymentConfig) -> dg.ExecutorDefinition:
    """The executor of ``deployment.executor``."""
    if deployment.executor == "in_process":
        return dg.in_process_executor
    if deployment.executor == "multiprocess":
        concurrency = {} if deployment.max_concurrent is None else {"max_concurrent": deployment.max_concurrent}
        return dg.multiprocess_executor.configured(concurrency, name="multiprocess")
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(k8s_executor_config(deployment), name="k8s")


def build_definitions(config_path: Path) -> dg.Definitions:
    """The code location of one config. Its assets live under the config's name
    (``synthetic-default/orderbook_snapshots``), as its data does (``<storage>/synthetic-default/``):
    the same keys whether the config is served alone (``-m bmlt_assets.definitions``: the scripts,
    ``bmlt backfill``) or beside the other configs (workspace.yaml: the UI), so every command and the UI
    share one instance's materializations, and several configs share it without a key clash."""
    resources = build_resources(config_path)
    settings = resources["settings"]
    assert isinstance(settings, SettingsResource)
    config = settings.get()
    problem = config.shared_state_problem()
    if problem:
        raise ConfigError(f"{config_path}: {problem}")
    refuse_unwritable(config)
    renamed = {key: key.with_prefix(config.name) for asset in INGEST_ASSETS + TRAINING_ASSETS for key in asset.keys}
    ingest = [asset.with_attributes(asset_key_replacements=renamed) for asset in INGEST_ASSETS]
    training = [asset.with_attributes(asset_key_replacements=renamed) for asset in TRAINING_ASSETS]
    checks = [check.with_attributes(asset_key_replacements=renamed) for check in CHECKS]
    deployment = config.deployment
    policy = backfill_policy(deployment)
    ingest = [asset.with_attributes(backfill_policy=policy) for asset in ingest]
    live = [record_job] if "binance" in resources else []  # recording needs a Binance source
    return dg.Definitions(
        executor=build_executor(deployment),
        assets=ingest + training,
        asset_checks=checks,
        jobs=[*asset_jobs(ingest, training), *live],
        resources=resources,
    )


def daily_asset_keys(config: PlatformConfig) -> list[dg.AssetKey]:
    """The keys of a config's daily assets, under its name (as build_definitions serves them)."""
    return [key.with_prefix(config.name) for asset in INGEST_ASSETS for key in asset.keys]


@dg.definitions
def defs() -> dg.Definitions:
    """The code location of $BMLT_CONFIG (default configs/default.yaml), built when Dagster loads it."""
    with code_location_errors():
        path = config_path_from_env()
    with code_location_errors(path):
        return build_definitions(path)
