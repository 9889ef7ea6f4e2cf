"""MLflow tracking through dagster-mlflow, as a typed resource.

dagster-mlflow's ``mlflow_tracking`` is an old-style ``@resource``: it opens (or re-attaches to)
one MLflow run per Dagster run, found by the ``dagster_run_id`` tag, so every step of a run,
even in separate processes, logs to the same MLflow run. Its ``end_mlflow_on_run_finished`` hook,
attached to the jobs, ends that run FINISHED (or FAILED). ``MlflowTracking`` wraps it with typed
fields; assets receive a :class:`TrackedMlflow`: all of ``mlflow``'s functions, the client, and
the registry steps of a model's life (register the challenger, find the champion, promote).
"""

from __future__ import annotations

import atexit
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import dagster as dg
import mlflow
from dagster_mlflow.resources import CONFIG_SCHEMA, MlFlow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.pyfunc import PyFuncModel
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

from bmlt_assets.core.promotion import Verdict
from bmlt_resources.dagster_private import ConfigurableLegacyResourceAdapter
from bmlt_resources.pyfunc import OrderBookPyfunc
from bmlt_resources.tracking_probe import tracking_reachable

__all__ = [
    "MlflowTracking",
    "MlflowTrialLogger",
    "RegisteredModel",
    "RunTracker",
    "TrackedMlflow",
    "tracking_reachable",
]

CHALLENGER = "challenger"
CHAMPION = "champion"


# What the logged pyfunc needs to load and score: its code is this package's (bmlt_resources.pyfunc),
# whose own dependencies bring the rest. Declared, not inferred: MLflow infers requirements by
# importing the model in a subprocess, about 7 s per logged model (it found bmlt, cloudpickle,
# numpy and scipy, plus some of bmlt's own dependencies).
MODEL_PACKAGES = ("bmlt", "mlflow", "cloudpickle", "numpy", "scipy", "torch")
MODEL_REQUIREMENTS = [f"{dist}=={version(dist)}" for dist in MODEL_PACKAGES]


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    run_id: str
    model_uri: str


@dataclass(frozen=True)
class RunTracker:
    """One MLflow run, named by its id, written through the client: what the training workflow and
    the evaluation log into. Outside Dagster (tests, scripts) it is any run of any tracking store;
    in a step it is the step's run (:meth:`TrackedMlflow.run_tracker`)."""

    client: MlflowClient
    run_id: str

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_params(self, params: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, params=[Param(key, str(value)) for key, value in params.items()])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=entries)

    def log_dict(self, payload: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, payload, artifact_file)

    def log_artifacts(self, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def url(self, ui_url: str) -> str:
        """The run's page in the MLflow UI served at ``ui_url``."""
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        return f"{ui_url}/#/experiments/{experiment_id}/runs/{self.run_id}"

    def trial_logger(self) -> MlflowTrialLogger:
        """Optuna trials as nested runs of this one."""
        return MlflowTrialLogger(self.client, self.run_id)


class TrackedMlflow(MlFlow):
    """dagster-mlflow's run-scoped ``mlflow`` plus the registry steps of the model lifecycle."""

    def __init__(self, context: dg.InitResourceContext) -> None:
        # dagster-mlflow names every run after the Dagster job; ours says what was trained.
        self._configured_run_name = context.resource_config.get("run_name")
        super().__init__(context)

    def _setup(self) -> None:
        self.run_name = self._configured_run_name or self.run_name
        super()._setup()

    def run_tracker(self) -> RunTracker:
        """This Dagster run's MLflow run (the active one: dagster-mlflow leaves ``mlflow_run_id``
        unset for the run it starts itself), for code that logs through the client."""
        run = mlflow.active_run()
        if run is None:
            raise RuntimeError("no active MLflow run: the mlflow resource was not set up")
        return RunTracker(self.tracking_client, run.info.run_id)

    def register_challenger(
        self, name: str, checkpoint: Path, example: dict[str, Any], tags: dict[str, str], description: str
    ) -> RegisteredModel:
        """Log the checkpoint as a pyfunc in the active run, register it and alias it @challenger."""
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=OrderBookPyfunc(),
            artifacts={"checkpoint": str(checkpoint)},
            signature=infer_signature(example, OrderBookPyfunc().load(checkpoint).predict(None, example)),
            input_example=example,
            registered_model_name=name,
            pip_requirements=MODEL_REQUIREMENTS,
        )
        version = str(info.registered_model_version)
        self.tracking_client.update_registered_model(name, description=description)
        self.tracking_client.update_model_version(name, version, description=f"{description}\n\nNot evaluated yet.")
        self.tracking_client.set_registered_model_alias(name, CHALLENGER, version)
        for key, value in tags.items():
            self.tracking_client.set_model_version_tag(name, version, key, value)
        return RegisteredModel(name, version, info.run_id, info.model_uri)

    def champion(self, name: str) -> tuple[str, PyFuncModel] | None:
        """The @champion's version and loaded model, or None before the first promotion."""
        try:
            version = self.tracking_client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            return None
        return version.version, mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")

    def promote(self, name: str, version: str, verdict: Verdict) -> None:
        """Record the gate's verdict on the version; move @champion to it when it passed."""
        if verdict.promote:
            self.tracking_client.set_registered_model_alias(name, CHAMPION, version)
        outcome = "promoted" if verdict.promote else "rejected: " + "; ".join(verdict.reasons)
        self.tracking_client.set_model_version_tag(name, version, "bmlt.promotion", outcome)
        # What the verdict rests on, and whether the model makes money at the stated costs.
        self.tracking_client.set_model_version_tag(name, version, "bmlt.verdict", verdict.sentence)
        # The tags are cut short on the model page; the description shows the whole verdict.
        trained = (self.tracking_client.get_model_version(name, version).description or "").split("\n\n")[0]
        verdict_lines = "\n".join(f"- {reason}" for reason in verdict.reasons)
        heading = f"**{verdict.outcome}** {verdict.grounds}"
        self.tracking_client.update_model_version(
            name, version, description=f"{trained}\n\n{heading}\n\n{verdict_lines}"
        )
        mlflow.log_metric("promotion_promoted", float(verdict.promote))
        mlflow.log_dict(
            {
                "promote": verdict.promote,
                "sentence": verdict.sentence,
                "reasons": verdict.reasons,
                "numbers": verdict.numbers,
            },
            "report/promotion.json",
        )


