"""Optuna tuning: seeded, pruned when told to, resumable, and logged as nested MLflow runs."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import mlflow
import pytest

from bmlt_assets.core.config import ConfigError, load_config
from bmlt_assets.core.dataset import build_dataset
from bmlt_assets.core.tuning import study_name, study_storage, tune, with_params
from bmlt_assets.definitions import INGEST_ASSETS, TRAINING_ASSETS, build_resources
from bmlt_assets.partitions import range_tags
from bmlt_assets.training.workflow import fit
from tests.helpers import stored_dataset, synthetic_days, tracked_run, write_config

# A learning rate of 30 diverges: with the threshold pruner those trials stop after one epoch.
SPACE = {
    "training.learning_rate": {"type": "categorical", "choices": [0.003, 30.0]},
    "model.lstm_hidden": {"type": "int", "low": 4, "high": 12, "step": 4},
}
HPO = {
    "enabled": True,
    "n_trials": 4,
    "pruner": "threshold",
    "prune_above": 2.3,
    "trial_epochs": 2,
    "search_space": SPACE,
}


class RecordingLogger:
    def __init__(self) -> None:
        self.trials: list[dict] = []

    def start(self, number, params) -> None:
        self.trials.append({"number": number, "params": params, "epochs": 0})

    def epoch(self, record) -> None:
        self.trials[-1]["epochs"] += 1

    def end(self, value, state) -> None:
        self.trials[-1]["state"] = state


def test_tuning_prunes_resumes_and_picks_the_best(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {"hpo": HPO}))
    data = build_dataset(synthetic_days(config), config)
    storage = study_storage(config.hpo, tmp_path)
    logger = RecordingLogger()
    name = study_name(config, "data-a", 0)
    result = tune(config, data, storage, logger, name)
    states = [t["state"] for t in logger.trials]
    assert len(states) == 4 and "PRUNED" in states and "COMPLETE" in states
    assert all(t["epochs"] == 1 for t in logger.trials if t["state"] == "PRUNED")
    assert result.best_params["training.learning_rate"] == 0.003
    assert with_params(config, result.best_params).model.lstm_hidden == result.best_params["model.lstm_hidden"]

    again = RecordingLogger()
    tune(config, data, storage, again, name)  # same n_trials: the study is complete, nothing reruns
    assert again.trials == []
    more = config.model_copy(update={"hpo": config.hpo.model_copy(update={"n_trials": 5})})
    assert study_name(more, "data-a", 0) == name  # more trials resume the same study
    tune(more, data, storage, again, study_name(more, "data-a", 0))  # one more trial, numbered after the first four
    assert [t["number"] for t in again.trials] == [4]


def test_a_study_is_never_resumed_on_other_data_or_another_meaning(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {"hpo": HPO}))
    name = study_name(config, "data-a", 0)
    assert study_name(config, "data-b", 0) != name  # the data changed
    assert study_name(config, "data-a", 1) != name  # another walk-forward fold
    horizons = config.labels.model_copy(update={"horizons_s": [30, 60]})
    assert study_name(config.model_copy(update={"labels": horizons}), "data-a", 0) != name
    seed = config.hpo.model_copy(update={"sampler_seed": 1})
    assert study_name(config.model_copy(update={"hpo": seed}), "data-a", 0) != name
    storage = config.storage.model_copy(update={"uri": str(tmp_path / "elsewhere")})
    assert study_name(config.model_copy(update={"storage": storage}), "data-a", 0) == name  # where, not what


def test_search_space_paths_are_validated(tmp_path: Path) -> None:
    bad = {**HPO, "search_space": {"dataset.window_steps": {"type": "int", "low": 20, "high": 40}}}
    with pytest.raises(ConfigError, match="tune fields of"):
        load_config(write_config(tmp_path, {"hpo": bad}))
    typo = {**HPO, "search_space": {"model.lstm_hiden": {"type": "int", "low": 4, "high": 8}}}
    with pytest.raises(ConfigError, match="has no field 'lstm_hiden'"):
        load_config(write_config(tmp_path, {"hpo": typo}))


def test_the_fit_logs_each_trial_as_a_nested_run_of_its_run(tmp_path: Path) -> None:
    """Tuning in the training workflow, as a plain function call: the trials are nested runs of the
    fit's run, the best values are logged and the latest model is trained with them."""
    config = load_config(write_config(tmp_path, {"hpo": {**HPO, "n_trials": 3}}))
    storage = stored_dataset(config)
    tracker = tracked_run(config)
    fitted = fit(config, storage.require(storage.dataset, "training_dataset"), tracker=tracker, storage=storage)
    assert fitted.tuning is not None and fitted.tuning.trials == 3
    assert fitted.config == with_params(config, fitted.tuning.best_params)
    assert fitted.result.model.lstm.hidden_size == fitted.tuning.best_params["model.lstm_hidden"]

    runs = tracker.client.search_runs([tracker.client.get_run(tracker.run_id).info.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == tracker.run_id]
    assert len(children) == 3 and len(runs) == 4
    assert sorted(r.data.tags["optuna.trial"] for r in children) == ["0", "1", "2"]
    assert {r.data.tags["optuna.state"] for r in children} <= {"COMPLETE", "PRUNED"}
    parent = tracker.client.get_run(tracker.run_id)
    assert parent.data.params["hpo.best.training.learning_rate"] == str(
        fitted.tuning.best_params["training.learning_rate"]
    )
    assert parent.data.metrics["hpo_trials"] == 3


@pytest.mark.slow  # the same through Dagster: the asset's wiring of the workflow
def test_trained_model_logs_each_trial_as_a_nested_run(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"hpo": {**HPO, "n_trials": 3}})
    config = load_config(path)
    assets = INGEST_ASSETS + TRAINING_ASSETS
    instance = dg.DagsterInstance.ephemeral()
    tags = range_tags(config.data.start_date, config.data.end_date)
    assert dg.materialize(
        assets, selection=INGEST_ASSETS, resources=build_resources(path), instance=instance, tags=tags
    ).success
    result = dg.materialize(assets, selection=TRAINING_ASSETS[:2], resources=build_resources(path), instance=instance)
    assert result.success
    metadata = result.asset_materializations_for_node("trained_model")[0].metadata
    assert metadata["hpo_trials"].value == 3

    client = mlflow.MlflowClient(tracking_uri=config.tracking_uri)
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = {r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert len(children) == 3 and len(parents) == 1
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == parents
    assert {r.data.tags["optuna.state"] for r in children} <= {"COMPLETE", "PRUNED"}
    parent = client.get_run(parents.pop())
    assert parent.data.params["hpo.best.training.learning_rate"] in {"0.003", "30.0"}
