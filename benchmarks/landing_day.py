"""A landing-zone day at real size: ``bmlt import`` and ``orderbook_snapshots`` (with its check), peak memory.

    python -m benchmarks.landing_day [--data-dir DIR] [--lengths 1h 2h 24h] [--markets usdm spot]
                                     [--tardis] [--code-root DIR] [--out benchmarks/landing_day.json]

The inputs are the tiled binance-ws recordings of ``benchmarks/book_engine.py`` (written into
``--data-dir`` when missing). For each market and length:

* **import**: ``bmlt import`` of the recording at 20 levels (what ``bmlt_assets.cli.main`` runs)
  in a fresh process, warmed up on a 20-second file first (imports, compiled code); CPU, wall
  and the process's peak RSS (``VmHWM``). Every update's book lands in the landing zone.
* **snapshots**: ``dagster asset materialize --select <name>/orderbook_snapshots --partition
  2024-08-09`` on that landing zone (its blocking check ``snapshots_are_sound`` included), on
  one core (``taskset -c 0``); CPU and the largest ``VmHWM`` of the command's processes, read
  every 50 ms.

``--tardis`` also materializes the tiled 24-hour USD-M ``incremental_book_L2`` day from the
tardis cache, first as just downloaded (unverified) and then again (``book_engine.materialize_day``).

``--code-root DIR`` runs the same commands on the code in DIR (a checkout of another commit, e.g.
``git worktree add /tmp/before <commit>``): its ``bmlt_assets`` is imported and its
``definitions`` loaded, with this checkout's interpreter and packages. That is how the figures
before a change are measured in the same run and on the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a file by --code-root's children
    sys.path.append(str(ROOT))

from benchmarks.book_engine import DEFAULT_DATA, cpu_s, load, materialize_day, peak_rss_bytes, watched_run  # noqa: E402

DAY = "2024-08-09"  # the tiled files' day (tests/tiled_recordings.py)
LEVELS = 20
CONFIG_NAME = "landing-bench"


def write_config(folder: Path, market: str) -> Path:
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "binance.yaml").read_text())
    raw["name"] = CONFIG_NAME
    raw["data"] |= {"market": market, "symbols": ["BTC/USDT"], "start_date": DAY, "end_date": "2024-08-10"}
    raw["labels"]["target_symbol"] = "BTC/USDT"
    # The tiled USD-M book is crossed about 4 % of the time (tests/tiled_recordings.py), and a
    # shorter file covers part of the day: the blocking check runs, but on looser thresholds.
    raw["quality"] = {"min_coverage": 0.0, "max_quarantined_fraction": 0.2}
    raw["storage"] = {"uri": str(folder / "data")}
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def run_import(recording: Path, warmup: Path, market: str, folder: Path) -> None:
    """In the child: import the warm-up file into a scratch landing zone, then the recording."""
    from bmlt_assets.cli import main

    def imported(path: Path, into: Path) -> None:
        config = write_config(into, market)
        arguments = ["import", str(path), "--config", str(config), "--market", market, "--levels", str(LEVELS)]
        code = main([*arguments, "--json", "--log-level", "WARNING"])
        if code:
            raise SystemExit(f"bmlt import exited {code}")

    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        imported(warmup, Path(scratch))
    rss_before, wall_from, cpu_from = peak_rss_bytes(), time.perf_counter(), cpu_s()
    imported(recording, folder)
    result = {
        "wall_s": round(time.perf_counter() - wall_from, 2),
        "cpu_s": round(cpu_s() - cpu_from, 2),
        "peak_rss_mib": round(peak_rss_bytes() / 2**20),
        "startup_peak_rss_mib": round(rss_before / 2**20),
    }
    print(json.dumps(result))


def child_env(code_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    if code_root != ROOT:
        env["PYTHONPATH"] = str(code_root)
    return env


def measure_import(recording: Path, warmup: Path, market: str, folder: Path, code_root: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--case", "import", "--file", str(recording)]
    command += ["--warmup", str(warmup), "--market", market, "--folder", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=code_root, env=child_env(code_root))
    if done.returncode:
        raise RuntimeError(f"import of {recording} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    landing = sorted((folder / "data" / "landing").rglob("*.parquet"))
    result |= {
        "books": sum(pq.ParquetFile(path).metadata.num_rows for path in landing),
        "landing_mib": round(sum(path.stat().st_size for path in landing) / 2**20, 1),
    }
    return result


def measure_snapshots(folder: Path, code_root: Path, cores: str = "0") -> dict:
    """``dagster asset materialize`` of the landing day's orderbook_snapshots, pinned to ``cores``."""
    env = child_env(code_root) | {"BMLT_CONFIG": str(folder / "config.yaml"), "DAGSTER_HOME": str(folder)}
    command = ["taskset", "-c", cores, str(Path(sys.executable).parent / "dagster"), "asset", "materialize"]
    select = f"{CONFIG_NAME}/orderbook_snapshots"  # asset keys carry the config's name
    command += ["-m", "bmlt_assets.definitions", "--select", select, "--partition", DAY]
    measured = watched_run(command, env, code_root)
    store = folder / "data" / CONFIG_NAME
    stored = pq.ParquetFile(store / "snapshots" / f"date={DAY}.parquet").metadata.num_rows
    quarantine = store / "quarantine" / f"date={DAY}.parquet"
    return {
        "cores": cores,
        **measured,
        "books_stored": stored,
        "quarantined": pq.ParquetFile(quarantine).metadata.num_rows if quarantine.exists() else 0,
        "check_passed": json.loads((store / "snapshot_checks" / f"date={DAY}.json").read_text())["passed"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--lengths", nargs="*", default=["1h", "2h", "24h"])
    parser.add_argument("--markets", nargs="+", default=["usdm", "spot"])
    parser.add_argument("--tardis", action="store_true", help="also the 24 h USD-M tardis day, unverified then again")
    parser.add_argument("--code-root", type=Path, default=ROOT)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "landing_day.json")
    parser.add_argument("--case", choices=["import"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--market", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_import(args.file, args.warmup, args.market, args.folder)
        return
    from tests.tiled_recordings import tiled_file

    code_root = args.code_root.resolve()
    results: dict = {
        "machine": {"python": platform.python_version(), **load()},
        "code_root": str(code_root),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=code_root
        ).stdout.strip(),
        "runs": [],
    }
    for length in args.lengths:
        for market in args.markets:
            recording = tiled_file(args.data_dir, "binance-ws", market, length)
            warmup = tiled_file(args.data_dir, "binance-ws", market, "warmup")
            with tempfile.TemporaryDirectory(dir=args.data_dir) as scratch:
                folder = Path(scratch)
                imported = measure_import(recording, warmup, market, folder, code_root)
                print(f"import     {market} {length} {json.dumps(imported)}", flush=True)
                snapshots = measure_snapshots(folder, code_root)
                print(f"snapshots  {market} {length} {json.dumps(snapshots)}", flush=True)
            results["runs"].append({"market": market, "length": length, "import": imported, "snapshots": snapshots})
    if args.tardis:
        results["tardis_materialize"] = materialize_day(args.data_dir, code_root=code_root)
    results["machine"]["load_at_end"] = list(os.getloadavg())
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
