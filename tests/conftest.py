"""Shared fixtures: a tiny synthetic config writing into a temporary data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmlt_assets.core.config import PlatformConfig, load_config
from tests.helpers import write_config
from tests.services import moto_endpoint, postgres, s3  # noqa: F401  (shared service fixtures)


@pytest.fixture
def tiny_config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def tiny_config(tiny_config_path: Path) -> PlatformConfig:
    return load_config(tiny_config_path)


@pytest.fixture(autouse=True)
def _dagster_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path_factory.mktemp("dagster_home")))


@pytest.fixture(autouse=True)
def _no_dangling_mlflow_run():
    """dagster-mlflow leaves its run active until the job's hook ends it; `materialize` in tests
    has no hook, so end it here, or the next test would resume it against another store."""
    yield
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
