"""The benchmark harness: every figure is a ratio against a reference measured in the same run.

    python -m benchmarks.run [--quick] [--out benchmarks/results.json]

* ``tensor_build_vs_read``: building one day's book_tensors from the raw partition, divided by
  reading that partition into Arrow (target <= 3); and the build's peak RSS over its output bytes
  (target <= 2).
* ``sampling_vs_train_step``: windowed batches per second the dataset delivers, divided by training
  steps per second of the default model at the same batch size (target >= 10); and the dataset's
  resident memory over the base array's bytes (target <= 1.2).
* ``train_vs_reference``: training samples per second of our model as the default config trains
  it over a plain PyTorch DeepLOB on the same input, batch and 2 threads (target >= 1.5 in fp32),
  and the same at the published DeepLOB's own size, for each speed option; plus inference latency
  per batch (benchmarks/gpu_throughput.py, which also runs on a GPU).
* ``scaling``: tensor build time and peak memory for 1, 2 and 4 days and 20, 100 and 1000 levels.
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
from statistics import median

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import torch
import yaml
from torch import nn

from benchmarks.gpu_throughput import deeplob_size_comparison, default_config_comparison, measure
from benchmarks.tensor_build import SYMBOLS
from bmlt_assets.core.book import validate_snapshots
from bmlt_assets.core.config import load_config
from bmlt_assets.core.dataset import build_dataset, load_dataset, save_dataset
from bmlt_assets.core.days import DayTensors, label_days
from bmlt_assets.core.files import write_parquet
from bmlt_assets.core.representation import day_tensors_from_parquet
from bmlt_assets.core.sources.synthetic import SyntheticMarket
from bmlt_assets.core.train import build_model

ROOT = Path(__file__).resolve().parent.parent
START = dt.date(2025, 1, 6)


def timed(fn, repeat: int = 3) -> float:
    """Median wall seconds of ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return median(samples)


def write_raw_days(folder: Path, days: int, depth: int, cadence_ms: int) -> None:
    config = load_config(ROOT / "configs" / "default.yaml")
    market = SyntheticMarket(config.data.synthetic, seed=1, cadence_ms=cadence_ms, depth=depth)
    for i in range(days):
        date = START + dt.timedelta(days=i)
        path = folder / f"{date}.parquet"
        if not path.exists():
            clean, _ = validate_snapshots(pl.concat([market.simulate(date, s) for s in SYMBOLS]))
            write_parquet(clean, path)


def measured_build(folder: Path, days: int, depth: int, cadence_ms: int, levels: int, repeats: int = 0) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.tensor_build",
            str(folder),
            str(days),
            str(depth),
            str(cadence_ms),
            str(levels),
            str(repeats),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout)


def tensor_build_vs_read(folder: Path, cadence_ms: int) -> dict:
    write_raw_days(folder, 1, 20, cadence_ms)
    path = folder / f"{START}.parquet"
    read = timed(lambda: pq.read_table(path))
    build = timed(
        lambda: day_tensors_from_parquet(
            path, START, SYMBOLS, cadence_ms, cadence_ms, load_config(ROOT / "configs" / "default.yaml").representation
        )
    )
    memory = measured_build(folder, 1, 20, cadence_ms, 10, repeats=5)
    return {
        "read_s": read,
        "build_s": build,
        "ratio": build / read,
        "target": "<= 3",
        "peak_rss_over_output": memory["steady_peak_rss_added"] / memory["output_bytes"],
        "cold_peak_rss_over_output": memory["peak_rss_added"] / memory["output_bytes"],
        "memory_target": "<= 2 (steady: a later day in the same process)",
        "raw_bytes": path.stat().st_size,
        "output_bytes": memory["output_bytes"],
    }


