"""`dagster job execute` as a user runs it: a subprocess on the tiny config, end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pytest

from bmlt_assets.core.config import PROJECT_ROOT, PlatformConfig, load_config
from bmlt_assets.core.readable import number
from bmlt_assets.partitions import range_tags
from bmlt_resources.storage import StorageResource
from tests.helpers import write_config

BIN = Path(sys.executable).parent


def test_dagster_job_execute_runs_the_full_pipeline(
    tmp_path: Path, tiny_config_path: Path, tiny_config: PlatformConfig
) -> None:
    # deployment.executor defaults to in_process, as in `make demo`: no run config needed.
    tags = json.dumps(range_tags(tiny_config.data.start_date, tiny_config.data.end_date))
    env = {**os.environ, "BMLT_CONFIG": str(tiny_config_path), "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    (tmp_path / "dagster_home").mkdir()
    completed = subprocess.run(
        [
            str(BIN / "dagster"),
            "job",
            "execute",
            "-m",
            "bmlt_assets.definitions",
            "-j",
            "full_pipeline",
            "--tags",
            tags,
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    assert "RUN_SUCCESS" in completed.stdout + completed.stderr

    storage = StorageResource.for_config(tiny_config)
    for date in tiny_config.data.dates:
        assert (storage.tensors(date) / "meta.json").exists() and (storage.returns(date) / "meta.json").exists()
    report = json.loads((storage.report / "metrics.json").read_text())
    assert [entry["horizon_steps"] for entry in report["report"]] == [3, 12]
    model_meta = json.loads((storage.model / "meta.json").read_text())

    client = mlflow.MlflowClient(tracking_uri=tiny_config.tracking_uri)
    experiment = client.get_experiment_by_name(tiny_config.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # one Dagster run, one MLflow run, across all six steps
    run = runs[0]
    assert run.info.status == "FINISHED"  # ended by dagster-mlflow's hook
    assert run.info.run_id == model_meta["mlflow_run_id"]
    assert run.data.tags["bmlt.partition_range"] == f"{tiny_config.data.start_date}..{tiny_config.data.end_date}"
    for key, value in report["report"][0]["metrics"]["model"].items():
        np.testing.assert_allclose(run.data.metrics[f"test_model_{key}_30s"], value)
    assert client.get_model_version_by_alias(tiny_config.registered_model_name, "challenger").run_id == run.info.run_id

    # The terminal view of the same evaluation.
    html_path = tmp_path / "report.html"
    shown = subprocess.run(
        [str(BIN / "bmlt"), "report", run.info.run_id, "--config", str(tiny_config_path), "--out", str(html_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    model_accuracy = report["report"][0]["metrics"]["model"]["accuracy"]
    assert number(model_accuracy) in shown.stdout and "Horizon 30s" in shown.stdout
    assert f"Horizon 30s, {report['report'][0]['samples']:,} samples, " in shown.stdout  # and independent outcomes
    assert shown.stdout.startswith("Verdict: ")  # the gate's sentence, from report/promotion.json
    assert html_path.read_text().startswith("<!DOCTYPE html>")
    missing = subprocess.run(
        [str(BIN / "bmlt"), "report", "nonexistent", "--config", str(tiny_config_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr

    # Without -o the HTML lands under the data folder, never in the working directory; -o an
    # existing folder puts it in that folder; no download is left in the temporary folder.
    scratch, folder = tmp_path / "tmp", tmp_path / "reports-here"
    scratch.mkdir()
    folder.mkdir()
    for extra in ([], ["-o", str(folder)]):
        default = subprocess.run(
            [str(BIN / "bmlt"), "report", run.info.run_id, "--config", str(tiny_config_path), *extra],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={**os.environ, "TMPDIR": str(scratch)},
        )
        assert default.returncode == 0, default.stderr
    assert (storage.root / "reports" / f"report-{run.info.run_id}.html").exists()
    assert (folder / f"report-{run.info.run_id}.html").read_text().startswith("<!DOCTYPE html>")
    assert not list(tmp_path.glob("report-*.html"))
    assert not list(scratch.iterdir())

    # The run page says what was trained on what, from which config and Dagster run.
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith(f"**{tiny_config.name}**: deeplob (branches) predicting ETH/USDT")
    assert str(tiny_config_path.resolve()) in note and tiny_config.content_hash in note
    assert run.data.tags["dagster_run_id"] in note

    # The summary names the run, the model version and its aliases, the verdict and the paths.
    summary = subprocess.run(
        [str(BIN / "bmlt"), "summary", "--config", str(tiny_config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert summary.returncode == 0, summary.stderr
    version = client.get_model_version(tiny_config.registered_model_name, model_meta["registered_version"])
    assert run.info.run_id in summary.stdout and run.info.run_name in summary.stdout
    assert f"models:/{tiny_config.registered_model_name}/{version.version}  @challenger" in summary.stdout
    _, _, reasons = version.tags["bmlt.promotion"].partition(": ")
    assert f"verdict    {version.tags['bmlt.verdict']}" in summary.stdout  # what it rests on, whether it makes money
    assert all(f"- {reason}" in summary.stdout for reason in reasons.split("; ") if reason)
    assert str(storage.report / "report.html") in summary.stdout
    assert number(model_accuracy) in summary.stdout and "independent outcomes" in summary.stdout
    assert "Money: at the stated costs" in summary.stdout
    assert "\x1b[" not in summary.stdout


@pytest.mark.slow  # about a minute: a pipeline run interrupted in the middle of training
def test_an_interrupted_run_ends_its_mlflow_run_killed_not_finished(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"training": {"epochs": 1000, "early_stopping_patience": 1000}})
    config = load_config(path)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "BMLT_CONFIG": str(path), "DAGSTER_HOME": str(home)}
    tags = json.dumps(range_tags(config.data.start_date, config.data.end_date))
    with (tmp_path / "run.log").open("w") as log:
        process = subprocess.Popen(
            [str(BIN / "dagster"), "job", "execute", "-m", "bmlt_assets.definitions", "-j", "full_pipeline"]
            + ["--tags", tags],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            instance = dg.DagsterInstance.from_config(str(home))
            deadline = time.monotonic() + 300
            while not _step_started(instance, "trained_model"):
                assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()
                time.sleep(1)
            time.sleep(5)  # a few epochs in
            process.send_signal(signal.SIGINT)  # Ctrl-C; a terminated run gets SIGTERM, which Dagster maps to it
            assert process.wait(timeout=120) != 0
        finally:
            process.kill()
    client = mlflow.MlflowClient(tracking_uri=config.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(config.mlflow.experiment).experiment_id])
    assert run.info.status == "KILLED", (tmp_path / "run.log").read_text()[-3000:]


def _step_started(instance: dg.DagsterInstance, step: str) -> bool:
    records = instance.get_event_records(dg.EventRecordsFilter(event_type=dg.DagsterEventType.STEP_START))
    return any(record.event_log_entry.step_key == step for record in records)