@dg.resource(
    config_schema={
        **CONFIG_SCHEMA,
        "artifact_location": dg.Field(str, is_required=False),
        "run_name": dg.Field(str, is_required=False),
        "description": dg.Field(str, is_required=False),
    }
)
def checked_mlflow_tracking(context: dg.InitResourceContext) -> Iterator[TrackedMlflow]:
    """dagster-mlflow's resource, after a reachability probe; a new experiment keeps its
    artifacts at ``artifact_location`` (not in ./mlruns of whatever folder the run started in)."""
    config = context.resource_config
    tracking_reachable(config["mlflow_tracking_uri"])
    client = MlflowClient(tracking_uri=config["mlflow_tracking_uri"])
    if config.get("artifact_location") and client.get_experiment_by_name(config["experiment_name"]) is None:
        client.create_experiment(config["experiment_name"], artifact_location=config["artifact_location"])
    tracked = TrackedMlflow(context)  # as dagster-mlflow's own resource does, with our methods
    run_id = context.run.run_id if context.run is not None else None
    if config.get("description"):  # the run page's description
        mlflow.set_tag(MLFLOW_RUN_NOTE, f"{config['description']}\n\nDagster run `{run_id}`.")
    if context.instance is not None and run_id is not None and run_id not in _ENDED_AT_EXIT:
        _ENDED_AT_EXIT.add(run_id)
        atexit.register(end_unfinished_run, context.instance, run_id)
    yield tracked
    tracked.cleanup_on_error()


_ENDED_AT_EXIT: set[str] = set()  # Dagster runs whose MLflow run this process ends at exit


def end_unfinished_run(instance: dg.DagsterInstance, dagster_run_id: str) -> None:
    """At exit, the MLflow run still open takes the outcome of its Dagster run: KILLED when it was
    interrupted or cancelled (Ctrl-C, a terminated run), FAILED when it failed otherwise.

    Registered after MLflow's own exit handler, so it runs first: MLflow's ends any open run
    FINISHED, whatever happened (dagster-mlflow's attempt to unregister it names another function).
    A run still going (a step process of the multiprocess executor) is left to that handler: the
    next step reopens the MLflow run."""
    with contextlib.suppress(Exception):  # never fail an exiting process
        if mlflow.active_run() is None:
            return
        run = instance.get_run_by_id(dagster_run_id)
        if run is None:
            return
        interrupted = run.tags.get("dagster/failure_reason") == "UNEXPECTED_TERMINATION"
        if run.status in (dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.CANCELING) or (
            run.status == dg.DagsterRunStatus.FAILURE and interrupted
        ):
            mlflow.end_run(status="KILLED")
        elif run.status == dg.DagsterRunStatus.FAILURE:
            mlflow.end_run(status="FAILED")


class MlflowTracking(ConfigurableLegacyResourceAdapter):
    experiment_name: str
    mlflow_tracking_uri: str
    artifact_location: str = ""  # "" for a tracking server: it chooses (see PlatformConfig.artifact_location)
    run_name: str = ""  # default: the Dagster job's name
    description: str = ""  # Markdown for the run page: what was trained on what
    extra_tags: dict[str, str] = {}

    @property
    def wrapped_resource(self) -> Any:
        return checked_mlflow_tracking


class MlflowTrialLogger:
    """Each Optuna trial as a nested MLflow run of ``parent_run_id`` (the trained_model step's run).
    Through the client rather than the fluent API's active run, so that trial workers in other
    processes (``bmlt tune-worker``) log under the same parent."""

    def __init__(self, client: MlflowClient, parent_run_id: str) -> None:
        self._client = client
        self._parent_run_id = parent_run_id
        self._experiment_id = client.get_run(parent_run_id).info.experiment_id
        self._run_id = ""

    def start(self, number: int, params: dict[str, Any]) -> None:
        tags = {MLFLOW_PARENT_RUN_ID: self._parent_run_id, "optuna.trial": str(number)}
        self._run_id = self._client.create_run(self._experiment_id, run_name=f"trial-{number}", tags=tags).info.run_id
        self._client.log_batch(self._run_id, params=[Param(key, str(value)) for key, value in params.items()])

    def epoch(self, record: Any) -> None:
        now = int(time.time() * 1000)
        metrics = {"train_loss": record.train_loss, "val_log_loss": record.val_log_loss}
        self._client.log_batch(self._run_id, metrics=[Metric(k, v, now, record.epoch) for k, v in metrics.items()])

    def end(self, value: float | None, state: str) -> None:
        if value is not None:
            self._client.log_metric(self._run_id, "best_val_log_loss", value)
        self._client.set_tag(self._run_id, "optuna.state", state)
        status = "KILLED" if state == "PRUNED" else "FAILED" if state == "FAILED" else "FINISHED"
        self._client.set_terminated(self._run_id, status)
