"""Ingest to S3 (a moto_server on loopback) against local disk, measured in one run.

    python -m benchmarks.object_storage [--days 3] [--cadence-ms 1000] [--rounds 2] [--out FILE.json]

The ingest assets (orderbook_snapshots, book_tensors, forward_returns with their checks) of
``--days`` synthetic days of configs/default.yaml's market, materialized in one Dagster run, into
``storage.uri`` = a fresh local folder and = a fresh ``s3://`` prefix on a moto_server this script
starts (tests/services.running_moto). The two take turns for ``--rounds`` rounds, so that load
elsewhere on the machine hits them alike; the summary is each one's median wall time and their
ratio. The S3 side pays for its PUTs and for staging the tensors it reads back (forward_returns
memory-maps the day and the next). moto is a single Python process on this machine: a real S3 adds
network latency and bandwidth limits and takes away moto's CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import dagster as dg
import yaml

from bmlt_assets.core.config import PROJECT_ROOT, load_config
from bmlt_assets.definitions import CHECKS, INGEST_ASSETS, build_resources
from bmlt_assets.partitions import range_tags
from tests.services import running_moto

START = dt.date(2025, 1, 6)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def write_config(folder: Path, days: int, cadence_ms: int, storage: dict) -> Path:
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "default.yaml").read_text())
    end = START + dt.timedelta(days=days - 1)
    raw["data"] |= {"start_date": START.isoformat(), "end_date": end.isoformat(), "cadence_ms": cadence_ms}
    raw["storage"] = {**storage, "cache_dir": str(folder / "cache")}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def ingest(config_path: Path) -> float:
    """Wall seconds of one run materializing the ingest assets over the config's days."""
    config = load_config(config_path)
    started = time.perf_counter()
    result = dg.materialize(
        INGEST_ASSETS + CHECKS,
        selection=INGEST_ASSETS,
        resources=build_resources(config_path),
        instance=dg.DagsterInstance.ephemeral(),
        tags=range_tags(config.data.start_date, config.data.end_date),
    )
    seconds = time.perf_counter() - started
    if not result.success:
        raise RuntimeError(f"the ingest of {config_path} failed")
    return seconds


def local_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def bucket_bytes(client, bucket: str, prefix: str) -> tuple[int, int]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    sizes = [item["Size"] for page in pages for item in page.get("Contents", [])]
    return len(sizes), sum(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--cadence-ms", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "benchmarks" / "object_storage.json")
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)  # moto takes any key; a real bucket's come from the environment too
    os.environ.setdefault("DAGSTER_HOME", tempfile.mkdtemp(prefix="bmlt-bench-dagster-"))
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict]] = {"local": [], "s3": []}
    with running_moto() as endpoint, tempfile.TemporaryDirectory() as tmp:
        client = boto3.client("s3", endpoint_url=endpoint)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        for k in range(args.rounds):
            for backend in runs:
                folder = Path(tmp) / f"{backend}-{k}"
                folder.mkdir()
                if backend == "local":
                    storage = {"uri": str(folder / "data")}
                else:
                    storage = {"uri": f"s3://{bucket}/round{k}", "endpoint_url": endpoint}
                seconds = ingest(write_config(folder, args.days, args.cadence_ms, storage))
                if backend == "local":
                    objects = sum(1 for p in (folder / "data").rglob("*") if p.is_file())
                    stored = local_bytes(folder / "data")
                else:
                    objects, stored = bucket_bytes(client, bucket, f"round{k}/")
                runs[backend].append({"seconds": round(seconds, 2), "objects": objects, "bytes": stored})
                print(backend, runs[backend][-1], flush=True)
    median = {backend: statistics.median(run["seconds"] for run in done) for backend, done in runs.items()}
    stored_mb = runs["s3"][-1]["bytes"] / 1e6
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average": {"start": load_at_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": {
            "base": "configs/default.yaml (3 symbols, depth 20, hybrid 5+5 levels)",
            "days": args.days,
            "cadence_ms": args.cadence_ms,
            "assets": [asset.key.to_user_string() for asset in INGEST_ASSETS],
        },
        "median_seconds": median,
        "s3_vs_local": round(median["s3"] / median["local"], 2),
        "stored_mb": round(stored_mb, 1),
        "s3_mb_per_s_of_ingest": round(stored_mb / median["s3"], 1),
        "runs": runs,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
