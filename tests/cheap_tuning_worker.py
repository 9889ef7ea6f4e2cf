"""A tuning worker process whose trials cost a short sleep (tests/test_distributed_tuning.py): what
is tested is how workers share a study, not training. A module of its own, so that a spawned
process imports only the core, not the test module's Dagster and MLflow."""

from __future__ import annotations

import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

import optuna

from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.tuning import join_study, run_queued_trials, study_storage, suggest


def run(config_json: str, folder: str, name: str, start: Barrier) -> None:
    config = PlatformConfig.model_validate_json(config_json)
    storage = study_storage(config.hpo, Path(folder))
    start.wait()  # every worker joins the study at the same instant
    study, _ = join_study(config, storage, name)

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, config.hpo.search_space)
        time.sleep(0.2)
        return float(params["model.lstm_hidden"])

    run_queued_trials(study, storage, objective)
