"""A quick look at an MLflow tracking store, before anything relies on it (importing only MLflow,
so that the `bmlt` commands use it too)."""

from __future__ import annotations

import os

from mlflow import MlflowClient

QUICK_PROBE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def tracking_reachable(uri: str) -> None:
    """Fail fast, before any step runs, when the tracking store cannot be reached: one quick
    request without MLflow's retries, instead of minutes of back-off after an hour of training."""
    previous = {name: os.environ.get(name) for name in QUICK_PROBE}
    os.environ.update(QUICK_PROBE)
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as error:
        if not uri.startswith(("http://", "https://")):
            raise  # a local store that fails is damaged, not unreachable: bmlt_assets.boundary says so
        raise ConnectionError(
            f"MLflow tracking store {uri!r} is unreachable ({type(error).__name__}): start it, or point "
            "mlflow.tracking_uri in the config at a reachable server"
        ) from None
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
