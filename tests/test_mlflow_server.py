"""A remote MLflow: a tracking server on a database with its artifacts proxied into S3 (moto).

Only the server holds S3 keys; the pipeline (the client) has none and still logs the model and
the report, and loads the model back from the registry by alias.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pytest
import yaml

from bmlt_assets import cli
from bmlt_assets.core.config import PROJECT_ROOT, ConfigError, load_config
from bmlt_assets.definitions import INGEST_ASSETS, TRAINING_ASSETS, build_resources
from bmlt_assets.partitions import range_tags
from bmlt_resources.storage import StorageResource
from tests.helpers import write_config
from tests.services import S3, Postgres, free_port, wait_for_port


def manifest_command(port: int, env: dict[str, str]) -> list[str]:
    """The MLflow server's command line of deploy/k8s/mlflow.yaml, with Kubernetes' $(VAR)
    references expanded from ``env`` and the container's address made this machine's."""
    documents = list(yaml.safe_load_all((PROJECT_ROOT / "deploy" / "k8s" / "mlflow.yaml").read_text()))
    (container,) = documents[0]["spec"]["template"]["spec"]["containers"]
    variables = {item["name"]: item["value"] for item in container["env"]} | env
    args = [re.sub(r"\$\((\w+)\)", lambda match: variables[match.group(1)], arg) for arg in container["args"]]
    local = {"--host": "127.0.0.1", "--port": str(port), "--allowed-hosts": f"127.0.0.1:{port}", "--workers": "1"}
    args = [f"{arg.split('=')[0]}={local[arg.split('=')[0]]}" if arg.split("=")[0] in local else arg for arg in args]
    assert container["command"] == ["mlflow", "server"]
    return [sys.executable, "-m", "mlflow", "server", *args]


@pytest.fixture
def tracking_server(tmp_path: Path, s3: S3, postgres: Postgres, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """deploy/k8s/mlflow.yaml's server: PostgreSQL backend, artifacts proxied into S3 (moto)."""
    port = free_port()
    server_env = {**os.environ, **s3.environment(), "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url}
    command = manifest_command(
        port,
        {
            "MLFLOW_BACKEND_STORE_URI": postgres.create_database(),
            "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{s3.bucket}/mlartifacts",
        },
    )
    server = subprocess.Popen(command, env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The client side (this process) has no S3 credentials at all.
    for name in (*s3.environment(), "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    try:
        wait_for_port(port, server, "mlflow server", timeout_s=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        while mlflow.active_run() is not None:  # end it while the server still answers
            mlflow.end_run()
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow  # a server start plus the whole tiny pipeline: about a minute
def test_a_tracking_server_stores_runs_models_and_reports_in_s3_for_clients_without_keys(
    tmp_path: Path, s3: S3, tracking_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config(tmp_path, {"mlflow": {"tracking_uri": tracking_server, "ui_url": tracking_server}})
    config = load_config(config_path)
    assert config.artifact_location == ""  # the server decides where artifacts go
    assets = INGEST_ASSETS + TRAINING_ASSETS
    resources = build_resources(config_path)
    first, last = config.data.start_date, config.data.end_date
    ingest = dg.materialize(assets, selection=INGEST_ASSETS, resources=resources, tags=range_tags(first, last))
    assert ingest.success
    assert dg.materialize(assets, selection=TRAINING_ASSETS, resources=resources).success

    client = mlflow.MlflowClient(tracking_uri=tracking_server)
    version = client.get_model_version_by_alias(config.registered_model_name, "challenger")
    run = client.get_run(version.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied: no S3 URL reaches the client
    keys = s3.keys("mlartifacts/")
    assert any(key.endswith("/report/report.md") for key in keys)
    assert any(key.endswith(".png") and "/report/" in key for key in keys)  # the report's figures
    assert any(key.endswith("artifacts/checkpoint.pt") or key.endswith("/checkpoint.pt") for key in keys)

    assert cli.main(["summary", "--config", str(config_path)]) == 0  # reads the registry through the server
    shown = capsys.readouterr().out
    assert f"MLflow UI  {tracking_server}" in shown and "--backend-store-uri" not in shown

    mlflow.set_tracking_uri(tracking_server)
    model = mlflow.pyfunc.load_model(f"models:/{config.registered_model_name}@challenger")
    storage = StorageResource.for_config(config)
    base, mids, stamps = (np.load(storage.tensors(first) / f"{name}.npy") for name in ("base", "mids", "timestamps"))
    steps = np.array([4000, 4100])
    index = steps[:, None] + np.arange(-config.dataset.window_steps + 1, 1)
    probabilities = model.predict({"book": base[index], "mids": mids[index], "timestamp_ns": stamps[steps]})
    assert probabilities.shape == (2, len(config.labels.horizons_s), config.labels.n_classes)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)


def test_a_server_uri_is_accepted_and_its_credentials_come_only_from_the_environment(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {"mlflow": {"tracking_uri": "https://mlflow.example.com"}}))
    assert config.tracking_uri == "https://mlflow.example.com" and config.artifact_location == ""
    local = load_config(write_config(tmp_path))
    assert local.tracking_uri.startswith("sqlite:") and local.artifact_location.startswith("file:")
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_PASSWORD") as error:
        load_config(write_config(tmp_path, {"mlflow": {"tracking_uri": "https://bmlt:hunter2@mlflow.example.com"}}))
    assert "hunter2" not in str(error.value)
