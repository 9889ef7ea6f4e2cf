"""Distributed tuning: one study, created once, its trials queued and shared by worker processes
on a journal file or a PostgreSQL database, none lost or run twice; the database URL only ever
comes from the environment."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import dagster as dg
import mlflow
import optuna
import pytest

from bmlt_assets.core.config import ConfigError, PlatformConfig, load_config
from bmlt_assets.core.tuning import (
    WORKER_ATTR,
    StudyOrigin,
    describe_storage,
    join_study,
    prepare_study,
    run_queued_trials,
    study_name,
    study_storage,
)
from bmlt_assets.definitions import INGEST_ASSETS, TRAINING_ASSETS, build_resources
from bmlt_assets.partitions import range_tags
from tests import cheap_tuning_worker
from tests.helpers import write_config
from tests.services import Postgres

SPACE = {
    "training.learning_rate": {"type": "categorical", "choices": [0.003, 0.01]},
    "model.lstm_hidden": {"type": "int", "low": 4, "high": 12, "step": 4},
}
HPO = {"enabled": True, "n_trials": 8, "pruner": "none", "trial_epochs": 1, "workers": 2, "search_space": SPACE}
SECRET = "hunter2"


def _config(tmp_path: Path, **hpo: object) -> PlatformConfig:
    return load_config(write_config(tmp_path, {"hpo": {**HPO, **hpo}}))


@pytest.mark.parametrize("kind", ["journal", "database"])
def test_two_worker_processes_share_one_study_without_losing_or_repeating_a_trial(
    tmp_path: Path, kind: str, postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "database":
        monkeypatch.setenv("OPTUNA_STORAGE_URL", postgres.create_database())  # the workers inherit it
    config = _config(tmp_path, storage=kind)
    storage = study_storage(config.hpo, tmp_path / "hpo")
    name = study_name(config, "data-a", 0)
    prepare_study(config, storage, name, StudyOrigin(config.name, 0, "data-a", "run-a"))  # once, before the workers

    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(2)
    job = (config.model_dump_json(), str(tmp_path / "hpo"), name, start)
    workers = [spawn.Process(target=cheap_tuning_worker.run, args=job) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]

    assert optuna.get_all_study_names(storage) == [name]  # created once, by prepare_study
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert sorted(t.number for t in trials) == list(range(8))  # unique numbers, none lost, none extra
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    ran_by = {t.user_attrs[WORKER_ATTR] for t in trials}
    assert len(ran_by) == 2 and not any(w.endswith(f":{os.getpid()}") for w in ran_by)  # both workers, not us

    # Resuming adds only what is missing, numbered after the others.
    more = config.model_copy(update={"hpo": config.hpo.model_copy(update={"n_trials": 10})})
    study = prepare_study(more, storage, name)
    assert run_queued_trials(study, storage, lambda trial: 1.0) == 2
    assert run_queued_trials(study, storage, lambda trial: 1.0) == 0  # the queue is empty: nothing extra
    assert sorted(t.number for t in study.trials) == list(range(10))


def test_a_worker_joins_only_a_prepared_study_of_its_own_config(tmp_path: Path) -> None:
    config = _config(tmp_path, storage="journal")
    storage = study_storage(config.hpo, tmp_path / "hpo")
    name = study_name(config, "data-a", 0)
    with pytest.raises(ConfigError, match="the trained_model step creates it"):
        join_study(config, storage, name)
    assert optuna.get_all_study_names(storage) == []  # a worker never creates a study
    prepare_study(config, storage, name, StudyOrigin(config.name, 0, "data-a", "run-a"))
    assert join_study(config, storage, name)[1].fold == 0
    other = _config(tmp_path, storage="journal", sampler_seed=5)  # trials would mean something else
    with pytest.raises(ConfigError, match="another config or search space"):
        join_study(other, storage, name)


def test_the_database_url_comes_only_from_the_environment_and_is_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="does not go in the config") as in_file:
        _config(tmp_path, storage=f"postgresql+psycopg2://bmlt:{SECRET}@db:5432/optuna")
    assert SECRET not in str(in_file.value)

    config = _config(tmp_path, storage="database", storage_url_env="BMLT_TEST_OPTUNA_URL")
    monkeypatch.delenv("BMLT_TEST_OPTUNA_URL", raising=False)
    with pytest.raises(ConfigError, match=r"\$BMLT_TEST_OPTUNA_URL, which is not set"):
        study_storage(config.hpo, tmp_path)
    monkeypatch.setenv("BMLT_TEST_OPTUNA_URL", f"postgresql://bmlt:{SECRET}@db:5432/optuna")
    with pytest.raises(ConfigError, match=r"postgresql\+psycopg2://") as no_driver:
        study_storage(config.hpo, tmp_path)
    assert SECRET not in str(no_driver.value)
    monkeypatch.setenv("BMLT_TEST_OPTUNA_URL", f"bmlt:{SECRET} at db")
    with pytest.raises(ConfigError, match="is not a database URL") as not_a_url:
        study_storage(config.hpo, tmp_path)
    assert SECRET not in str(not_a_url.value)
    monkeypatch.setenv("BMLT_TEST_OPTUNA_URL", f"postgresql+psycopg2://bmlt:{SECRET}@db:5432/optuna")
    shown = describe_storage(config.hpo, tmp_path)
    assert "db:5432/optuna" in shown and SECRET not in shown


def test_parallel_workers_need_a_storage_that_takes_parallel_writers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs storage journal"):
        _config(tmp_path, storage="sqlite", workers=2)
    assert _config(tmp_path, storage="sqlite", workers=1).hpo.workers == 1
    where = _config(tmp_path, storage="journal", workers=4)
    assert study_name(where, "data-a", 0) == study_name(_config(tmp_path, workers=1, storage="sqlite"), "data-a", 0)


@pytest.mark.slow  # the tiny pipeline with two worker processes that import everything: about a minute
def test_trained_model_tunes_with_tune_worker_processes_on_postgres(
    tmp_path: Path, postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres.create_database()
    monkeypatch.setenv("OPTUNA_STORAGE_URL", url)
    path = write_config(tmp_path, {"hpo": {**HPO, "n_trials": 3, "storage": "database"}})
    config = load_config(path)
    assets = INGEST_ASSETS + TRAINING_ASSETS
    instance = dg.DagsterInstance.ephemeral()
    tags = range_tags(config.data.start_date, config.data.end_date)
    resources = build_resources(path)
    assert dg.materialize(assets, selection=INGEST_ASSETS, resources=resources, instance=instance, tags=tags).success
    result = dg.materialize(assets, selection=TRAINING_ASSETS[:2], resources=resources, instance=instance)
    assert result.success
    metadata = result.asset_materializations_for_node("trained_model")[0].metadata
    assert metadata["hpo_trials"].value == 3

    (name,) = optuna.get_all_study_names(url)
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert sorted(t.number for t in trials) == [0, 1, 2]
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    assert not any(t.user_attrs[WORKER_ATTR].endswith(f":{os.getpid()}") for t in trials)  # run by tune-workers
    client = mlflow.MlflowClient(tracking_uri=config.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(config.mlflow.experiment).experiment_id])
    parents = {r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags}
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == parents
    assert sorted(r.data.tags["optuna.trial"] for r in children) == ["0", "1", "2"]
    assert {r.data.tags["optuna.state"] for r in children} == {"COMPLETE"}


def test_the_tuning_step_launches_its_workers_as_a_valid_kubernetes_job_with_the_study_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kubernetes_validate

    from bmlt_assets.cli import build_parser
    from bmlt_assets.core.config import PROJECT_ROOT
    from bmlt_assets.training.tuning_worker import tune_worker_job

    monkeypatch.setenv("BMLT_IMAGE", "registry.example.com/bmlt:0.1.0")
    config = load_config(PROJECT_ROOT / "deploy" / "config.yaml")
    assert (config.hpo.launcher, config.hpo.storage) == ("kubernetes", "database")
    name = study_name(config, "f" * 64, 0)
    manifest = tune_worker_job(config, "/opt/bmlt/deploy/config.yaml", name)
    kubernetes_validate.validate(manifest, "1.30", strict=True)
    assert manifest["spec"]["parallelism"] == manifest["spec"]["completions"] == config.hpo.workers
    assert manifest["spec"]["backoffLimit"] == 0  # a failed trial fails the step, which decides
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(container["command"][1:])
    assert (args.command, args.study, str(args.config)) == ("tune-worker", name, "/opt/bmlt/deploy/config.yaml")
    assert container["image"] == "registry.example.com/bmlt:0.1.0"  # the step's own image
    assert {s["secretRef"]["name"] for s in container["envFrom"]} == set(
        config.deployment.tune_worker_pods.env_from_secrets
    )
    assert all(variable["name"] != "OPTUNA_STORAGE_URL" for variable in container["env"])  # from Secrets only
    container["envFrom"][0]["secretRef"]["nmae"] = "typo"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, "1.30", strict=True)


def test_a_launched_job_is_waited_for_and_deleted_and_a_failed_pod_fails_the_step() -> None:
    """run_job's conversation with the Kubernetes API (a recording stand-in for BatchV1Api)."""
    from types import SimpleNamespace

    from bmlt_resources.kubernetes import run_job

    class Batch:
        def __init__(self, statuses: list[tuple[int, int]]) -> None:
            self.statuses, self.calls = statuses, []

        def create_namespaced_job(self, namespace, body):
            self.calls.append(("create", namespace, body["metadata"]["name"]))

        def read_namespaced_job_status(self, name, namespace):
            succeeded, failed = self.statuses.pop(0)
            return SimpleNamespace(status=SimpleNamespace(succeeded=succeeded, failed=failed))

        def delete_namespaced_job(self, name, namespace, propagation_policy):
            self.calls.append(("delete", namespace, name, propagation_policy))

    job = {"metadata": {"name": "bmlt-tune-x", "namespace": "bmlt"}, "spec": {"completions": 2}}
    done = Batch([(0, 0), (1, 0), (2, 0)])
    run_job(job, poll_s=0, api=done)
    assert done.calls == [("create", "bmlt", "bmlt-tune-x"), ("delete", "bmlt", "bmlt-tune-x", "Background")]
    assert done.statuses == []  # polled until both pods succeeded
    failed = Batch([(1, 1)])
    with pytest.raises(
        RuntimeError, match="1 pod\\(s\\) failed; their logs: kubectl -n bmlt logs -l job-name=bmlt-tune-x"
    ):
        run_job(job, poll_s=0, api=failed)
    assert failed.calls[-1][0] == "delete"
