"""The benchmark harness: every figure is a ratio against a reference measured in the same run.

    python -m benchmarks.run [--quick] [--out benchmarks/results.json]

* ``tensor_build_vs_read``: building one day's book_tensors from the raw partition, divided by
  reading that partition into Arrow (target <= 3); and the build's peak RSS over its output bytes
  (target <= 2).
* ``sampling_vs_train_step``: windowed batches per second the dataset delivers, divided by training
  steps per second of the default model at the same batch size (target >= 10); and the dataset's
  resident memory over the base array's bytes (target <= 1.2).
* ``train_vs_reference``: training samples per second of our DeepLOB (one asset, 10 levels,
  T=100, 3 classes) over a plain PyTorch DeepLOB written below, same batch, threads and input
  (target >= 1.0, aim 1.5), for each speed option; plus inference latency per batch.
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

from benchmarks.tensor_build import SYMBOLS
from bmlt_assets.core.book import validate_snapshots
from bmlt_assets.core.config import ModelConfig, load_config
from bmlt_assets.core.dataset import build_dataset, load_dataset, save_dataset
from bmlt_assets.core.files import write_parquet
from bmlt_assets.core.labels import forward_log_returns, trailing_volatility
from bmlt_assets.core.models import OrderBookClassifier
from bmlt_assets.core.representation import day_tensors_from_frame, day_tensors_from_parquet
from bmlt_assets.core.synthetic import SyntheticMarket
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


def measured_build(folder: Path, days: int, depth: int, cadence_ms: int, levels: int) -> dict:
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
    memory = measured_build(folder, 1, 20, cadence_ms, 10)
    return {
        "read_s": read,
        "build_s": build,
        "ratio": build / read,
        "target": "<= 3",
        "peak_rss_over_output": memory["peak_rss_added"] / memory["output_bytes"],
        "memory_target": "<= 2",
        "raw_bytes": path.stat().st_size,
        "output_bytes": memory["output_bytes"],
    }


def sampling_vs_train_step(folder: Path, quick: bool) -> dict:
    config = load_config(ROOT / "configs" / "default.yaml")
    if quick:
        config = config.model_copy(update={"data": config.data.model_copy(update={"cadence_ms": 5000})})
    d = config.data
    market = SyntheticMarket(d.synthetic, config.seed, d.cadence_ms, d.depth)
    days = []
    for date in d.dates:
        arrays = day_tensors_from_frame(
            pl.concat([market.simulate(date, s) for s in d.symbols]),
            date,
            d.symbols,
            d.cadence_ms,
            d.staleness_ms,
            config.representation,
        )
        arrays["returns"] = forward_log_returns(
            arrays["mids"], arrays["valid"], config.horizon_steps, len(arrays["mids"])
        )
        arrays["volatility"] = trailing_volatility(arrays["mids"], arrays["valid"], config.vol_lookback_steps)
        days.append(arrays)
    dataset_dir = folder / "dataset"
    dataset_dir.mkdir(exist_ok=True)
    save_dataset([build_dataset(days, config)], dataset_dir)
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


class PlainDeepLOB(nn.Module):
    """The reference: DeepLOB written the plain way (as in the authors' PyTorch notebook)."""

    def __init__(self, classes: int = 3):
        super().__init__()
        act = lambda: nn.LeakyReLU(negative_slope=0.01)  # noqa: E731
        self.conv1 = nn.Sequential(
            nn.Conv2d(1, 32, (1, 2), stride=(1, 2)),
            act(),
            nn.BatchNorm2d(32),
            nn.Conv2d(32, 32, (4, 1)),
            act(),
            nn.BatchNorm2d(32),
            nn.Conv2d(32, 32, (4, 1)),
            act(),
            nn.BatchNorm2d(32),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(32, 32, (1, 2), stride=(1, 2)),
            nn.Tanh(),
            nn.BatchNorm2d(32),
            nn.Conv2d(32, 32, (4, 1)),
            nn.Tanh(),
            nn.BatchNorm2d(32),
            nn.Conv2d(32, 32, (4, 1)),
            nn.Tanh(),
            nn.BatchNorm2d(32),
        )
        self.conv3 = nn.Sequential(
            nn.Conv2d(32, 32, (1, 10)),
            act(),
            nn.BatchNorm2d(32),
            nn.Conv2d(32, 32, (4, 1)),
            act(),
            nn.BatchNorm2d(32),
            nn.Conv2d(32, 32, (4, 1)),
            act(),
            nn.BatchNorm2d(32),
        )
        self.inp1 = nn.Sequential(
            nn.Conv2d(32, 64, (1, 1), padding="same"),
            act(),
            nn.BatchNorm2d(64),
            nn.Conv2d(64, 64, (3, 1), padding="same"),
            act(),
            nn.BatchNorm2d(64),
        )
        self.inp2 = nn.Sequential(
            nn.Conv2d(32, 64, (1, 1), padding="same"),
            act(),
            nn.BatchNorm2d(64),
            nn.Conv2d(64, 64, (5, 1), padding="same"),
            act(),
            nn.BatchNorm2d(64),
        )
        self.inp3 = nn.Sequential(
            nn.MaxPool2d((3, 1), stride=(1, 1), padding=(1, 0)),
            nn.Conv2d(32, 64, (1, 1), padding="same"),
            act(),
            nn.BatchNorm2d(64),
        )
        self.lstm = nn.LSTM(input_size=192, hidden_size=64, num_layers=1, batch_first=True)
        self.fc1 = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3(self.conv2(self.conv1(x)))
        x = torch.cat((self.inp1(x), self.inp2(x), self.inp3(x)), dim=1)
        x = x.permute(0, 2, 1, 3)
        x = torch.reshape(x, (-1, x.shape[1], x.shape[2]))
        x, _ = self.lstm(x)
        return torch.softmax(self.fc1(x[:, -1, :]), dim=1)


def _trainer(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, forward, autocast: bool = False):
    """A function that runs ``steps`` training steps and returns samples per second."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = forward(model, inputs)
        loss = nn.functional.cross_entropy(out.float(), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up (and compilation, for torch.compile)
        step()

    def rate(steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            step()
        return steps * inputs.shape[0] / (time.perf_counter() - started)

    return rate


def train_vs_reference(quick: bool, batch: int = 64) -> dict:
    """Rounds interleave the reference and every variant, so drifting machine load hits all alike."""
    torch.manual_seed(0)
    threads = min(2, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    steps, rounds = (5, 2) if quick else (15, 3)
    flat = torch.randn(batch, 1, 100, 40)
    book = flat.reshape(batch, 100, 10, 4, 1)
    target = torch.randint(0, 3, (batch,))
    config = ModelConfig(multi_asset="stacked", temporal="none")

    def ours(channels_last: bool = False, compiled: bool = False) -> nn.Module:
        model = OrderBookClassifier(config, levels=10, assets=1, horizons=1, classes=3)
        model = model.to(memory_format=torch.channels_last) if channels_last else model
        return torch.compile(model) if compiled else model

    def head(model, x):
        return model(x)[:, 0]

    trainers = {
        "reference": _trainer(PlainDeepLOB(), flat, target, lambda m, x: m(x)),
        "eager": _trainer(ours(), book, target, head),
        "channels_last": _trainer(ours(channels_last=True), book, target, head),
        "bf16_autocast": _trainer(ours(), book, target, head, autocast=True),
    }
    if not quick:  # compiling alone takes minutes on 2 cores
        trainers["torch_compile"] = _trainer(ours(compiled=True), book, target, head)
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(rounds):
        for name, rate in trainers.items():
            rates[name].append(rate(steps))
    reference = median(rates.pop("reference"))
    results = {
        "reference_samples_per_s": reference,
        "batch_size": batch,
        "threads": threads,
        "rounds": rounds,
        "variants": {},
    }
    for name, values in rates.items():
        results["variants"][name] = {"samples_per_s": median(values), "ratio": median(values) / reference}
    model = ours().eval()
    with torch.no_grad():
        model(book)
        latency = timed(lambda: model(book), repeat=5)
    results["inference_ms_per_batch"] = latency * 1e3
    results["ratio"] = results["variants"]["eager"]["ratio"]
    results["best"] = max(results["variants"], key=lambda k: results["variants"][k]["ratio"])
    results["target"] = ">= 1.0 (aim 1.5)"
    return results


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
            else f", best {r['best']}"
        )
        print(f"{name:<24} ratio {r['ratio']:.2f} (target {r['target']}){extra}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
