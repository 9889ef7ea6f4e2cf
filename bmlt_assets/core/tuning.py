"""Hyper-parameter search with Optuna on the purged validation part (docs/design.md §4, decision 6).

A TPE sampler proposes values for the YAML search space (``model.*``/``training.*`` fields);
every trial trains on the training part and reports its validation log loss each epoch, so the
pruner can stop it early.

The study lives in ``hpo.storage``: a sqlite file or an Optuna journal file under the data
directory, or a database (its URL from the environment). :func:`prepare_study` creates it once,
before any worker starts (two processes creating one study at once crash on sqlite and
Postgres), and queues the trials still missing from ``n_trials`` as WAITING trials. Workers,
in this process or in others on any machine (``bmlt tune-worker``), claim queued trials one at a
time until the queue is empty: the claim is the storage's atomic WAITING -> RUNNING transition,
so no trial runs twice and the total is exactly ``n_trials`` (Optuna's ``MaxTrialsCallback``
counts only after a trial ends: two workers that count at the same moment both start one more).
Running again resumes a study and only adds the trials still missing; a trial left RUNNING by a
killed worker stays so, and its place is queued again.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bmlt_assets.core.config import ConfigError, HpoConfig, PlatformConfig
from bmlt_assets.core.dataset import TrainingData
from bmlt_assets.core.train import EpochRecord, meaning_key, train

MIN_TRIALS_FOR_IMPORTANCE = 4
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STUDY_FILES = {"sqlite": "optuna.db", "journal": "optuna.journal"}  # under <data>/<config>/hpo/
DATABASE_URL_EXAMPLE = "postgresql+psycopg2://USER:PASSWORD@HOST:5432/DATABASE"
ORIGIN_ATTR = "bmlt.origin"  # the study's user attribute holding its StudyOrigin
WORKER_ATTR = "bmlt.worker"  # a trial's user attribute: host:pid of the worker that ran it

log = logging.getLogger(__name__)


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
    how = {"enabled", "n_trials", "timeout_s", "storage", "storage_url_env", "workers", "launcher"}  # not meaning
    search = config.hpo.model_dump(mode="json", exclude=how)
    return f"{config.name}-fold{fold}-{meaning_key(config, data_fingerprint, search)[:12]}"


def tune(
    config: PlatformConfig, data: TrainingData, storage: optuna.storages.BaseStorage, logger: TrialLogger, name: str
) -> TuningResult:
    """Tune on ``data``'s training and validation parts only (never its test part), in this process."""
    study = prepare_study(config, storage, name)
    run_queued_trials(study, storage, trial_objective(config, data, logger), config.hpo.timeout_s)
    return tuning_result(study, config.hpo)


def trial_objective(config: PlatformConfig, data: TrainingData, logger: TrialLogger) -> Callable[[optuna.Trial], float]:
    """A trial: the config with the trial's values trains on ``data``; its best validation log loss."""
    hpo = config.hpo
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

    return objective


def study_storage(hpo: HpoConfig, folder: Path) -> optuna.storages.BaseStorage:
    """The storage of ``hpo.storage``; ``folder`` (made if missing) keeps a sqlite or journal file."""
    if hpo.storage == "database":
        return optuna.storages.get_storage(
            optuna.storages.RDBStorage(database_url(hpo), engine_kwargs={"pool_pre_ping": True})
        )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STUDY_FILES[hpo.storage]
    if hpo.storage == "journal":
        return JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.get_storage(f"sqlite:///{path}")


def describe_storage(hpo: HpoConfig, folder: Path) -> str:
    """Where the study lives, for logs: a file, or the database URL without its password."""
    if hpo.storage == "database":
        return f"${hpo.storage_url_env} ({make_url(database_url(hpo)).render_as_string(hide_password=True)})"
    return f"{hpo.storage} {folder / STUDY_FILES[hpo.storage]}"


def database_url(hpo: HpoConfig) -> str:
    """The SQLAlchemy URL in ``$<hpo.storage_url_env>``; no error shows it (it may hold a password)."""
    variable = hpo.storage_url_env
    value = os.environ.get(variable, "").strip()
    if not value:
        raise ConfigError(
            f"hpo.storage database reads the study's database URL from ${variable}, which is not set: "
            f"export {variable}={DATABASE_URL_EXAMPLE}"
        )
    try:
        url = make_url(value)
    except ArgumentError:
        raise ConfigError(f"${variable} is not a database URL such as {DATABASE_URL_EXAMPLE}") from None
    if url.drivername == "postgresql":
        raise ConfigError(
            f"${variable} ({url.render_as_string(hide_password=True)}): write postgresql+psycopg2://...: "
            "SQLAlchemy 2.1 reads a plain postgresql:// as psycopg 3, which is not installed"
        )
    return value


