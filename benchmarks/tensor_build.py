"""One measured tensor build in a fresh process, so peak RSS belongs to it alone.

    python -m benchmarks.tensor_build RAW.parquet DAYS DEPTH CADENCE_MS LEVELS

Prints JSON: build seconds, peak RSS added by the build, and the output bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

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
    folder, days, depth, cadence_ms, levels = (
        Path(sys.argv[1]),
        int(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
        int(sys.argv[5]),
    )
    representation = RepresentationConfig(
        kind="hybrid",
        raw_levels=min(levels, depth) // 2,
        bucket_count=levels - min(levels, depth) // 2,
        bucket_max_bps=max(25.0, depth * 1.2),
    )
    baseline = reset_peak_rss()
    started = time.perf_counter()
    output = 0
    for i in range(days):
        date = dt.date(2025, 1, 6) + dt.timedelta(days=i)
        arrays = day_tensors_from_parquet(
            folder / f"{date}.parquet", date, SYMBOLS, cadence_ms, cadence_ms, representation
        )
        output = max(output, sum(a.nbytes for a in arrays.values()))
        del arrays
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_rss_added": _status_bytes("VmHWM") - baseline, "output_bytes": output}))


if __name__ == "__main__":
    main()
