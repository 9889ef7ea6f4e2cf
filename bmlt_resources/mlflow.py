"""MLflow tracking through dagster-mlflow, as a typed resource.

dagster-mlflow's ``mlflow_tracking`` is an old-style ``@resource``: it opens (or re-attaches to)
one MLflow run per Dagster run, found by the ``dagster_run_id`` tag, so every step of a run,
even in separate processes, logs to the same MLflow run. Its ``end_mlflow_on_run_finished`` hook,
attached to the jobs, ends that run FINISHED (or FAILED). ``MlflowTracking`` wraps it with typed
fields; assets receive the ``MlFlow`` object (all of ``mlflow``'s functions plus the client).
"""

from __future__ import annotations

from typing import Any

# Not re-exported at dagster's top level in 1.13; it is the supported bridge from an old-style
# @resource to a typed, Pythonic one.
from dagster._config.pythonic_config.resource import ConfigurableLegacyResourceAdapter
from dagster_mlflow import mlflow_tracking
from dagster_mlflow.resources import MlFlow
from mlflow import MlflowClient

__all__ = ["MlFlow", "MlflowTracking", "tracking_reachable"]


class MlflowTracking(ConfigurableLegacyResourceAdapter):
    experiment_name: str
    mlflow_tracking_uri: str
    extra_tags: dict[str, str] = {}

    @property
    def wrapped_resource(self) -> Any:
        return mlflow_tracking


def tracking_reachable(uri: str) -> None:
    """Fail fast, before any training, when the tracking store cannot be reached."""
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - any failure here means "unreachable"
        raise ConnectionError(f"MLflow tracking store {uri!r} is unreachable: {error}") from None

