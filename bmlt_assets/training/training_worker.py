"""The torchrun worker of ``trained_model`` (``training.launcher: torchrun``):

    python -m torch.distributed.run --standalone --nproc_per_node N -m bmlt_assets.training.training_worker JOB

Framework-light: the training is core's (``core.train.train``, given this rank's ``Replicas``);
``dagster_pipes`` (a small package without dependencies) reports to the Dagster step that
launched it, and the MLflow client logs every epoch into that step's MLflow run
(``MLFLOW_TRACKING_URI`` and ``MLFLOW_RUN_ID`` in the environment). Rank 0 alone writes the
result, logs and reports. At the end every rank's weights are compared: replicas that drifted
apart fail the run instead of registering one rank's model silently.

JOB is a :class:`TrainingJob` as JSON. It travels on the command line rather than in the Pipes
context because every rank needs it and only rank 0 opens Pipes. Run outside Dagster (no Pipes
context, no MLflow run), the worker trains and writes its result all the same.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from dagster_pipes import PipesContext, PipesEnvVarParamsLoader, open_dagster_pipes

from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.dataset import load_dataset
from bmlt_assets.core.distributed import Replicas, join, leave
from bmlt_assets.core.files import is_remote, stage, storage_root
from bmlt_assets.core.train import EpochRecord, epoch_metrics, save_result, train

MLFLOW_RUN_ID = "MLFLOW_RUN_ID"
log = logging.getLogger("bmlt_assets.training.training_worker")  # by name: run with -m, __name__ is __main__


@dataclass(frozen=True)
class TrainingJob:
    config_json: str  # the validated config (with HPO, the tuned one)
    dataset_dir: str
    fold: int  # of the saved dataset; -1 is the latest
    result_path: str  # where rank 0 writes core.train.save_result's file
    resume_path: str  # rank 0's per-epoch resumable state (core.train's ``checkpoint``); "": none
    data_fingerprint: str
    metric_prefix: str = ""  # of the MLflow metrics: "fold<k>_" for an earlier walk-forward fold
    # With storage.uri s3://, the paths above are in the object store (pods on other nodes reach
    # it): its endpoint, and where a remote dataset is staged on the rank's machine.
    storage_endpoint: str | None = None
    cache_dir: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainingJob:
        return cls(**json.loads(text))


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit(f"usage: python -m torch.distributed.run ... -m {__spec__.name} JOB_JSON")
    job = TrainingJob.from_json(argv[0])
    config = PlatformConfig.model_validate_json(job.config_json)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(
        level=logging.INFO if main_rank else logging.WARNING,
        format=f"%(asctime)s rank {os.environ.get('RANK', '0')} %(levelname)s %(name)s: %(message)s",
    )
    # Rank 0 opens Pipes before anything can fail, so that Dagster receives the failure itself.
    launched_by_dagster = main_rank and PipesEnvVarParamsLoader().is_dagster_pipes_process()
    with open_dagster_pipes() if launched_by_dagster else nullcontext(None) as pipes:
        replicas = join(config.training.backend)
        try:
            _train(job, config, replicas, pipes)
        finally:
            leave()


def _train(job: TrainingJob, config: PlatformConfig, replicas: Replicas, pipes: PipesContext | None) -> None:
    dataset = storage_root(job.dataset_dir, job.storage_endpoint)
    if is_remote(dataset):  # every rank stages it (one download per machine: staged copies are shared)
        dataset = stage(dataset, Path(job.cache_dir or tempfile.gettempdir()) / "staged")
    data = load_dataset(dataset, config, fold=job.fold)
    on_epoch = _epoch_reporter(config, job.metric_prefix, pipes) if replicas.is_main else _ignore
    resume = storage_root(job.resume_path, job.storage_endpoint) if job.resume_path else None
    result = train(config, data, on_epoch, resume, job.data_fingerprint, replicas)
    digests = replicas.digests(result.model)
    if len(set(digests)) != 1:
        raise RuntimeError(f"the replicas' weights differ after training (SHA-256 per rank: {digests})")
    if not replicas.is_main:
        return
    save_result(result, storage_root(job.result_path, job.storage_endpoint))
    log.info("%s rank(s) on %s trained identical weights %s", replicas.world_size, replicas.backend, digests[0][:12])
    if pipes is not None:
        pipes.report_asset_materialization(
            metadata={
                "ddp_world_size": replicas.world_size,
                "ddp_backend": replicas.backend,
                "ddp_sync_batchnorm": replicas.backend == "nccl",
                "ddp_rank_weight_digests": {"raw_value": digests, "type": "json"},
                "ddp_train_samples_per_s": result.history[-1].samples_per_s if result.history else 0.0,
            }
        )


def _ignore(record: EpochRecord) -> None:
    return None


def _epoch_reporter(config: PlatformConfig, prefix: str, pipes: PipesContext | None) -> Callable[[EpochRecord], None]:
    """Rank 0's epoch: metrics into the step's MLflow run, a line into the Dagster step's log."""
    run_id = os.environ.get(MLFLOW_RUN_ID)
    if run_id:
        from mlflow import MlflowClient  # only rank 0 of a tracked run pays for importing MLflow
        from mlflow.entities import Metric

        client = MlflowClient()  # MLFLOW_TRACKING_URI, and the server's credentials, from the environment

    def on_epoch(record: EpochRecord) -> None:
        metrics = epoch_metrics(record, config.labels.horizons_s)
        if run_id:
            now = int(time.time() * 1000)
            entries = [Metric(f"{prefix}{name}", value, now, record.epoch) for name, value in metrics.items()]
            client.log_batch(run_id, metrics=entries)
        if pipes is not None:
            pipes.log.info(
                f"{prefix}epoch {record.epoch}: train loss {record.train_loss:.4f}, val log loss "
                f"{record.val_log_loss:.4f}, {record.samples_per_s:.0f} samples/s"
            )

    return on_epoch


if __name__ == "__main__":
    main(sys.argv[1:])
