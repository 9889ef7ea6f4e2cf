"""trained_model: the CNN+LSTM trained on training_dataset, logged and registered in MLflow.

A thin shell: the fit and the model's commit are ``workflow``'s plain functions."""

from dataclasses import asdict
from typing import Any

import dagster as dg

from bmlt_assets.core.models import parameter_count
from bmlt_assets.dataset import training_dataset
from bmlt_assets.metadata import markdown_table
from bmlt_assets.training.workflow import DATA_FINGERPRINT, Fitted, commit_model, describe, fit, log_inputs
from bmlt_resources.mlflow import CHALLENGER, RegisteredModel, TrackedMlflow
from bmlt_resources.settings import SettingsResource
from bmlt_resources.storage import StorageResource
from bmlt_resources.torchrun import TorchrunLauncher


@dg.asset(
    pool="trained_model",  # one writer at a time across runs (docs/design.md §9.5)
    deps=[training_dataset],
    group_name="training",
    kinds={"pytorch", "mlflow"},
    description="DeepLOB-family classifier, early-stopped on validation; "
    "logged to MLflow and registered as 'challenger'.",
)
def trained_model(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    storage: StorageResource,
    mlflow: dg.ResourceParam[TrackedMlflow],
    torchrun: TorchrunLauncher,
) -> dg.MaterializeResult:
    config, tracker = settings.get(), mlflow.run_tracker()
    provenance = log_inputs(tracker, config, storage)
    fitted = fit(
        config,
        storage.require(storage.dataset, "training_dataset"),
        tracker=tracker,
        storage=storage,
        launcher=torchrun.bound(context),
        data_fingerprint=provenance[DATA_FINGERPRINT],
        config_path=settings.config_path,
        log=context.log.info,
    )
    if fitted.result.resumed_from:
        context.log.warning(f"resumed training from the checkpoint of epoch {fitted.result.resumed_from}")
    tags = {**provenance, "dagster_run_id": context.run.run_id}
    registered = commit_model(
        storage,
        fitted,
        lambda checkpoint, example: mlflow.register_challenger(
            config.registered_model_name, checkpoint, example, tags, describe(config)
        ),
    )
    return dg.MaterializeResult(metadata=_metadata(fitted, registered))


def _metadata(fitted: Fitted, registered: RegisteredModel) -> dict[str, Any]:
    history = [
        {"epoch": r.epoch, "train_loss": r.train_loss, "val_log_loss": r.val_log_loss, "samples_per_s": r.samples_per_s}
        for r in fitted.result.history
    ]
    result = fitted.result
    metadata = {
        "parameters": parameter_count(result.model),
        "best_epoch": result.best_epoch,
        "calibration": dg.MetadataValue.json([asdict(head) for head in fitted.calibration]),
        "best_val_log_loss": float(min(r.val_log_loss for r in result.history)),
        "mlflow_run_id": registered.run_id,
        "registered_model": f"{registered.name} v{registered.version} @{CHALLENGER}",
        "history": dg.MetadataValue.md(markdown_table(history)),
        "device": result.device,
        "precision": result.fast_path.precision,
        "channels_last": result.fast_path.channels_last,
        "train_samples_per_s": round(result.samples_per_s, 1),
        "fast_path_samples_per_s": dg.MetadataValue.json(result.fast_path.measured or "not measured (CPU defaults)"),
    }
    tuning = fitted.tuning
    if tuning is not None:
        metadata |= {
            "hpo_best_val_log_loss": tuning.best_value,
            "hpo_best_params": dg.MetadataValue.json(tuning.best_params),
            "hpo_trials": tuning.trials,
            "hpo_pruned": tuning.pruned,
            "hpo_importances": dg.MetadataValue.json(tuning.importances or "fewer than 4 complete trials"),
        }
    return metadata | fitted.reported
