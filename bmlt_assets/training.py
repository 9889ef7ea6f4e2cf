"""trained_model: the CNN+LSTM trained on training_dataset, logged and registered in MLflow."""

from collections.abc import Callable
from dataclasses import asdict, replace

import dagster as dg

from bmlt_assets.core.calibration import Calibration, validation_calibration
from bmlt_assets.core.checkpoint import CHECKPOINT, input_example, model_spec, save_checkpoint
from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.dataset import TrainingData, fold_count, load_dataset
from bmlt_assets.core.files import StoredPath, is_remote, storage_root, write_json
from bmlt_assets.core.models import parameter_count
from bmlt_assets.core.train import EpochRecord, TrainResult, epoch_metrics, load_result, train
from bmlt_assets.core.tuning import StudyOrigin, TuningResult, study_name, study_storage, tune, with_params
from bmlt_assets.core.walk_forward import save_fold_checkpoints, train_earlier_folds
from bmlt_assets.dataset import training_dataset
from bmlt_assets.metadata import markdown_table
from bmlt_assets.provenance import combined_hash, content_hash, flatten, git_commit, image, package_versions
from bmlt_assets.training_worker import MLFLOW_RUN_ID, TrainingJob
from bmlt_assets.tuning_worker import hpo_folder, tune_with_workers
from bmlt_resources.mlflow import CHALLENGER, MlflowTrialLogger, RegisteredModel, TrackedMlflow
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
    config = settings.get()
    dataset_dir = storage.require(storage.dataset, "training_dataset")
    data = load_dataset(dataset_dir, config)
    provenance = _log_inputs(mlflow, config, storage)
    fingerprint = provenance["bmlt.data_fingerprint"]
    log_epochs = _epoch_logger(mlflow, config)
    tunings: dict[int, TuningResult] = {}

    def configure(fold: int, fold_data: TrainingData) -> PlatformConfig:
        """The fold's config; with tuning, its best trial's values, from its own train/val parts."""
        if not config.hpo.enabled:
            return config
        name, parent_run_id = study_name(config, fingerprint, fold), mlflow.active_run().info.run_id
        if config.hpo.workers == 1 and config.hpo.launcher == "local":
            trials = MlflowTrialLogger(mlflow.tracking_client, parent_run_id)
            study = study_storage(config.hpo, hpo_folder(storage))
            tunings[fold] = tune(config, fold_data, study, trials, name)
        else:  # worker processes (bmlt tune-worker) load the fold's data themselves
            origin = StudyOrigin(config.name, fold, fingerprint, parent_run_id)
            tunings[fold] = tune_with_workers(config, settings.config_path, storage, name, origin, context.log.info)
        return _log_tuning(context, mlflow, config, tunings[fold], fold)

    latest = fold_count(config) - 1

    def fit(
        fold: int, fold_config: PlatformConfig, fold_data: TrainingData, resume: StoredPath | None = None
    ) -> tuple[TrainResult, dict]:
        """A fold's model, trained here or by torchrun's ranks (training.launcher), and what the
        ranks reported through Pipes."""
        prefix = "" if fold == latest else f"fold{fold}_"
        if fold_config.training.launcher == "inprocess":
            return train(fold_config, fold_data, log_epochs(prefix), resume, data_fingerprint=fingerprint), {}
        # With s3:// storage the ranks (maybe pods on other nodes) read the dataset from the store.
        dataset = storage.dataset if is_remote(storage.dataset) else dataset_dir
        handed_back = str(storage.store / "training-result.pt")
        job = TrainingJob(
            fold_config.model_dump_json(), str(dataset), fold, handed_back, str(resume or ""), fingerprint, prefix
        )
        job = replace(job, storage_endpoint=storage.endpoint_url, cache_dir=storage.local_dir)
        return _train_with_torchrun(context, torchrun, mlflow, job, fold_config, fold_data)

    earlier = train_earlier_folds(config, dataset_dir, configure, lambda k, c, d: fit(k, c, d)[0].model)
    config = configure(latest, data)
    # Checkpointed every epoch where the partitions are (the object store with s3://): a killed or
    # preempted run resumes, on any machine.
    resume_state = storage.store / "training-checkpoint.pt"
    result, reported = fit(latest, config, data, resume_state)
    mlflow.set_tags(
        {"bmlt.device": result.device, "bmlt.precision": result.fast_path.precision}
        | {"bmlt.channels_last": str(result.fast_path.channels_last)}
    )
    mlflow.log_metric("train_samples_per_s", result.samples_per_s)
    if result.resumed_from:
        context.log.warning(f"resumed training from the checkpoint of epoch {result.resumed_from}")
        mlflow.set_tag("bmlt.resumed_from_epoch", str(result.resumed_from))
    # Temperature and class bias fitted on the purged validation part; the logged model applies them.
    calibration = validation_calibration(result.model, data)
    mlflow.log_metrics({f"temperature_{h}s": c.temperature for h, c in zip(config.labels.horizons_s, calibration)})
    spec = model_spec(config, data, calibration)
    tags = {**provenance, "dagster_run_id": context.run.run_id}
    # Registered before the commit, so that a committed model folder always names its registry entry.
    with storage.commit(storage.model) as staging:
        save_checkpoint(staging / CHECKPOINT, result.model, data.source.normalizer, spec)
        save_fold_checkpoints(staging, earlier)
        registered = mlflow.register_challenger(
            config.registered_model_name, staging / CHECKPOINT, input_example(data), tags, _description(config)
        )
        write_json(
            {
                "spec": spec,
                "best_epoch": result.best_epoch,
                "mlflow_run_id": registered.run_id,
                "model_uri": registered.model_uri,
                "registered_version": registered.version,
            },
            staging / "meta.json",
        )
    resume_state.unlink(missing_ok=True)  # the model is safely stored: the next run starts afresh
    return dg.MaterializeResult(metadata=_metadata(result, calibration, registered, tunings.get(latest)) | reported)