def sampling_vs_train_step(folder: Path, quick: bool) -> dict:
    config = load_config(ROOT / "configs" / "default.yaml")
    if quick:
        config = config.model_copy(update={"data": config.data.model_copy(update={"cadence_ms": 5000})})
    d = config.data
    market = SyntheticMarket(d.synthetic, config.seed, d.cadence_ms, d.depth)
    days = [
        DayTensors.from_frame(pl.concat([market.simulate(date, s) for s in d.symbols]), date, config)
        for date in d.dates
    ]
    dataset_dir = folder / "dataset"
    dataset_dir.mkdir(exist_ok=True)
    save_dataset([build_dataset(label_days(days, config), config)], dataset_dir, config)
    del days

    config_path = folder / "sampling.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.sampling", str(dataset_dir), str(config_path), str(100 if quick else 400)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    sampling = json.loads(out.stdout)
    data = load_dataset(dataset_dir, config)
    batch = config.training.batch_size
    picks = [np.random.default_rng(0).choice(data.parts["train"].steps, batch)]
    torch.set_num_threads(config.training.threads or os.cpu_count() or 1)
    model = build_model(config, data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    windows, calendar = (torch.from_numpy(a) for a in data.source.inputs(picks[0]))
    target = torch.from_numpy(data.parts["train"].classes[:batch])

    def step() -> None:
        logits = model(windows, calendar)
        loss = sum(nn.functional.cross_entropy(logits[:, h], target[:, h]) for h in range(logits.shape[1]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    n_steps = 10 if quick else 40
    steps_per_s = n_steps / timed(lambda: [step() for _ in range(n_steps)], repeat=1)
    return {
        "batches_per_s": sampling["batches_per_s"],
        "train_steps_per_s": steps_per_s,
        "ratio": sampling["batches_per_s"] / steps_per_s,
        "target": ">= 10",
        "resident_over_base": sampling["resident_added"] / sampling["base_bytes"],
        "memory_target": "<= 1.2",
        "base_bytes": sampling["base_bytes"],
        "batch_size": batch,
    }


def train_vs_reference(quick: bool) -> dict:
    """Our model as the default config trains it, and at the published DeepLOB's own size, against
    plain DeepLOBs on the same input, batch and threads (benchmarks/gpu_throughput.py, on the CPU)."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    config = load_config(ROOT / "configs" / "default.yaml")
    steps, rounds = (3, 9) if quick else (3, 25)  # many short rounds: a burst of load spoils few
    # torch.compile: full mode only, compiling alone takes minutes on 2 cores.
    extra = ("eager", "bf16_autocast") if quick else ("eager", "bf16_autocast", "torch_compile")
    cpu, training = torch.device("cpu"), config.training
    default = measure(default_config_comparison(config, training.batch_size), cpu, training, steps, rounds, extra)
    deeplob_size = measure(deeplob_size_comparison(training.batch_size), cpu, training, steps, rounds, extra)
    return {
        "threads": torch.get_num_threads(),
        "default_config": default,
        "deeplob_size": deeplob_size,
        "ratio": default["ratio"]["shipped"],
        "target": ">= 1.5 (default config, fp32)",
    }


def scaling(folder: Path, quick: bool) -> list[dict]:
    cadence = 10_000 if quick else 2_000
    rows = []
    for days in (1, 2) if quick else (1, 2, 4):
        write_raw_days(folder / "d20", days, 20, cadence)
        rows.append({"days": days, "levels": 20, **measured_build(folder / "d20", days, 20, cadence, 10)})
    for depth in (20, 100) if quick else (20, 100, 1000):
        cad = cadence if depth < 1000 else cadence * 5
        write_raw_days(folder / f"d{depth}", 1, depth, cad)
        rows.append(
            {
                "days": 1,
                "levels": depth,
                "cadence_ms": cad,
                **measured_build(folder / f"d{depth}", 1, depth, cad, min(depth, 40)),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small inputs: every ratio in a few minutes")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = {
            "mode": "quick" if args.quick else "full",
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "torch": torch.__version__,
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            },
            "tensor_build_vs_read": tensor_build_vs_read(folder, 5_000 if args.quick else 1_000),
            "sampling_vs_train_step": sampling_vs_train_step(folder, args.quick),
            "train_vs_reference": train_vs_reference(args.quick),
            "scaling": scaling(folder, args.quick),
        }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for name in ("tensor_build_vs_read", "sampling_vs_train_step", "train_vs_reference"):
        r = results[name]
        extra = (
            f", memory {r['peak_rss_over_output' if 'peak_rss_over_output' in r else 'resident_over_base']:.2f}"
            if name != "train_vs_reference"
            else f" (DeepLOB size {r['deeplob_size']['ratio']['shipped']:.2f})"
        )
        print(f"{name:<24} ratio {r['ratio']:.2f} (target {r['target']}){extra}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
