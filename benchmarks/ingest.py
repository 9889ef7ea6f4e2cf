"""Real-data ingestion speed: the importer and the live recorder, as ratios to references.

    python -m benchmarks.ingest [--rates 10 100 400 1600 6400] [--seconds 10] [--out benchmarks/ingest.json]

* ``import_vs_parse``: rebuilding books from the shared recording (``BookBuilder``: sync rules,
  20-level snapshots, landing frame) divided by only reading and JSON-parsing its lines.
* ``books_vs_offered`` per rate: books the recorder (``bmlt record`` in its own process, every
  update, no cadence sampling) wrote, divided by the depth updates the local replay server sent
  it over the same span, with the recorder's CPU use. Binance sends 10 updates/s per symbol (the
  @100ms stream), so a rate of 10·N stands for N symbols. The server replays the recording as
  often as needed (ids shifted so the chain continues) from a thread of this process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml

from bmlt_assets.core.sources.binance.sync import BookBuilder, read_recording
from tests.helpers import TINY, real_recording
from tests.replay_server import ThreadedReplayServer

BIN = Path(sys.executable).parent


def bench_import() -> dict:
    recording = real_recording()
    started = time.perf_counter()
    lines = sum(1 for _ in read_recording(recording))
    parse_s = time.perf_counter() - started
    started = time.perf_counter()
    builder = BookBuilder("spot", 20)
    builder.feed(read_recording(recording))
    frame = builder.frame()
    import_s = time.perf_counter() - started
    updates = builder.summary.updates_applied + builder.summary.updates_dropped
    return {
        "lines": lines,
        "depth_updates": updates,
        "snapshots": frame.height,
        "parse_s": round(parse_s, 3),
        "import_s": round(import_s, 3),
        "updates_per_s": round(updates / import_s),
        "lines_per_s_parse_only": round(lines / parse_s),
        "import_vs_parse": round(import_s / parse_s, 2),
    }


def _config(folder: Path, server) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    raw["data"] = {
        "source": "binance",
        "symbols": ["BTC/USDT"],
        "start_date": "2025-01-06",
        "end_date": "2025-01-07",
        "cadence_ms": 1000,
        "depth": 20,
        "binance": {"rest_url": server.rest_url, "ws_url": server.ws_url},
    }
    raw["labels"]["target_symbol"] = "BTC/USDT"
    raw["recording"] = {"cadence_ms": 0, "flush_s": 2.0}
    raw["storage"] = {"uri": str(folder / "data")}
    path = folder / "record.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def record_replay(rate: float | None, repeat: int, seconds: float) -> dict:
    """``bmlt record`` (every update, in its own process) against a replay server paced at
    ``rate`` updates/s, for ``seconds`` of streaming or until the replay ends."""
    replay = ThreadedReplayServer(real_recording(), rate=rate, repeat=repeat, keep_truth=False)
    server = replay.server
    with tempfile.TemporaryDirectory() as folder:
        process = subprocess.Popen(
            [str(BIN / "bmlt"), "record", "--config", str(_config(Path(folder), server)), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started = time.perf_counter()
        while server.sent == 0:
            if process.poll() is not None or time.perf_counter() - started > 60:
                process.kill()
                raise RuntimeError(f"the recorder did not start streaming: {process.communicate()[1]}")
            time.sleep(0.01)
        cpu_from, wall_from, sent_from = process_cpu_s(process.pid), time.perf_counter(), server.sent
        deadline = wall_from + seconds
        while server.sent < len(server.updates) and time.perf_counter() < deadline:
            time.sleep(0.01)
        cpu_s, wall_s, sent = (
            process_cpu_s(process.pid) - cpu_from,
            time.perf_counter() - wall_from,
            server.sent - sent_from,
        )
        time.sleep(0.5)  # let the last books arrive
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
        replay.close()
        if process.returncode != 0:
            raise RuntimeError(err)
        summary = json.loads(out)
        books = pl.concat([pl.read_parquet(f) for f in Path(folder).rglob("*.parquet")])
    ids = books["update_id"]
    offered = sum(1 for update in server.updates if ids.min() <= update["u"] <= ids.max())
    span_s = (books["receive_ts"].max() - books["receive_ts"].min()) / 1e9
    return {
        "paced_at": rate,
        "offered_per_s": round(offered / span_s, 1),
        "books_per_s": round(books.height / span_s, 1),
        # Books written / updates the server sent between the first and the last one written: below
        # 1, ccxt coalesced updates that arrived while the recorder was busy.
        "books_vs_offered": round(books.height / offered, 3),
        # The recorder process's CPU while the server streamed (startup excluded), and per update
        # (which includes the fixed cost of timers and flushes, so it falls as the rate rises).
        "cpu_percent": round(100 * cpu_s / wall_s, 1),
        "cpu_us_per_update": round(1e6 * cpu_s / sent, 1),
        "gaps": len(summary["gaps"]),
        "reconnects": summary["reconnects"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=[10, 100, 400, 0],
        help="updates/s offered (Binance: 10/s per symbol); 0: as fast as the server can",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="streaming seconds per rate")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/ingest.json"))
    args = parser.parse_args()
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "import": bench_import(),
        "recorder": [
            record_replay(rate or None, repeat=int((rate or 20_000) * args.seconds / 3449) + 1, seconds=args.seconds)
            for rate in args.rates
        ],
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
