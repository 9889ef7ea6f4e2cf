"""trained_model: the CNN+LSTM trained on training_dataset, logged and registered in MLflow."""

from collections.abc import Callable

import dagster as dg
import numpy as np
from mlflow import MlflowClient, pyfunc
from mlflow.models import infer_signature

from bmlt_assets.core.calibration import fit_temperature
from bmlt_assets.core.dataset import TrainingData, fold_count, load_dataset
from bmlt_assets.core.models import parameter_count
from bmlt_assets.core.train import EpochRecord, predict_logits, train
from bmlt_assets.core.tuning import tune, with_params
from bmlt_assets.dataset import training_dataset
from bmlt_assets.metadata import markdown_table
from bmlt_assets.provenance import combined_hash, content_hash, flatten, git_commit, package_versions
from bmlt_assets.scoring import CHECKPOINT, OrderBookPyfunc, save_checkpoint
from bmlt_resources.mlflow import MlFlow, MlflowTrialLogger
from bmlt_resources.settings import SettingsResource
from bmlt_resources.storage import StorageResource, atomic_directory, write_json

CHALLENGER = "challenger"


@dg.asset(
    deps=[training_dataset],
    group_name="training",
    kinds={"pytorch", "mlflow"},
    description="DeepLOB-family classifier, early-stopped on validation; logged to MLflow and registered as 'challenger'.",
)
def trained_model(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    storage: StorageResource,
    mlflow: dg.ResourceParam[MlFlow],
) -> dg.MaterializeResult:
    config = settings.get()
    data = load_dataset(storage.require(storage.dataset, "training_dataset"), config)

    fingerprints = {f"tensors/{d}": content_hash(storage.tensors(d)) for d in config.data.dates}
    fingerprints |= {f"returns/{d}": content_hash(storage.returns(d)) for d in config.data.dates}
    fingerprints["dataset"] = content_hash(storage.dataset)
    provenance = {
        "bmlt.config": config.name,
        "bmlt.partition_range": f"{config.data.start_date}..{config.data.end_date}",
        "bmlt.data_fingerprint": combined_hash(fingerprints),
        "bmlt.git_commit": git_commit(),
    }
    mlflow.set_tags(provenance)
    mlflow.log_params(flatten(config.model_dump(mode="json")))
    mlflow.log_dict(config.model_dump(mode="json"), "config/resolved.yaml")
    mlflow.log_dict(fingerprints, "data/fingerprints.json")
    mlflow.log_dict(package_versions(), "environment/packages.json")

    def epoch_logger(prefix: str) -> Callable[[EpochRecord], None]:
        def on_epoch(record: EpochRecord) -> None:
            metrics = {"train_loss": record.train_loss, "val_log_loss": record.val_log_loss, "samples_per_s": record.samples_per_s}
            metrics |= {f"val_accuracy_{h}s": a for h, a in zip(config.labels.horizons_s, record.val_accuracy)}
            mlflow.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step=record.epoch)
            context.log.info(
                f"{prefix}epoch {record.epoch}: train loss {record.train_loss:.4f}, val log loss {record.val_log_loss:.4f}, "
                f"val accuracy {[round(a, 4) for a in record.val_accuracy]}, {record.samples_per_s:.0f} samples/s"
            )

        return on_epoch

    tuning = None
    if config.hpo.enabled:
        study_dir = storage.root / "hpo"
        study_dir.mkdir(parents=True, exist_ok=True)
        tuning = tune(config, data, f"sqlite:///{study_dir / 'optuna.db'}", MlflowTrialLogger())
        context.log.info(f"HPO: best validation log loss {tuning.best_value:.4f} with {tuning.best_params}")
        mlflow.log_params({f"hpo.best.{k}": v for k, v in tuning.best_params.items()})
        mlflow.log_metrics({"hpo_best_val_log_loss": tuning.best_value, "hpo_trials": tuning.trials, "hpo_pruned": tuning.pruned})
        config = with_params(config, tuning.best_params)  # the final model trains with the best trial's values
        mlflow.log_dict(config.model_dump(mode="json"), "config/trained_with.yaml")
    # Walk-forward: one model per earlier fold, for the evaluation's performance over time; the
    # latest fold's model (trained on the most data) is the one logged and registered.
    dataset_dir = storage.dataset
    earlier = []
    for k in range(fold_count(config) - 1):
        fold = load_dataset(dataset_dir, config, fold=k)
        fold_model = train(config, fold, epoch_logger(f"fold{k}_")).model
        earlier.append((fold, fold_model, _temperatures(fold_model, fold)))
    # Checkpointed every epoch: a killed run, materialized again, resumes where it stopped.
    resume_state = storage.root / "training-checkpoint.pt"
    result = train(config, data, epoch_logger(""), resume_state)
    if result.resumed_from:
        context.log.warning(f"resumed training from the checkpoint of epoch {result.resumed_from}")
        mlflow.set_tag("bmlt.resumed_from_epoch", str(result.resumed_from))
    # Temperature scaling on the purged validation part, one scalar per head; the logged model
    # applies it, so what serves is the calibrated model.
    temperatures = _temperatures(result.model, data)
    mlflow.log_metrics({f"temperature_{h}s": t for h, t in zip(config.labels.horizons_s, temperatures)})
    spec = {
        "model": config.model.model_dump(mode="json"),
        "levels": data.shape[1],
        "symbols": data.symbols,
        "target": data.target,
        "horizons_s": config.labels.horizons_s,
        "n_classes": data.n_classes,
        "window_steps": config.dataset.window_steps,
        "cadence_ms": config.data.cadence_ms,
        "temperatures": temperatures,
    }
    with atomic_directory(storage.model) as staging:
        save_checkpoint(staging / CHECKPOINT, result.model, data.source.normalizer, spec)
        for k, (fold, fold_model, fold_temperatures) in enumerate(earlier):
            (staging / f"fold{k}").mkdir()
            save_checkpoint(staging / f"fold{k}" / CHECKPOINT, fold_model, fold.source.normalizer, spec | {"temperatures": fold_temperatures})
        write_json({"spec": spec, "best_epoch": result.best_epoch}, staging / "meta.json")
    resume_state.unlink(missing_ok=True)  # the model is safely stored: the next run starts afresh

    example = _input_example(data)
    checkpoint = storage.model / CHECKPOINT
    info = pyfunc.log_model(
        name="model",
        python_model=OrderBookPyfunc(),
        artifacts={"checkpoint": str(checkpoint)},
        signature=infer_signature(example, OrderBookPyfunc().load(checkpoint).predict(None, example)),
        input_example=example,
        registered_model_name=config.registered_model_name,
    )
    client = MlflowClient()
    version = str(info.registered_model_version)
    client.set_registered_model_alias(config.registered_model_name, CHALLENGER, version)
    for key, value in {**provenance, "dagster_run_id": context.run.run_id}.items():
        client.set_model_version_tag(config.registered_model_name, version, key, value)
    write_json(
        {"spec": spec, "best_epoch": result.best_epoch, "mlflow_run_id": info.run_id, "model_uri": info.model_uri, "registered_version": version},
        storage.model / "meta.json",
    )
    history = [
        {"epoch": r.epoch, "train_loss": r.train_loss, "val_log_loss": r.val_log_loss, "samples_per_s": r.samples_per_s}
        for r in result.history
    ]
    hpo_metadata = {}
    if tuning is not None:
        hpo_metadata = {
            "hpo_best_val_log_loss": tuning.best_value,
            "hpo_best_params": dg.MetadataValue.json(tuning.best_params),
            "hpo_trials": tuning.trials,
            "hpo_pruned": tuning.pruned,
            "hpo_importances": dg.MetadataValue.json(tuning.importances or "fewer than 4 complete trials"),
        }
    return dg.MaterializeResult(
        metadata={
            **hpo_metadata,
            "parameters": parameter_count(result.model),
            "best_epoch": result.best_epoch,
            "temperatures": dg.MetadataValue.json(temperatures),
            "best_val_log_loss": float(min(r.val_log_loss for r in result.history)),
            "mlflow_run_id": info.run_id,
            "registered_model": f"{config.registered_model_name} v{version} @{CHALLENGER}",
            "history": dg.MetadataValue.md(markdown_table(history)),
        }
    )


def _temperatures(model, data: TrainingData) -> list[float]:
    val = data.parts["val"]
    logits = predict_logits(model, data, val.steps)
    return [fit_temperature(logits[:, h], val.classes[:, h]) for h in range(len(data.horizons))]


def _input_example(data: TrainingData, n: int = 2) -> dict[str, np.ndarray]:
    steps = data.parts["test"].steps[:n]
    index = steps[:, None] + np.arange(1 - data.source.window, 1)
    return {
        "book": np.asarray(data.source.base[index], dtype=np.float32),
        "mids": np.asarray(data.source.mids[index], dtype=np.float64),
        "timestamp_ns": np.asarray(data.source.timestamps[steps], dtype=np.int64),
    }
