"""DistributedDataParallel on CPU ranks against one process, in training samples/s, in one run.

    python -m benchmarks.ddp [--samples 3072] [--epochs 3] [--rounds 2] [--out benchmarks/ddp.json]

Builds one synthetic day of the default config into a saved (memory-mapped) dataset, then trains
the same config, with the same global batch of 64 on the same samples, three ways, each in a
fresh process:

- ``1 process, 1 thread`` and ``1 process, 2 threads``: ``core.train.train``, as
  ``training.launcher: inprocess`` runs it;
- ``torchrun, 2 gloo ranks x 1 thread``: ``torchrun --standalone --nproc_per_node 2 -m
  bmlt_assets.training.training_worker``, the worker ``trained_model`` launches (here without Dagster).

For each: the training pass's samples/s per epoch, the epoch with its validation pass, the whole
process with its start-up, and the last validation log loss. The ways take turns for ``--rounds``
rounds, so that a burst of load elsewhere on the machine hits them alike; the summary is the median
samples/s over every epoch but the first (which warms up) of every round.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.seeds import build_data
from bmlt_assets.core.config import PlatformConfig, load_config
from bmlt_assets.core.dataset import load_dataset
from bmlt_assets.core.train import save_result, train
from bmlt_assets.training.training_worker import TrainingJob

ROOT = Path(__file__).resolve().parent.parent
WAYS = {  # name: the training fields that differ
    "1 process, 1 thread": {"threads": 1},
    "1 process, 2 threads": {"threads": 2},
    "torchrun, 2 gloo ranks x 1 thread": {"threads": 1, "launcher": "torchrun", "nproc_per_node": 2},
}


def bench_config(samples: int, epochs: int, **training: object) -> PlatformConfig:
    raw = load_config(ROOT / "configs" / "default.yaml").model_dump(mode="json")
    raw["data"]["end_date"] = raw["data"]["start_date"]
    raw["training"] |= {
        "epochs": epochs,
        "early_stopping_patience": epochs,  # every epoch runs
        "max_train_samples": samples,
        "progress_bar": False,
        **training,
    }
    return PlatformConfig.model_validate(raw)


def run_one(folder: Path, config: PlatformConfig, out: Path) -> dict:
    job = TrainingJob(
        config.model_dump_json(), str(folder), -1, str(out), "", ""
    )  # no resumable state: each run trains
    if config.training.launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc_per_node={config.training.nproc_per_node}", "-m", "bmlt_assets.training.training_worker"]
    else:
        command = [sys.executable, "-m", "benchmarks.ddp", "--inprocess"]
    started = time.perf_counter()
    subprocess.run([*command, job.to_json()], check=True)
    wall = time.perf_counter() - started
    history = torch.load(out, weights_only=True)["history"]
    return {
        "samples_per_s": [round(r["samples_per_s"], 1) for r in history],
        "epoch_s": [round(r["seconds"], 2) for r in history],
        "process_wall_s": round(wall, 1),
        "final_val_log_loss": round(history[-1]["val_log_loss"], 4),
    }


def inprocess(job: TrainingJob) -> None:
    """The one-process baseline, in this fresh process."""
    config = PlatformConfig.model_validate_json(job.config_json)
    save_result(train(config, load_dataset(Path(job.dataset_dir), config)), Path(job.result_path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3072, help="training samples per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "ddp.json")
    parser.add_argument("--inprocess", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inprocess:
        return inprocess(TrainingJob.from_json(args.inprocess))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "dataset"
        folder.mkdir()
        build_data(bench_config(args.samples, args.epochs), folder)
        load_at_start = [round(x, 2) for x in os.getloadavg()]
        results: dict[str, list[dict]] = {name: [] for name in WAYS}
        for _ in range(args.rounds):
            for name, training in WAYS.items():
                config = bench_config(args.samples, args.epochs, **training)
                results[name].append(run_one(folder, config, Path(tmp) / "r.pt"))
                print(name, results[name][-1], flush=True)
    median = {
        name: round(statistics.median(rate for run in runs for rate in run["samples_per_s"][1:]), 1)
        for name, runs in results.items()
    }
    ddp = median["torchrun, 2 gloo ranks x 1 thread"]
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "load_average": {"start": load_at_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": {"base": "configs/default.yaml, one day", "train_samples": args.samples, "global_batch": 64},
        "median_samples_per_s": median,
        "ddp_vs_one_process_2_threads": round(ddp / median["1 process, 2 threads"], 2),
        "ddp_vs_one_process_1_thread": round(ddp / median["1 process, 1 thread"], 2),
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
