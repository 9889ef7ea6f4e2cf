"""Day-parallel backfills: 8 synthetic days of the ingest assets, multi_run against single_run.

    python -m benchmarks.backfill [--days 8] [--per-run 2] [--out benchmarks/backfill.json]

Both policies go the way a deployment's backfill goes, measured in the same invocation: submitted
as the UI or `bmlt backfill` submits one, cut into runs by the backfill daemon (`dagster-daemon run`,
a subprocess), queued by the QueuedRunCoordinator of deploy/instance/postgres/dagster.yaml on a
PostgreSQL on loopback (at most 2 runs of one backfill at once), each run in its own process with
in-process steps. Each policy gets a fresh database and data folder.

* ``wall_s``: from submitting the backfill (the daemon starts right after) to the end of its last
  run: what a user waits for. ``first_launch_to_end_s`` leaves out the daemon's start-up.
* ``run_s``: the runs' own durations, summed (start-up and work, without queueing).
* ``max_in_flight``: the most runs launched and not yet ended at one moment.
* ``single_vs_multi``: single_run's wall time divided by multi_run's (above 1: parallel is faster).

The data are the demo's (3 symbols, depth 20, 1 s cadence), so a day is a few seconds of work.
Under single_run the whole range is one run. Under multi_run, forward_returns of a run's last day
waits for the next run's tensors: it goes into a later run, which the daemon launches on a later
look at the backfill (every 30 s).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

from bmlt_assets.backfill import submit_asset_backfill
from bmlt_assets.core.config import PROJECT_ROOT, load_config
from bmlt_assets.definitions import build_definitions, daily_asset_keys
from bmlt_resources.dagster_private import BulkActionStatus
from tests.helpers import write_config
from tests.services import Postgres, running_postgres

BIN = Path(sys.executable).parent
START = dt.date(2025, 1, 6)
DEMO_DATA = {"symbols": ["BTC/USDT", "ETH/USDT", "SOL/USDT"], "cadence_ms": 1000, "depth": 20}


def _environment(postgres: Postgres, home: Path, config: Path) -> dict[str, str]:
    from urllib.parse import urlsplit

    url = urlsplit(postgres.create_database())
    return {
        "DAGSTER_HOME": str(home),
        "BMLT_CONFIG": str(config),
        "DAGSTER_PG_USERNAME": url.username or "",
        "DAGSTER_PG_PASSWORD": url.password or "",
        "DAGSTER_PG_HOST": url.hostname or "",
        "DAGSTER_PG_PORT": str(url.port),
        "DAGSTER_PG_DB": url.path.lstrip("/"),
    }


def run_backfill(postgres: Postgres, folder: Path, days: int, deployment: dict, timeout_s: float = 1800) -> dict:
    home = folder / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "deploy" / "instance" / "postgres" / "dagster.yaml").read_text())
    dates = [START + dt.timedelta(days=offset) for offset in range(days)]
    data = {**DEMO_DATA, "start_date": dates[0].isoformat(), "end_date": dates[-1].isoformat()}
    config = write_config(folder, {"data": data, "deployment": deployment})
    env = _environment(postgres, home, config)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    daemon = None
    try:
        instance = dg.DagsterInstance.get()
        definitions = build_definitions(config)
        # Submitted before the daemon starts, so that its first look at backfills finds it (it
        # looks every 30 s): both policies then pay the same daemon start-up, and no tick phase.
        submitted = time.time()
        backfill_id = submit_asset_backfill(instance, definitions, daily_asset_keys(load_config(config)), dates)
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-m", "bmlt_assets.definitions"],
            cwd=PROJECT_ROOT,
            env={**os.environ},
            stdout=(folder / "daemon.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        while instance.get_backfill(backfill_id).status == BulkActionStatus.REQUESTED:
            if time.time() - submitted > timeout_s or daemon.poll() is not None:
                raise RuntimeError(f"the backfill did not finish: {(folder / 'daemon.log').read_text()[-3000:]}")
            time.sleep(1)
        status = instance.get_backfill(backfill_id).status
        records = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        launched = {
            record.dagster_run.run_id: instance.all_logs(
                record.dagster_run.run_id, of_type=dg.DagsterEventType.RUN_STARTING
            )[0].timestamp
            for record in records
        }
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=60)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if status != BulkActionStatus.COMPLETED_SUCCESS:
        raise RuntimeError(f"backfill {backfill_id} ended {status}; see {folder / 'daemon.log'}")
    spans = [(launched[record.dagster_run.run_id], record.end_time or 0.0) for record in records]
    return {
        "runs": len(records),
        "wall_s": round(max(end for _, end in spans) - submitted, 1),
        "first_launch_to_end_s": round(max(end for _, end in spans) - min(start for start, _ in spans), 1),
        "run_s": round(sum((record.end_time or 0) - (record.start_time or 0) for record in records), 1),
        "max_in_flight": max(sum(start <= moment < end for start, end in spans) for moment, _ in spans),
        "ranges": sorted(
            f"{r.tags['dagster/asset_partition_range_start']}..{r.tags['dagster/asset_partition_range_end']} "
            f"{'+'.join(sorted(key.path[-1] for key in r.asset_selection or ()))}"
            for r in (record.dagster_run for record in records)
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--per-run", type=int, default=2, help="multi_run's partitions_per_run")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "benchmarks" / "backfill.json")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    results = {}
    with running_postgres() as postgres, tempfile.TemporaryDirectory(prefix="bmlt-backfill-") as scratch:
        for name, deployment in (
            ("single_run", {"backfill": "single_run"}),
            ("multi_run", {"backfill": "multi_run", "partitions_per_run": args.per_run}),
        ):
            results[name] = run_backfill(postgres, Path(scratch) / name, args.days, deployment)
            print(name, json.dumps(results[name]), flush=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_before": [round(load, 2) for load in load_before],
        "load_average_after": [round(load, 2) for load in os.getloadavg()],
        "days": args.days,
        "partitions_per_run": args.per_run,
        "data": DEMO_DATA,
        **results,
        "single_vs_multi": round(results["single_run"]["wall_s"] / results["multi_run"]["wall_s"], 2),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
