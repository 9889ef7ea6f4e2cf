"""Hyper-parameter search with Optuna on the purged validation part (docs/design.md §4, decision 6).

A seeded TPE sampler proposes values for the YAML search space (``model.*``/``training.*``
fields); every trial trains on the training part and reports its validation log loss each
epoch, so the pruner can stop it early. The study lives in a storage URL (sqlite under the data
directory): running again resumes it and only adds the trials still missing from ``n_trials``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import optuna

from bmlt_assets.core.config import HpoConfig, PlatformConfig
from bmlt_assets.core.dataset import TrainingData
from bmlt_assets.core.train import EpochRecord, meaning_key, train

MIN_TRIALS_FOR_IMPORTANCE = 4


class TrialLogger(Protocol):
    """Where each trial's story goes (the asset logs them as nested MLflow runs)."""

    def start(self, number: int, params: dict[str, Any]) -> None: ...
    def epoch(self, record: EpochRecord) -> None: ...
    def end(self, value: float | None, state: str) -> None: ...


def with_params(config: PlatformConfig, params: dict[str, Any]) -> PlatformConfig:
    """The config with ``section.field`` values replaced, validated again as a whole."""
    raw = config.model_dump(mode="json")
    for path, value in params.items():
        section, name = path.split(".", 1)
        raw[section][name] = value
    return PlatformConfig.model_validate(raw)


def suggest(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    params = {}
    for path, dim in space.items():
        if dim.type == "categorical":
            params[path] = trial.suggest_categorical(path, dim.choices)
        elif dim.type == "int":
            params[path] = trial.suggest_int(path, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
        else:
            params[path] = trial.suggest_float(path, dim.low, dim.high, step=dim.step, log=dim.log)
    return params


def build_pruner(hpo: HpoConfig) -> optuna.pruners.BasePruner:
    return {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
        "threshold": lambda: optuna.pruners.ThresholdPruner(upper=hpo.prune_above),
        "none": optuna.pruners.NopPruner,
    }[hpo.pruner]()


@dataclass
class TuningResult:
    study: optuna.Study
    best_params: dict[str, Any]
    best_value: float
    trials: int
    pruned: int
    importances: dict[str, float]


def study_name(config: PlatformConfig, data_fingerprint: str, fold: int) -> str:
    """One study per config, data and fold: a study is resumed only while its trials mean the same
    (same data, same meaningful config, same search); more ``n_trials`` or time just resume it."""
    search = config.hpo.model_dump(mode="json", exclude={"enabled", "n_trials", "timeout_s"})
    return f"{config.name}-fold{fold}-{meaning_key(config, data_fingerprint, search)[:12]}"


def tune(config: PlatformConfig, data: TrainingData, storage_url: str, logger: TrialLogger, name: str) -> TuningResult:
    """Tune on ``data``'s training and validation parts only (never its test part)."""
    hpo = config.hpo
    study = optuna.create_study(
        study_name=name,
        storage=storage_url,
        sampler=optuna.samplers.TPESampler(seed=hpo.sampler_seed),
        pruner=build_pruner(hpo),
        direction="minimize",
        load_if_exists=True,
    )
    trial_training = {"epochs": hpo.trial_epochs or config.training.epochs, "progress_bar": False}
    if hpo.trial_max_train_samples:
        trial_training["max_train_samples"] = hpo.trial_max_train_samples

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, hpo.search_space)
        trial_config = with_params(config, params)
        trial_config = trial_config.model_copy(
            update={"training": trial_config.training.model_copy(update=trial_training)}
        )
        logger.start(trial.number, params)
        best = float("inf")

        def on_epoch(record: EpochRecord) -> None:
            nonlocal best
            best = min(best, record.val_log_loss)
            logger.epoch(record)
            trial.report(record.val_log_loss, record.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            train(trial_config, data, on_epoch)
        except optuna.TrialPruned:
            logger.end(best, "PRUNED")
            raise
        except Exception:
            logger.end(None, "FAILED")
            raise
        logger.end(best, "COMPLETE")
        return best

    finished = [
        t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    remaining = max(0, hpo.n_trials - len(finished))
    if remaining:
        study.optimize(objective, n_trials=remaining, timeout=hpo.timeout_s)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(
            f"no HPO trial completed (of {len(study.trials)}): loosen the pruner or widen the search space"
        )
    importances = (
        {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
        if len(complete) >= MIN_TRIALS_FOR_IMPORTANCE and len(hpo.search_space) > 1
        else {}
    )
    return TuningResult(
        study=study,
        best_params=study.best_params,
        best_value=study.best_value,
        trials=len(study.trials),
        pruned=len(study.get_trials(states=(optuna.trial.TrialState.PRUNED,))),
        importances=importances,
    )
