"""One training epoch over a month of data: memory bounded by the base arrays, not by the samples.

    python -m benchmarks.month_epoch [--days 30] [--samples 20000 0] [--out benchmarks/month_epoch.json]

Builds ``--days`` synthetic days of the default config (3 symbols at 1 s) into a saved dataset,
then trains one epoch in a fresh process per entry of ``--samples`` (0 = the whole training part)
and reports samples/s and the peak resident memory the process added over its start, divided by
the bytes of the memory-mapped base array. Windows are cut from the base array batch by batch,
so the ratio must not grow with the number of samples.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.seeds import build_data
from benchmarks.tensor_build import _status_bytes
from bmlt_assets.core.config import PlatformConfig, load_config
from bmlt_assets.core.dataset import load_dataset
from bmlt_assets.core.train import train

ROOT = Path(__file__).resolve().parent.parent


def month_config(days: int, samples: int) -> PlatformConfig:
    raw = load_config(ROOT / "configs" / "default.yaml").model_dump(mode="json")
    start = dt.date.fromisoformat(raw["data"]["start_date"])
    raw["data"]["end_date"] = (start + dt.timedelta(days=days - 1)).isoformat()
    raw["training"] |= {"epochs": 1, "threads": 2, "progress_bar": False, "max_train_samples": samples or None}
    return PlatformConfig.model_validate(raw)


def one_epoch(folder: Path, days: int, samples: int) -> dict:
    """In this (fresh) process: open the dataset memory-mapped and train one epoch."""
    config = month_config(days, samples)
    started_rss = _status_bytes("VmRSS")
    data = load_dataset(folder, config)
    started = time.perf_counter()
    result = train(config, data)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report its parent's peak.
    peak = _status_bytes("VmHWM")
    return {
        "train_samples": len(data.parts["train"]) if not samples else min(samples, len(data.parts["train"])),
        "epoch_s": result.history[0].seconds,  # the training pass and the validation pass
        "wall_s": time.perf_counter() - started,
        "samples_per_s": result.history[0].samples_per_s,
        "base_bytes": int(data.source.base.nbytes),
        "peak_rss_bytes": peak,
        "peak_rss_added_over_base": (peak - started_rss) / data.source.base.nbytes,
        # Heap versus mapped file pages (the base array's, reclaimable page cache) at the end of the epoch.
        "anonymous_bytes": _status_bytes("RssAnon"),
        "file_backed_bytes": _status_bytes("RssFile"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--samples", type=int, nargs="+", default=[20_000, 0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "month_epoch.json")
    parser.add_argument("--epoch-in", type=Path, help=argparse.SUPPRESS)  # the child process's mode
    args = parser.parse_args()
    if args.epoch_in:
        print(json.dumps(one_epoch(args.epoch_in, args.days, args.samples[0])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        build_data(month_config(args.days, 0), Path(tmp))
        build_s = time.perf_counter() - started
        print(f"{args.days} days built in {build_s:.0f} s", flush=True)
        runs = []
        for samples in args.samples:
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.month_epoch", "--days", str(args.days), "--samples", str(samples)]
                + ["--epoch-in", tmp],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = runs[-1]
            print(
                f"{r['train_samples']:,} samples: {r['samples_per_s']:.0f} samples/s, peak RSS "
                f"{r['peak_rss_bytes'] / 1e9:.2f} GB, added {r['peak_rss_added_over_base']:.2f}x the base array "
                f"({r['base_bytes'] / 1e9:.2f} GB); at the end {r['anonymous_bytes'] / 1e9:.2f} GB heap, "
                f"{r['file_backed_bytes'] / 1e9:.2f} GB mapped file pages",
                flush=True,
            )
    args.out.write_text(json.dumps({"days": args.days, "build_s": build_s, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
