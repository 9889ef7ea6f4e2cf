"""Trial workers on one tuning study (``hpo.workers`` > 1):

    bmlt tune-worker --config CONFIG --study NAME

The training workflow creates the study and queues its trials (``core.tuning.prepare_study``),
starts ``hpo.workers`` of these processes and waits for them. More can be started on other
machines or pods against the same database (``hpo.storage: database``): they share the queue,
and none runs a trial twice. A worker loads the training dataset from storage itself, claims
queued trials until none is left, and logs each as a nested MLflow run of the step's run (its id
is kept in the study). It builds its storage from the config alone (``StorageResource.for_config``),
as the step's own is built.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Callable

import optuna
from mlflow import MlflowClient

from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.dataset import load_dataset
from bmlt_assets.core.tuning import (
    StudyOrigin,
    TuningResult,
    describe_storage,
    join_study,
    prepare_study,
    run_queued_trials,
    study_storage,
    trial_objective,
    tuning_result,
)
from bmlt_resources.kubernetes import run_job, worker_job
from bmlt_resources.mlflow import MlflowTrialLogger
from bmlt_resources.storage import StorageResource


def tune_with_workers(
    config: PlatformConfig,
    config_path: str,
    storage: StorageResource,
    name: str,
    origin: StudyOrigin,
    log: Callable[[str], None],
) -> TuningResult:
    """The study created once and its trials queued, then run by ``hpo.workers`` local worker processes."""
    study = prepare_study(config, study_storage(config.hpo, storage.hpo), name, origin)
    queued = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    log(
        f"HPO study {name} in {describe_storage(config.hpo, storage.hpo)}: {queued} queued trial(s) for "
        f"{config.hpo.workers} worker processes; more may join: bmlt tune-worker --config {config_path} --study {name}"
    )
    if config.hpo.launcher == "kubernetes":
        run_job(tune_worker_job(config, config_path, name))
    else:
        run_workers(config_path, name, config.hpo.workers)
    return tuning_result(study, config.hpo)


def tune_worker_job(config: PlatformConfig, config_path: str, name: str) -> dict:
    """The Kubernetes Job of ``hpo.workers`` tune-worker pods on study ``name`` (hpo.launcher kubernetes)."""
    command = ["bmlt", "tune-worker", "--config", config_path, "--study", name]
    job = re.sub(r"[^a-z0-9-]", "-", f"bmlt-tune-{name.lower()}")[:52].rstrip("-") + f"-{uuid.uuid4().hex[:6]}"
    labels = {"app.kubernetes.io/name": "bmlt", "app.kubernetes.io/component": "tune-worker"}
    env = {"BMLT_CONFIG": config_path}
    return worker_job(job, config.deployment.tune_worker_pods, command, env, config.hpo.workers, labels)


def run_workers(config_path: str, name: str, count: int) -> None:
    """``count`` ``bmlt tune-worker`` processes, waited for; their output joins this process's
    (a Dagster step's log). Stopping this process stops them."""
    command = [sys.executable, "-m", "bmlt_assets.cli", "tune-worker", "--config", config_path, "--study", name]
    workers = [subprocess.Popen(command) for _ in range(count)]
    try:
        codes = [worker.wait() for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait()
    failed = [code for code in codes if code != 0]
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {count} tune-worker process(es) failed (exit codes {failed}); "
            "their errors are in this step's log above"
        )


def run_worker(config: PlatformConfig, name: str) -> int:
    """Join study ``name`` and run its queued trials until none is left; how many this worker ran."""
    storage = StorageResource.for_config(config)  # the same storage as the step's: both come from the config
    optuna_storage = study_storage(config.hpo, storage.hpo)
    study, origin = join_study(config, optuna_storage, name)
    data = load_dataset(storage.require(storage.dataset, "training_dataset"), config, fold=origin.fold)
    logger = MlflowTrialLogger(MlflowClient(config.tracking_uri), origin.mlflow_parent_run_id)
    return run_queued_trials(study, optuna_storage, trial_objective(config, data, logger), config.hpo.timeout_s)
