"""The workflow behind ``trained_model``, as plain functions that run and are tested without Dagster.

:func:`fit` trains the model a config registers, from its saved dataset:

1. walk-forward (``dataset.split: walk_forward``): a calibrated model for every earlier fold, each
   tuned on its own training and validation parts only (nested walk-forward);
2. the latest fold: tuned (``hpo.enabled``: in this process, or by ``hpo.workers`` worker processes
   sharing one study), trained in this process or by torchrun's ranks (``training.launcher``),
   resumable from the state it saves every epoch, then calibrated on validation.

Everything is logged into one MLflow run, a :class:`~bmlt_resources.mlflow.RunTracker`: the
inputs (:func:`log_inputs`), every epoch, each fold's best trial and each trial as a nested run.
:func:`commit_model` then stores the checkpoints and registers the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bmlt_assets.core.calibration import Calibration, validation_calibration
from bmlt_assets.core.checkpoint import CHECKPOINT, ModelMeta, input_example, model_spec, save_checkpoint
from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.dataset import TrainingData, fold_count, load_dataset
from bmlt_assets.core.files import StoredPath, is_remote, storage_root
from bmlt_assets.core.models import OrderBookClassifier
from bmlt_assets.core.train import EpochRecord, TrainResult, epoch_metrics, load_result, train
from bmlt_assets.core.tuning import StudyOrigin, TuningResult, study_name, study_storage, tune, with_params
from bmlt_assets.core.walk_forward import FoldModel, save_fold_checkpoints, train_earlier_folds
from bmlt_assets.provenance import combined_hash, content_hash, flatten, git_commit, image, package_versions
from bmlt_assets.training import training_worker
from bmlt_assets.training.training_worker import MLFLOW_RUN_ID, TrainingJob
from bmlt_assets.training.tuning_worker import tune_with_workers
from bmlt_resources.mlflow import RegisteredModel, RunTracker
from bmlt_resources.storage import StorageResource
from bmlt_resources.torchrun import Launch

logger = logging.getLogger(__name__)
DATA_FINGERPRINT = "bmlt.data_fingerprint"  # the provenance tag that names the training data


@dataclass(frozen=True)
class Fitted:
    """A trained, calibrated model of the latest fold, and what it took to get there."""

    config: PlatformConfig  # the latest fold's config, with its tuned values
    data: TrainingData  # the latest fold
    result: TrainResult
    calibration: list[Calibration]  # per head, fitted on the purged validation part
    earlier: list[FoldModel]  # walk-forward: every earlier fold's model, oldest first
    tuning: TuningResult | None  # the latest fold's search (hpo.enabled)
    reported: dict[str, Any]  # what torchrun's rank 0 reported (nothing when trained in this process)


def fit(
    config: PlatformConfig,
    dataset_dir: Path,
    *,
    tracker: RunTracker,
    storage: StorageResource,
    launcher: Launch | None = None,
    data_fingerprint: str = "",
    config_path: str = "",
    log: Callable[[str], None] = logger.info,
) -> Fitted:
    """Every fold's model trained on the dataset at ``dataset_dir`` (see the module doc).

    ``launcher`` runs torchrun (``training.launcher: torchrun``); ``data_fingerprint`` names the
    data (tuning studies and the resume state are kept per data); ``config_path`` is the config
    file that tuning worker processes load (``hpo.workers`` > 1)."""
    run = _Run(config, dataset_dir, tracker, storage, launcher, data_fingerprint, config_path, log)
    earlier = train_earlier_folds(config, dataset_dir, run.configure, run.model_of_fold)
    latest, data = fold_count(config) - 1, load_dataset(dataset_dir, config)
    tuned = run.configure(latest, data)
    result, reported = run.train(latest, tuned, data, resume=storage.training_state)
    tracker.set_tags(
        {"bmlt.device": result.device, "bmlt.precision": result.fast_path.precision}
        | {"bmlt.channels_last": str(result.fast_path.channels_last)}
        | ({"bmlt.resumed_from_epoch": str(result.resumed_from)} if result.resumed_from else {})
    )
    tracker.log_metrics({"train_samples_per_s": result.samples_per_s})
    # Temperature and class bias fitted on the purged validation part; the logged model applies them.
    calibration = validation_calibration(result.model, data)
    tracker.log_metrics({f"temperature_{h}s": c.temperature for h, c in zip(config.labels.horizons_s, calibration)})
    return Fitted(tuned, data, result, calibration, earlier, run.tunings.get(latest), reported)


@dataclass
class _Run:
    """One fit's settings, and the tuning results it gathers fold by fold."""

    config: PlatformConfig
    dataset_dir: Path
    tracker: RunTracker
    storage: StorageResource
    launcher: Launch | None
    data_fingerprint: str
    config_path: str
    log: Callable[[str], None]
    tunings: dict[int, TuningResult] = field(default_factory=dict)

    def configure(self, fold: int, data: TrainingData) -> PlatformConfig:
        """The fold's config; with tuning, its best trial's values, found on the fold's own training
        and validation parts, which precede its test part."""
        config = self.config
        if not config.hpo.enabled:
            return config
        name = study_name(config, self.data_fingerprint, fold)
        if config.hpo.workers == 1 and config.hpo.launcher == "local":
            study = study_storage(config.hpo, self.storage.hpo)
            tuning = tune(config, data, study, self.tracker.trial_logger(), name)
        else:  # worker processes or pods (bmlt tune-worker) load the fold's data themselves
            origin = StudyOrigin(config.name, fold, self.data_fingerprint, self.tracker.run_id)
            tuning = tune_with_workers(config, self.config_path, self.storage, name, origin, self.log)
        self.tunings[fold] = tuning
        return log_tuning(self.tracker, config, tuning, fold, self.log)

    def train(
        self, fold: int, config: PlatformConfig, data: TrainingData, resume: StoredPath | None = None
    ) -> tuple[TrainResult, dict[str, Any]]:
        """A fold's model, trained here or by torchrun's ranks (``training.launcher``), and what the
        ranks reported."""
        prefix = metric_prefix(config, fold)
        if config.training.launcher == "inprocess":
            on_epoch = epoch_logger(self.tracker, config, prefix)
            return train(config, data, on_epoch, resume, data_fingerprint=self.data_fingerprint), {}
        # With s3:// storage the ranks (maybe pods on other nodes) read the dataset from the store.
        dataset = self.storage.dataset if is_remote(self.storage.dataset) else self.dataset_dir
        job = TrainingJob(
            config_json=config.model_dump_json(),
            dataset_dir=str(dataset),
            fold=fold,
            result_path=str(self.storage.handed_back),
            resume_path=str(resume or ""),
            data_fingerprint=self.data_fingerprint,
            metric_prefix=prefix,
            storage_endpoint=self.storage.endpoint_url,
            cache_dir=self.storage.local_dir,
        )
        return train_with_torchrun(job, config, data, self.launcher, self.tracker, self.log)

    def model_of_fold(self, fold: int, config: PlatformConfig, data: TrainingData) -> OrderBookClassifier:
        return self.train(fold, config, data)[0].model