def build_sampler(hpo: HpoConfig, parallel: bool) -> optuna.samplers.BaseSampler:
    """Seeded in one process. Parallel workers draw their own seeds (one seed would give every
    worker the same proposals) and, with the constant liar, steer away from running trials;
    which worker runs which trial depends on timing, so a parallel search is not reproducible."""
    if parallel:
        return optuna.samplers.TPESampler(constant_liar=True)
    return optuna.samplers.TPESampler(seed=hpo.sampler_seed)


@dataclass(frozen=True)
class StudyOrigin:
    """What a worker in another process needs to join a study, kept in the study itself."""

    config_name: str
    fold: int
    data_fingerprint: str
    mlflow_parent_run_id: str  # the trained_model step's MLflow run: every trial is a nested run of it


def prepare_study(
    config: PlatformConfig, storage: optuna.storages.BaseStorage, name: str, origin: StudyOrigin | None = None
) -> optuna.Study:
    """Create (or resume) the study and queue the trials still missing from ``n_trials``. Call it
    once, before any worker starts: workers only join (:func:`join_study`)."""
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=build_sampler(config.hpo, parallel=False),
        pruner=build_pruner(config.hpo),
        direction="minimize",
        load_if_exists=True,
    )
    if origin is not None:
        study.set_user_attr(ORIGIN_ATTR, asdict(origin))
    counted = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.WAITING))
    for _ in range(config.hpo.n_trials - len(counted)):
        study.enqueue_trial({})
    return study


def join_study(
    config: PlatformConfig, storage: optuna.storages.BaseStorage, name: str
) -> tuple[optuna.Study, StudyOrigin]:
    """A study :func:`prepare_study` made, for a parallel worker (never created here), and where
    it came from; refused when ``config`` would not have made it (another config or search)."""
    try:
        study = optuna.load_study(
            study_name=name, storage=storage, sampler=build_sampler(config.hpo, True), pruner=build_pruner(config.hpo)
        )
    except KeyError:
        raise ConfigError(
            f"no study {name!r} in that storage: the trained_model step creates it (with hpo.workers > 1) "
            "before workers join; start it first, then workers with the study name from its log"
        ) from None
    if ORIGIN_ATTR not in study.user_attrs:
        raise ConfigError(f"study {name!r} was not prepared for workers by the trained_model step (hpo.workers > 1)")
    origin = StudyOrigin(**study.user_attrs[ORIGIN_ATTR])
    expected = study_name(config, origin.data_fingerprint, origin.fold)
    if origin.config_name != config.name or expected != name:
        raise ConfigError(
            f"study {name!r} was made from another config or search space than {config.name!r} (this config "
            f"would name it {expected!r}): start the worker with the config the trained_model step ran"
        )
    return study, origin


def run_queued_trials(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    objective: Callable[[optuna.Trial], float],
    timeout_s: float | None = None,
) -> int:
    """Claim and run queued trials until none is left, or none is started after ``timeout_s``;
    returns how many ran. A trial that raises is marked FAIL and the error goes on."""
    study_id = storage.get_study_id_from_name(study.study_name)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    ran = 0
    while deadline is None or time.monotonic() < deadline:
        trial_id = _claim_queued_trial(storage, study_id)
        if trial_id is None:
            break
        trial = optuna.Trial(study, trial_id)
        trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            frozen = study.tell(trial, state=TrialState.PRUNED)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            frozen = study.tell(trial, value)
        log.info("trial %s %s: value %s", frozen.number, frozen.state.name, frozen.value)
        ran += 1
    return ran


def _claim_queued_trial(storage: optuna.storages.BaseStorage, study_id: int) -> int | None:
    """A WAITING trial's id, now RUNNING for this worker alone, or None when the queue is empty.
    WAITING -> RUNNING is atomic in the storage (a row lock in a database, the journal's order in
    a journal): when two workers reach for one trial, one gets it and the other tries the next."""
    for waiting in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, waiting.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker claimed and finished it meanwhile
    return None


def tuning_result(study: optuna.Study, hpo: HpoConfig) -> TuningResult:
    """The best trial's values and the search's summary, once its trials have run."""
    complete = study.get_trials(states=(TrialState.COMPLETE,))
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
        trials=len(study.get_trials(deepcopy=False, states=FINISHED)),
        pruned=len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))),
        importances=importances,
    )
