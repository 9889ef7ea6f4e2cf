"""evaluation_report: test-part metrics of the trained model against baselines and the oracle."""

import json
from typing import Any

import dagster as dg

from bmlt_assets.core.dataset import load_dataset
from bmlt_assets.core.evaluation import evaluate, render_markdown
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
    description="Test-part accuracy, macro-F1, log loss and confusion matrix for the model, baselines and (synthetic) oracle.",
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
    model, _, _ = load_checkpoint(model_dir / CHECKPOINT)
    model_meta = json.loads((model_dir / "meta.json").read_text())

    oracle = None
    if isinstance(book_source, SyntheticMarketResource):
        market = book_source.market()
        timestamps = data.source.timestamps

        def oracle(i: int, steps, edges):
            return market.oracle_at(config.target, timestamps[steps], data.horizons[i], edges)

    test_logits = predict_logits(model, data, data.parts["test"].steps)
    report = evaluate(data, test_logits, oracle, config.evaluation.logistic_max_iter)
    markdown = render_markdown(report, config.labels.horizons_s, f"Evaluation of {config.registered_model_name} on {config.target}")

    metrics: dict[str, float] = {}
    for entry, horizon in zip(report, config.labels.horizons_s):
        for predictor, values in entry["metrics"].items():
            metrics |= {f"test_{predictor}_{name}_{horizon}s": value for name, value in values.items()}
        metrics |= {f"test_{name}_{horizon}s": value for name, value in entry.get("capture", {}).items()}
    mlflow.log_metrics(metrics)
    mlflow.set_tag("bmlt.model_run_id", model_meta.get("mlflow_run_id", ""))
    with atomic_directory(storage.report) as staging:
        (staging / "report.md").write_text(markdown)
        write_json({"horizons_s": config.labels.horizons_s, "report": report}, staging / "metrics.json")
    mlflow.log_artifact(str(storage.report / "report.md"), "report")
    mlflow.log_dict({"horizons_s": config.labels.horizons_s, "report": report}, "report/metrics.json")

    headline = {
        f"{name}_{horizon}s": dg.MetadataValue.float(value)
        for entry, horizon in zip(report, config.labels.horizons_s)
        for name, value in {**entry.get("capture", {}), "model_accuracy": entry["metrics"]["model"]["accuracy"], "model_log_loss": entry["metrics"]["model"]["log_loss"]}.items()
    }
    return dg.MaterializeResult(
        metadata={
            **headline,
            "report": dg.MetadataValue.md(markdown),
            "mlflow_run_id": mlflow.active_run().info.run_id,
            "model_uri": model_meta.get("model_uri", ""),
        }
    )