def metric_prefix(config: PlatformConfig, fold: int) -> str:
    """The MLflow names of an earlier fold's numbers start with ``fold<k>_``; the latest fold's
    (the registered model's) have none."""
    return "" if fold == fold_count(config) - 1 else f"fold{fold}_"


def train_with_torchrun(
    job: TrainingJob,
    config: PlatformConfig,
    data: TrainingData,
    launcher: Launch | None,
    tracker: RunTracker,
    log: Callable[[str], None],
) -> tuple[TrainResult, dict[str, Any]]:
    """``job`` trained by torchrun's ranks (``training_worker``): rank 0 logs the epochs into the
    tracker's run and writes the result that is read back here."""
    if launcher is None:
        raise ValueError("training.launcher is torchrun, but no launcher was given to run it")
    t = config.training
    env = {"MLFLOW_TRACKING_URI": tracker.client.tracking_uri, MLFLOW_RUN_ID: tracker.run_id}
    log(f"training with torchrun: {t.nnodes} node(s) of {t.nproc_per_node} rank(s), backend {t.backend}")
    reported = launcher(["-m", training_worker.__name__, job.to_json()], env, t)
    handed_back = storage_root(job.result_path, job.storage_endpoint)
    result = load_result(handed_back, config, data)
    handed_back.unlink()
    return result, reported


