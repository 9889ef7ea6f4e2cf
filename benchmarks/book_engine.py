"""The book engine at real size: CPU, wall time and peak memory against parsing alone, on tiled days.

    python -m benchmarks.book_engine [--data-dir DIR] [--lengths 1h 2h 24h] [--reference-lengths 1h]
                                     [--materialize] [--out benchmarks/book_engine.json]

The inputs are tiled from the real recording in tests/data (tests/tiled_recordings.py): tardis
``incremental_book_L2`` CSVs and ``bmlt record``-style binance-ws recordings, spot and USD-M, of
1 hour, 2 hours and a full day. They are written into ``--data-dir`` when missing (about 6 GB for
all of them) and never committed.

Every case runs in a fresh Python process that first imports everything and compiles the engine
on a tiny input (the run's fixed start-up), then measures what the case alone costs: wall time,
CPU time (user + system, every thread) and the process's peak RSS (``VmHWM`` from /proc at the
end; Linux carries ``ru_maxrss`` across exec, so that is not used). The figures are ratios
against a reference measured in the same run on the same file:

* tardis: the engine's one-second books (``incremental_books``, ``every_ms=1000``, 20 levels)
  over polars only reading the same columns of the same file (``pl.read_csv``, what the old
  engine's first step was);
* binance-ws: the engine's books of every update (``import_recordings``, 20 levels) over only
  parsing every line's JSON with orjson (the fastest parser measured here).

``--reference-lengths`` also runs the engine before issue 22 (tests/reference_books.py) on those
lengths; it holds the whole file in memory and sorts both sides after every update, so a full
day does not fit. ``--materialize`` runs a full USD-M day through ``dagster asset materialize``
of ``orderbook_snapshots`` on one core (``taskset -c 0``), its file placed in the tardis cache.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(os.environ.get("BMLT_BENCH_DATA", ROOT / ".bench-data"))
LEVELS = 20
EVERY_MS = 1000


FORMS = (("tardis", ["parse-csv", "engine-tardis"]), ("binance-ws", ["parse-json", "engine-ws"]))


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _parse_csv(path: Path, market: str) -> dict:
    import polars as pl

    from bmlt_assets.core.sources.tardis import INCREMENTAL_COLUMNS

    frame = pl.read_csv(path, columns=list(INCREMENTAL_COLUMNS), schema_overrides=INCREMENTAL_COLUMNS)
    return {"rows": frame.height}


def _parse_json(path: Path, market: str) -> dict:
    import orjson

    lines = 0
    with gzip.open(path, "rb") as stream:
        for line in stream:
            orjson.loads(line[line.index(b" ") + 1 :])
            lines += 1
    return {"lines": lines}


def _reference_tardis(path: Path, market: str) -> dict:
    from tests.reference_books import incremental_books

    books, summary = incremental_books(path, "BTC/USDT", market, LEVELS, EVERY_MS)
    return {"books": books.height, "updates": summary.updates_applied}


def _reference_ws(path: Path, market: str) -> dict:
    from tests.reference_books import replay_recordings

    books, summary = replay_recordings([path], market, LEVELS)
    return {"books": books.height, "updates": summary.updates_applied, "gaps": len(summary.gaps)}


def _engine_tardis(path: Path, market: str) -> dict:
    from bmlt_assets.core.sources.tardis import incremental_books

    books, summary = incremental_books(path, "BTC/USDT", market, LEVELS, EVERY_MS)
    return {"books": books.height, "updates": summary.updates_applied}


def _engine_ws(path: Path, market: str) -> dict:
    from bmlt_assets.core.sources.importer import import_recordings

    books, summary = import_recordings([path], "binance-ws", market, LEVELS)
    return {"books": books.height, "updates": summary.updates_applied, "gaps": len(summary.gaps)}


CASES = {
    "engine-tardis": _engine_tardis,
    "engine-ws": _engine_ws,
    "parse-csv": _parse_csv,
    "parse-json": _parse_json,
    "reference-tardis": _reference_tardis,
    "reference-ws": _reference_ws,
}


def run_case(case: str, path: Path, market: str) -> None:
    """In the child: warm up (imports, compilation) on a tiny file, then measure the case."""
    from tests.tiled_recordings import tiled_file

    form = "tardis" if case.endswith(("tardis", "csv")) else "binance-ws"
    warmup = tiled_file(path.parent, form, market, "warmup")
    CASES[case](warmup, market)
    startup_cpu, rss_before = cpu_s(), peak_rss_bytes()
    wall_from, cpu_from = time.perf_counter(), cpu_s()
    result = CASES[case](path, market)
    result |= {
        "wall_s": round(time.perf_counter() - wall_from, 2),
        "cpu_s": round(cpu_s() - cpu_from, 2),
        "startup_cpu_s": round(startup_cpu, 2),
        "peak_rss_mib": round(peak_rss_bytes() / 2**20),
        "startup_peak_rss_mib": round(rss_before / 2**20),
    }
    print(json.dumps(result))


def measure(case: str, path: Path, market: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.book_engine", "--case", case, "--file", str(path), "--market", market]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{case} on {path} failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{case:18} {path.name:32} {json.dumps(result)}", flush=True)
    return result


def watched_run(command: list[str], env: dict[str, str], cwd: Path) -> dict:
    """Run ``command`` (a ``dagster`` command), reading every 50 ms the peak RSS of it and its
    children; its wall and CPU seconds (children's rusage) and the largest of those peaks."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peaks: dict[int, int] = {}
    while process.poll() is None:
        for pid in [process.pid, *_descendants(process.pid)]:
            peaks[pid] = max(peaks.get(pid, 0), _vmhwm(pid))
        time.sleep(0.05)
    output = process.stdout.read().decode() if process.stdout else ""
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode:
        raise RuntimeError(f"{' '.join(command[:5])} failed:\n{output[-3000:]}")
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
        "peak_rss_mib": round(max(peaks.values()) / 2**20),
    }


