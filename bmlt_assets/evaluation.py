"""evaluation_report: the test-part report a quant decides on (metrics, calibration, baselines,
P&L after costs, bootstrap intervals, regimes), in MLflow, Dagster metadata and on disk."""

import json
from typing import Any

import dagster as dg

from bmlt_assets.core.dataset import load_dataset
from bmlt_assets.core.evaluation import evaluate
from bmlt_assets.core.report import write_report
from bmlt_assets.core.train import predict_logits
from bmlt_assets.scoring import CHECKPOINT, load_checkpoint
from bmlt_assets.training import trained_model
from bmlt_resources.mlflow import MlFlow
from bmlt_resources.settings import SettingsResource
from bmlt_resources.storage import StorageResource, atomic_directory, write_json
from bmlt_resources.synthetic import SyntheticMarketResource


@dg.asset(
    deps=[trained_model],
    group_name="training",
    kinds={"mlflow"},
    description="Test-part metrics, calibration, baselines, P&L after costs, bootstrap CIs and per-regime metrics.",
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    storage: StorageResource,
    mlflow: dg.ResourceParam[MlFlow],
    book_source: dg.ResourceParam[Any],
) -> dg.MaterializeResult:
    config = settings.get()
    data = load_dataset(storage.require(storage.dataset, "training_dataset"), config)
    model_dir = storage.require(storage.model, "trained_model")
    model, _, spec = load_checkpoint(model_dir / CHECKPOINT)
    model_meta = json.loads((model_dir / "meta.json").read_text())

    oracle = None
    if isinstance(book_source, SyntheticMarketResource):
        market = book_source.market()

        def oracle(i, steps, edges):
            return market.oracle_at(config.target, data.source.timestamps[steps], data.horizons[i], edges)

    test_logits = predict_logits(model, data, data.parts["test"].steps)
    report = evaluate(data, test_logits, spec["temperatures"], oracle, config.evaluation, config.data.cadence_ms / 1000)
    horizons = config.labels.horizons_s
    title = f"Evaluation of {config.registered_model_name} on {config.target}"
    with atomic_directory(storage.report) as staging:
        embedded, _ = write_report(staging, report, horizons, title)
        write_json({"horizons_s": horizons, "report": report}, staging / "metrics.json")
    mlflow.log_artifacts(str(storage.report), "report")

    metrics: dict[str, float] = {}
    for entry, horizon in zip(report, horizons):
        for predictor, values in entry["metrics"].items():
            metrics |= {f"test_{predictor}_{name}_{horizon}s": value for name, value in values.items()}
        for predictor, values in entry["pnl"].items():
            metrics |= {f"pnl_{predictor}_{name}_{horizon}s": value for name, value in values.items()}
        metrics |= {f"test_{name}_{horizon}s": value for name, value in entry.get("capture", {}).items()}
        metrics[f"test_leak_suspected_{horizon}s"] = float(entry.get("leak_suspected", False))
    mlflow.log_metrics(metrics)
    mlflow.set_tag("bmlt.model_run_id", model_meta.get("mlflow_run_id", ""))
    for entry, horizon in zip(report, horizons):
        if entry.get("leak_suspected"):
            context.log.error(f"{horizon}s: the model beats the oracle beyond its CI: probable look-ahead leak")

    run = mlflow.active_run()
    headline = {
        f"{name}_{horizon}s": dg.MetadataValue.float(value)
        for entry, horizon in zip(report, horizons)
        for name, value in {**entry.get("capture", {}), "model_accuracy": entry["metrics"]["model"]["accuracy"], "model_log_loss": entry["metrics"]["model"]["log_loss"]}.items()
    }
    return dg.MaterializeResult(
        metadata={
            **headline,
            "report": dg.MetadataValue.md(embedded),
            "mlflow_run_id": run.info.run_id,
            "mlflow_run": dg.MetadataValue.url(f"{config.mlflow.ui_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"),
            "model_uri": model_meta.get("model_uri", ""),
        }
    )