def _train_with_torchrun(
    context: dg.AssetExecutionContext,
    launcher: TorchrunLauncher,
    mlflow: TrackedMlflow,
    job: TrainingJob,
    config: PlatformConfig,
    data: TrainingData,
) -> tuple[TrainResult, dict]:
    """``job`` trained by torchrun's ranks (bmlt_assets.training_worker): rank 0 logs the epochs
    into this step's MLflow run and writes the result that is read back here."""
    t = config.training
    env = {"MLFLOW_TRACKING_URI": mlflow.tracking_uri, MLFLOW_RUN_ID: mlflow.active_run().info.run_id}
    context.log.info(f"training with torchrun: {t.nnodes} node(s) of {t.nproc_per_node} rank(s), backend {t.backend}")
    invocation = launcher.launch(context, ["-m", "bmlt_assets.training_worker", job.to_json()], env, t)
    reported = dict(invocation.get_materialize_result().metadata)
    handed_back = storage_root(job.result_path, job.storage_endpoint)
    result = load_result(handed_back, config, data)
    handed_back.unlink()
    return result, reported


def _log_inputs(mlflow: TrackedMlflow, config: PlatformConfig, storage: StorageResource) -> dict[str, str]:
    """Config, data fingerprints and environment into the MLflow run; returns the provenance tags."""
    fingerprints = {f"tensors/{d}": content_hash(storage.tensors(d)) for d in config.data.dates}
    fingerprints |= {f"returns/{d}": content_hash(storage.returns(d)) for d in config.data.dates}
    fingerprints["dataset"] = content_hash(storage.dataset)
    provenance = {
        "bmlt.config": config.name,
        "bmlt.partition_range": f"{config.data.start_date}..{config.data.end_date}",
        "bmlt.data_fingerprint": combined_hash(fingerprints),
        "bmlt.git_commit": git_commit(),
    } | ({"bmlt.image": image()} if image() else {})
    mlflow.set_tags(provenance)
    mlflow.log_params(flatten(config.model_dump(mode="json")))
    mlflow.log_dict(config.model_dump(mode="json"), "config/resolved.yaml")
    mlflow.log_dict(fingerprints, "data/fingerprints.json")
    mlflow.log_dict(package_versions(), "environment/packages.json")
    return provenance


def _epoch_logger(mlflow: TrackedMlflow, config: PlatformConfig) -> Callable[[str], Callable[[EpochRecord], None]]:
    """Epoch metrics into MLflow (the epoch's log line comes from core.train)."""

    def for_prefix(prefix: str) -> Callable[[EpochRecord], None]:
        def on_epoch(record: EpochRecord) -> None:
            metrics = epoch_metrics(record, config.labels.horizons_s)
            mlflow.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step=record.epoch)

        return on_epoch

    return for_prefix


def _log_tuning(
    context: dg.AssetExecutionContext, mlflow: TrackedMlflow, config: PlatformConfig, tuning: TuningResult, fold: int
) -> PlatformConfig:
    """The best trial's values for a fold, logged; the latest fold's unprefixed (the registered model's)."""
    latest = fold == fold_count(config) - 1
    prefix = "" if latest else f"fold{fold}_"
    context.log.info(
        f"HPO {prefix or 'latest fold'}: best validation log loss {tuning.best_value:.4f} with {tuning.best_params}"
    )
    mlflow.log_params({f"hpo.{prefix}best.{k}": v for k, v in tuning.best_params.items()})
    mlflow.log_metrics(
        {
            f"{prefix}hpo_best_val_log_loss": tuning.best_value,
            f"{prefix}hpo_trials": tuning.trials,
            f"{prefix}hpo_pruned": tuning.pruned,
        }
    )
    tuned = with_params(config, tuning.best_params)
    mlflow.log_dict(tuned.model_dump(mode="json"), f"config/{prefix}trained_with.yaml")
    return tuned


def _metadata(
    result: TrainResult, calibration: list[Calibration], registered: RegisteredModel, tuning: TuningResult | None
) -> dict:
    history = [
        {"epoch": r.epoch, "train_loss": r.train_loss, "val_log_loss": r.val_log_loss, "samples_per_s": r.samples_per_s}
        for r in result.history
    ]
    metadata = {
        "parameters": parameter_count(result.model),
        "best_epoch": result.best_epoch,
        "calibration": dg.MetadataValue.json([asdict(head) for head in calibration]),
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
    if tuning is not None:
        metadata |= {
            "hpo_best_val_log_loss": tuning.best_value,
            "hpo_best_params": dg.MetadataValue.json(tuning.best_params),
            "hpo_trials": tuning.trials,
            "hpo_pruned": tuning.pruned,
            "hpo_importances": dg.MetadataValue.json(tuning.importances or "fewer than 4 complete trials"),
        }
    return metadata


def _description(config: PlatformConfig) -> str:
    return (
        f"DeepLOB-family classifier of {config.target} price moves {config.labels.horizons_s} s ahead "
        f"({config.labels.n_classes} {config.labels.edges} classes), reading {', '.join(config.data.symbols)} "
        f"{config.representation.kind} books; trained by bmlt on config {config.name!r}, "
        f"data {config.data.start_date}..{config.data.end_date} ({config.data.source})."
    )
