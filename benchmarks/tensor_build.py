"""Measured tensor builds in a fresh process, so peak RSS belongs to them alone.

    python -m benchmarks.tensor_build RAW_FOLDER DAYS DEPTH CADENCE_MS LEVELS [REPEATS]

Builds the DAYS days once (the "cold" build: the first in a process), then the first day REPEATS
more times, resetting the peak before each (the "steady" builds, as every later day of a backfill
sees them). Prints JSON: seconds of the cold build, its peak RSS added, the median peak RSS added
by a steady build, and the output bytes of one day.

The cold peak carries about 100 MB that does not grow with the data: pages of Arrow's and numpy's
libraries touched for the first time, and allocator arenas that glibc and Arrow keep for reuse.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from statistics import median

from bmlt_assets.core.config import RepresentationConfig
from bmlt_assets.core.representation import day_tensors_from_parquet

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS and return that RSS.

    Imports peak higher than the build itself; only the build's own peak is of interest.
    """
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def main() -> None:
    folder, days, depth, cadence_ms, levels = Path(sys.argv[1]), *map(int, sys.argv[2:6])
    repeats = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    representation = RepresentationConfig(
        kind="hybrid",
        raw_levels=min(levels, depth) // 2,
        bucket_count=levels - min(levels, depth) // 2,
        bucket_max_bps=max(25.0, depth * 1.2),
    )

    def build(day: int) -> int:
        date = dt.date(2025, 1, 6) + dt.timedelta(days=day)
        arrays = day_tensors_from_parquet(
            folder / f"{date}.parquet", date, SYMBOLS, cadence_ms, cadence_ms, representation
        )
        return sum(a.nbytes for a in arrays.values())

    baseline = reset_peak_rss()
    started = time.perf_counter()
    output = max(build(day) for day in range(days))
    seconds = time.perf_counter() - started
    cold = _status_bytes("VmHWM") - baseline
    steady = []
    for _ in range(repeats):
        baseline = reset_peak_rss()
        build(0)
        steady.append(_status_bytes("VmHWM") - baseline)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_added": cold,
                "steady_peak_rss_added": median(steady) if steady else None,
                "output_bytes": output,
            }
        )
    )


if __name__ == "__main__":
    main()
