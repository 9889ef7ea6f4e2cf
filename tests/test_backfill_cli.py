"""Both documented ways to backfill a date range, through the real Dagster CLI."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from bmlt_assets.core.config import PROJECT_ROOT, PlatformConfig
from bmlt_resources.storage import StorageResource

BIN = Path(sys.executable).parent


def _dagster(args: list[str], config_path: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BMLT_CONFIG": str(config_path), "DAGSTER_HOME": str(home)}
    return subprocess.run(
        [str(BIN / "dagster"), *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow  # about 2 minutes: three `dagster` CLI runs, each a fresh process tree
def test_partition_range_in_one_run_and_job_backfill_per_day(
    tmp_path: Path, tiny_config_path: Path, tiny_config: PlatformConfig
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
    storage = StorageResource.for_config(tiny_config)

    single_run = _dagster(
        [
            "asset",
            "materialize",
            "-m",
            "bmlt_assets.definitions",
            "--select",
            "tiny/orderbook_snapshots,tiny/book_tensors,tiny/forward_returns",
            "--partition-range",
            "2025-01-06...2025-01-07",
        ],
        tiny_config_path,
        home,
    )
    assert single_run.returncode == 0, single_run.stderr[-3000:]
    assert all((storage.returns(d) / "meta.json").exists() for d in tiny_config.data.dates)

    per_day = _dagster(
        [
            "job",
            "backfill",
            "-m",
            "bmlt_assets.definitions",
            "-j",
            "ingest_job",
            "--from",
            "2025-01-08",
            "--to",
            "2025-01-09",
            "--noprompt",
        ],
        tiny_config_path,
        home,
    )
    assert per_day.returncode == 0, per_day.stderr[-3000:]
    runs = dg.DagsterInstance.from_config(str(home)).get_runs()
    by_partition = {run.tags.get("dagster/partition"): run.status for run in runs if run.job_name == "ingest_job"}
    assert by_partition == {"2025-01-08": dg.DagsterRunStatus.SUCCESS, "2025-01-09": dg.DagsterRunStatus.SUCCESS}
    assert (storage.returns(dt.date(2025, 1, 9)) / "meta.json").exists()

    # The two day runs started at once, but the instance's pools (one per asset, limit 1) let only
    # one step of an asset run at a time: each asset's step spans never overlap across the runs.
    instance = dg.DagsterInstance.from_config(str(home))
    spans: dict[str, list[tuple[float, float]]] = {}
    for run in (run for run in runs if run.job_name == "ingest_job"):
        started: dict[str, float] = {}
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            if event is None or event.step_key not in ("orderbook_snapshots", "book_tensors", "forward_returns"):
                continue  # the asset checks' steps have no pool
            if event.event_type == dg.DagsterEventType.STEP_START:
                started[event.step_key] = record.timestamp
            elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                spans.setdefault(event.step_key, []).append((started[event.step_key], record.timestamp))
    assert set(spans) == {"orderbook_snapshots", "book_tensors", "forward_returns"}
    assert all(len(pair) == 2 for pair in spans.values())
    for step, (first, second) in ((step, sorted(pair)) for step, pair in spans.items()):
        assert first[1] <= second[0], f"{step} ran in both runs at once: {first} and {second}"
