"""evaluation_report: the test-part report a quant decides on (metrics, calibration, baselines,
P&L after costs, bootstrap intervals, regimes), in MLflow, Dagster metadata and on disk."""

import json
from typing import Any

import dagster as dg
import numpy as np

from bmlt_assets.core.checkpoint import CHECKPOINT, load_checkpoint, spec_calibration
from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.dataset import TrainingData, fold_count, load_dataset
from bmlt_assets.core.distributed import resolve_device
from bmlt_assets.core.evaluation import evaluate, flat_metrics, oracle_for
from bmlt_assets.core.files import write_json
from bmlt_assets.core.promotion import Verdict, gate, incomparability
from bmlt_assets.core.report import write_report
from bmlt_assets.core.sources import BookSource
from bmlt_assets.core.train import predict_logits
from bmlt_assets.core.walk_forward import evaluate_folds
from bmlt_assets.provenance import git_commit
from bmlt_assets.scoring import score_steps
from bmlt_assets.training import trained_model
from bmlt_resources.binance import with_market_fee
from bmlt_resources.mlflow import CHAMPION, TrackedMlflow
from bmlt_resources.settings import SettingsResource
from bmlt_resources.storage import StorageResource


@dg.asset(
    pool="evaluation_report",  # one writer at a time across runs (docs/design.md §9.5)
    deps=[trained_model],
    group_name="training",
    kinds={"mlflow"},
    description="Test-part metrics, calibration, baselines, P&L after costs, bootstrap CIs and per-regime metrics.",
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    storage: StorageResource,
    mlflow: dg.ResourceParam[TrackedMlflow],
    book_source: dg.ResourceParam[BookSource],
) -> dg.MaterializeResult:
    config = settings.get()
    dataset_dir = storage.require(storage.dataset, "training_dataset")
    data = load_dataset(dataset_dir, config)
    model_dir = storage.require(storage.model, "trained_model")
    model, _, spec = load_checkpoint(model_dir / CHECKPOINT, resolve_device(config.training.device))
    model_meta = json.loads((model_dir / "meta.json").read_text())
    oracle = book_source.oracle()
    champion_exists, champion, champion_note = _champion_probabilities(mlflow, config, data, spec)
    context.log.info(champion_note)
    test_logits = predict_logits(model, data, data.parts["test"].steps)
    report = evaluate(
        data,
        test_logits,
        spec_calibration(spec),
        oracle_for(oracle, config.target, data),
        with_market_fee(config.evaluation, config.data.market),
        config.data.cadence_ms / 1000,
        champion,
        labels=config.labels,
    )
    horizons = config.labels.horizons_s
    walk_forward = evaluate_folds(config, dataset_dir, model_dir, oracle) if fold_count(config) > 1 else []
    verdict = gate(report, champion_exists, champion is not None, config.evaluation.promotion_max_ece, champion_note)
    front_matter = _front_matter(settings, mlflow, model_meta, verdict, champion_note)
    with storage.commit(storage.report) as staging:
        embedded, _ = write_report(
            staging,
            report,
            horizons,
            f"Evaluation of {config.registered_model_name} on {config.target}",
            walk_forward,
            front_matter,
        )
        write_json({"horizons_s": horizons, "report": report, "walk_forward": walk_forward}, staging / "metrics.json")
    mlflow.log_artifacts(str(storage.require(storage.report, "evaluation_report")), "report")
    mlflow.log_metrics(flat_metrics(report, horizons, walk_forward))
    mlflow.set_tag("bmlt.model_run_id", model_meta.get("mlflow_run_id", ""))
    for entry, horizon in zip(report, horizons):
        if entry.get("leak_suspected"):
            context.log.error(f"{horizon}s: the model beats the oracle beyond its CI: probable look-ahead leak")
    mlflow.promote(config.registered_model_name, model_meta["registered_version"], verdict)
    if verdict.promote:
        context.log.info(f"{config.registered_model_name} v{model_meta['registered_version']} promoted to @{CHAMPION}")
    return dg.MaterializeResult(
        metadata=_metadata(config, mlflow, report, embedded, verdict, champion_note, model_meta)
    )


def _champion_probabilities(
    mlflow: TrackedMlflow, config: PlatformConfig, data: TrainingData, spec: dict[str, Any]
) -> tuple[bool, np.ndarray | None, str]:
    """Whether a champion exists, its test probabilities (None if it cannot be compared), and why."""
    champion = mlflow.champion(config.registered_model_name)
    if champion is None:
        return False, None, "no champion yet: the first model that beats the baselines becomes champion"
    version, model = champion
    test = data.source.timestamps[data.parts["test"].steps]
    why = incomparability(model.unwrap_python_model().spec, spec, (int(test[0]), int(test[-1])))
    if why:
        return True, None, f"champion v{version} is not comparable ({why}), so not replaced"
    theirs = model.unwrap_python_model().spec
    source = data.source
    probabilities = score_steps(
        model, source.base, source.mids, source.timestamps, data.parts["test"].steps, theirs["window_steps"]
    )
    return True, probabilities, f"compared with champion v{version} on the same test window"


def _metadata(
    config: PlatformConfig,
    mlflow: TrackedMlflow,
    report: list[dict[str, Any]],
    embedded: str,
    verdict: Verdict,
    champion_note: str,
    model_meta: dict[str, Any],
) -> dict[str, Any]:
    run = mlflow.active_run()
    headline = {
        f"{name}_{horizon}s": dg.MetadataValue.float(value)
        for entry, horizon in zip(report, config.labels.horizons_s)
        for name, value in {
            **entry.get("capture", {}),
            "model_accuracy": entry["metrics"]["model"]["accuracy"],
            "model_log_loss": entry["metrics"]["model"]["log_loss"],
        }.items()
    }
    return {
        **headline,
        "report": dg.MetadataValue.md(embedded),
        "promotion": dg.MetadataValue.md(
            f"**{'promoted to @champion' if verdict.promote else 'not promoted'}** ({champion_note})\n\n"
            + "\n".join(f"- {reason}" for reason in verdict.reasons)
        ),
        "mlflow_run_id": run.info.run_id,
        "mlflow_run": dg.MetadataValue.url(
            f"{config.mlflow.ui_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        ),
        "model_uri": model_meta.get("model_uri", ""),
    }


def _front_matter(
    settings: SettingsResource, mlflow: TrackedMlflow, model_meta: dict[str, Any], verdict: Verdict, note: str
) -> dict[str, Any]:
    """What the report says first: which model, run, config, code and data, and the gate's verdict.
    The aliases are the version's after this evaluation (@champion is added right after the report)."""
    config = settings.get()
    name, version = config.registered_model_name, str(model_meta["registered_version"])
    aliases = set(mlflow.tracking_client.get_model_version(name, version).aliases)
    run = mlflow.active_run()
    return {
        "model": name,
        "version": version,
        "aliases": sorted(aliases | ({CHAMPION} if verdict.promote else set())),
        "run_id": run.info.run_id,
        "run_url": f"{config.mlflow.ui_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}",
        "config_name": config.name,
        "config_path": settings.config_path,
        "commit": git_commit(),
        "data_range": f"{config.data.start_date} to {config.data.end_date} ({len(config.data.dates)} days)",
        "verdict": {"promote": verdict.promote, "reasons": verdict.reasons, "note": note},
    }