def epoch_logger(tracker: RunTracker, config: PlatformConfig, prefix: str) -> Callable[[EpochRecord], None]:
    """Epoch metrics into the run (the epoch's log line comes from core.train)."""

    def on_epoch(record: EpochRecord) -> None:
        metrics = epoch_metrics(record, config.labels.horizons_s)
        tracker.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step=record.epoch)

    return on_epoch


def log_tuning(
    tracker: RunTracker, config: PlatformConfig, tuning: TuningResult, fold: int, log: Callable[[str], None]
) -> PlatformConfig:
    """The best trial's values for a fold, logged; returns the config with them."""
    prefix = metric_prefix(config, fold)
    log(f"HPO {prefix or 'latest fold'}: best validation log loss {tuning.best_value:.4f} with {tuning.best_params}")
    tracker.log_params({f"hpo.{prefix}best.{k}": v for k, v in tuning.best_params.items()})
    tracker.log_metrics(
        {
            f"{prefix}hpo_best_val_log_loss": tuning.best_value,
            f"{prefix}hpo_trials": tuning.trials,
            f"{prefix}hpo_pruned": tuning.pruned,
        }
    )
    tuned = with_params(config, tuning.best_params)
    tracker.log_dict(tuned.model_dump(mode="json"), f"config/{prefix}trained_with.yaml")
    return tuned


def log_inputs(tracker: RunTracker, config: PlatformConfig, storage: StorageResource) -> dict[str, str]:
    """Config, data fingerprints and environment into the run; returns the provenance tags, the
    data's fingerprint under :data:`DATA_FINGERPRINT`."""
    fingerprints = {f"tensors/{d}": content_hash(storage.tensors(d)) for d in config.data.dates}
    fingerprints |= {f"returns/{d}": content_hash(storage.returns(d)) for d in config.data.dates}
    fingerprints["dataset"] = content_hash(storage.dataset)
    provenance = {
        "bmlt.config": config.name,
        "bmlt.partition_range": f"{config.data.start_date}..{config.data.end_date}",
        DATA_FINGERPRINT: combined_hash(fingerprints),
        "bmlt.git_commit": git_commit(),
    } | ({"bmlt.image": image()} if image() else {})
    tracker.set_tags(provenance)
    tracker.log_params(flatten(config.model_dump(mode="json")))
    tracker.log_dict(config.model_dump(mode="json"), "config/resolved.yaml")
    tracker.log_dict(fingerprints, "data/fingerprints.json")
    tracker.log_dict(package_versions(), "environment/packages.json")
    return provenance


# (the checkpoint to log, its scoring input example) -> where the registry put it
Register = Callable[[Path, dict[str, np.ndarray]], RegisteredModel]


def commit_model(storage: StorageResource, fitted: Fitted, register: Register) -> RegisteredModel:
    """The model folder committed: the latest checkpoint, the earlier folds' and meta.json. The
    model is registered inside the commit, so that a committed model folder always names its
    registry entry; then the resume state goes, as the model is safely stored."""
    spec = model_spec(fitted.config, fitted.data, fitted.calibration)
    with storage.commit(storage.model) as staging:
        save_checkpoint(staging / CHECKPOINT, fitted.result.model, fitted.data.source.normalizer, spec)
        save_fold_checkpoints(staging, fitted.earlier)
        registered = register(staging / CHECKPOINT, input_example(fitted.data))
        meta = ModelMeta(spec, fitted.result.best_epoch, registered.version, registered.run_id, registered.model_uri)
        meta.save(staging)
    storage.training_state.unlink(missing_ok=True)  # the next run starts afresh
    return registered


def describe(config: PlatformConfig) -> str:
    """The registered model's description."""
    return (
        f"DeepLOB-family classifier of {config.target} price moves {config.labels.horizons_s} s ahead "
        f"({config.labels.n_classes} {config.labels.edges} classes), reading {', '.join(config.data.symbols)} "
        f"{config.representation.kind} books; trained by bmlt on config {config.name!r}, "
        f"data {config.data.start_date}..{config.data.end_date} ({config.data.source})."
    )
