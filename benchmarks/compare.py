"""Compare design options on the synthetic market with everything else held fixed.

    python -m benchmarks.compare [--epochs 3] [--max-train-samples 20000]

Starts from configs/default.yaml, varies one option at a time (multi-asset strategy, then book
representation), and reports test accuracy and log loss against the oracle (signal capture)
and seconds per epoch. Results go to benchmarks/comparison.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bmlt_assets.core.calibration import Calibration
from bmlt_assets.core.config import PlatformConfig, load_config
from bmlt_assets.core.dataset import build_dataset
from bmlt_assets.core.days import DayTensors, label_days
from bmlt_assets.core.evaluation import evaluate
from bmlt_assets.core.train import predict_logits, train
from bmlt_resources.binance import with_market_fee
from bmlt_resources.synthetic import SyntheticMarketResource

ROOT = Path(__file__).resolve().parent.parent


def _with(config: PlatformConfig, section: str, **values) -> PlatformConfig:
    return config.model_copy(update={section: getattr(config, section).model_copy(update=values)})


def run(config: PlatformConfig, snapshots: dict) -> dict:
    d = config.data
    days = label_days([DayTensors.from_frame(snapshots[date], date, config) for date in d.dates], config)
    data = build_dataset(days, config)
    result = train(config, data)
    source = SyntheticMarketResource.for_config(config)
    market = source.market()

    def oracle(i, steps, edges):
        return market.oracle_at(config.target, data.source.timestamps[steps], data.horizons[i], edges)

    logits = predict_logits(result.model, data, data.parts["test"].steps)
    costs = with_market_fee(config.evaluation, d.market)
    uncalibrated = [Calibration.identity(data.n_classes)] * len(data.horizons)
    report = evaluate(data, logits, uncalibrated, oracle, costs, d.cadence_ms / 1000)
    return {
        "seconds_per_epoch": float(np.mean([r.seconds for r in result.history])),
        "epochs": len(result.history),
        "horizons": {
            f"{e.horizon_s}s": {
                "accuracy": e.model.metrics.accuracy,
                "oracle_accuracy": e.predictors["oracle"].metrics.accuracy,
                "log_loss": e.model.metrics.log_loss,
                "oracle_log_loss": e.predictors["oracle"].metrics.log_loss,
                **(asdict(e.capture) if e.capture else {}),
            }
            for e in report
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-train-samples", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "comparison.json")
    parser.add_argument("--only", nargs="*", help="run only the variants whose name contains one of these words")
    args = parser.parse_args()
    base = load_config(ROOT / "configs" / "default.yaml")
    base = _with(base, "training", epochs=args.epochs, max_train_samples=args.max_train_samples, progress_bar=False)
    d = base.data
    source = SyntheticMarketResource.for_config(base)
    snapshots = {date: source.snapshots(date, d.symbols) for date in d.dates}
    variants = {
        "multi_asset=branches, representation=hybrid": base,
        "multi_asset=stacked": _with(base, "model", multi_asset="stacked"),
        "multi_asset=attention": _with(base, "model", multi_asset="attention"),
        "representation=full (10 raw levels)": _with(base, "representation", kind="full", raw_levels=10),
        "representation=aggregated (10 buckets)": _with(base, "representation", kind="aggregated", bucket_count=10),
    }
    if args.only:
        variants = {name: config for name, config in variants.items() if any(word in name for word in args.only)}
    # Results accumulate in --out, so a variant can be re-run alone.
    saved = json.loads(args.out.read_text()) if args.out.exists() else {}
    results = saved.get("results", {}) if saved.get("epochs") == args.epochs else {}
    for name, config in variants.items():
        results[name] = run(config, snapshots)
        print(name, json.dumps(results[name]), flush=True)
        args.out.write_text(
            json.dumps(
                {"epochs": args.epochs, "max_train_samples": args.max_train_samples, "results": results}, indent=2
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