def _descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(child) for child in children.read_text().split()] if children.exists() else []
    return found + [grandchild for child in found for grandchild in _descendants(child)]


def _vmhwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def materialize_day(
    data_dir: Path, market: str = "usdm", length: str = "24h", cores: str = "0", code_root: Path = ROOT
) -> list[dict]:
    """``dagster asset materialize`` of one tiled full day's orderbook_snapshots, pinned to ``cores``:
    the day as just downloaded (not verified yet), then again (verified before). Peak RSS: the
    largest VmHWM of the command's processes, read every 50 ms. ``code_root``: the checkout whose
    code runs (``benchmarks/landing_day.py --code-root``)."""
    import tempfile

    import yaml

    day_file = tiled_file_for(data_dir, "tardis", market, length)
    symbol = "BTC/USDT:USDT" if market == "usdm" else "BTC/USDT"
    runs = []
    with tempfile.TemporaryDirectory(dir=data_dir) as folder:
        root = Path(folder)
        raw = yaml.safe_load((ROOT / "configs" / "binance-history.yaml").read_text())
        raw["data"] |= {"market": market, "symbols": [symbol], "start_date": "2024-08-09", "end_date": "2024-08-10"}
        raw["data"]["tardis"] = {"endpoint": "http://127.0.0.1:9/v1", "download_dir": "tardis"}  # never asked
        raw["labels"]["target_symbol"] = symbol
        # The tiled USD-M book is crossed about 4 % of the time (tests/tiled_recordings.py), and a
        # shorter file covers part of the day: the blocking check runs, but on looser thresholds.
        raw["quality"] = {"min_coverage": 0.0, "max_quarantined_fraction": 0.2}
        raw["storage"] = {"uri": str(root / "data")}
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump(raw))
        exchange = "binance-futures" if market == "usdm" else "binance"
        cached = root / "data" / "tardis" / exchange / "incremental_book_L2" / "2024" / "08" / "09" / "BTCUSDT.csv.gz"
        cached.parent.mkdir(parents=True)
        cached.symlink_to(day_file)
        env = os.environ | {"BMLT_CONFIG": str(config), "DAGSTER_HOME": str(root), "TARDIS_API_KEY": "unused"}
        if code_root != ROOT:
            env["PYTHONPATH"] = str(code_root)
        command = ["taskset", "-c", cores, str(Path(sys.executable).parent / "dagster"), "asset", "materialize"]
        select = f"{raw['name']}/orderbook_snapshots"  # asset keys carry the config's name
        command += ["-m", "bmlt_assets.definitions", "--select", select, "--partition", "2024-08-09"]
        for label in ("first (not verified yet)", "again (verified before)"):
            measured = watched_run(command, env, code_root)
            import pyarrow.parquet as pq

            stored = [p for p in root.glob("data/**/*.parquet") if "snapshot" in str(p) and "quarantine" not in str(p)]
            books = sum(pq.ParquetFile(p).metadata.num_rows for p in stored)
            runs.append(
                {
                    "run": label,
                    "cores": cores,
                    **measured,
                    "books_stored": books,
                }
            )
            print(f"materialize {market} {length} {json.dumps(runs[-1])}", flush=True)
    return runs


def tiled_file_for(data_dir: Path, form: str, market: str, length: str) -> Path:
    from tests.tiled_recordings import tiled_file

    return tiled_file(data_dir, form, market, length)


def load() -> dict:
    """The machine's load when the run started (other work shares the 2 cores)."""
    return {"loadavg_1_5_15": list(os.getloadavg()), "cpus": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--lengths", nargs="+", default=["1h", "2h", "24h"])
    parser.add_argument("--reference-lengths", nargs="*", default=[])
    parser.add_argument("--markets", nargs="+", default=["usdm", "spot"])
    parser.add_argument("--materialize", action="store_true", help="also a full USD-M day through dagster, one core")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "book_engine.json")
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--market", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args.case, args.file, args.market)
        return
    from tests.tiled_recordings import tiled_file

    results: dict = {"machine": {"python": platform.python_version(), **load()}, "runs": []}
    for length in args.lengths:
        for market in args.markets:
            for form, cases in (
                ("tardis", ["parse-csv", "engine-tardis"]),
                ("binance-ws", ["parse-json", "engine-ws"]),
            ):
                path = tiled_file(args.data_dir, form, market, length)
                reference = "reference-tardis" if form == "tardis" else "reference-ws"
                if length in args.reference_lengths:
                    cases = [*cases, reference]
                for case in cases:
                    results["runs"].append(
                        {"form": form, "market": market, "length": length, "case": case} | measure(case, path, market)
                    )
    if args.materialize:
        results["materialize"] = materialize_day(args.data_dir)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
