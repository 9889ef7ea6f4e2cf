"""Quality across training seeds on one config: capture, the gate's verdict and P&L per seed.

    python -m benchmarks.seeds [--config configs/default.yaml] [--seeds 0 1 2] [--parallel 3] [--threads 2]

The data is built once (the synthetic market of the config, as the ingest assets build it); each
seed then trains, calibrates and is evaluated exactly as ``trained_model`` and
``evaluation_report`` do, with the same core functions, but without Dagster or MLflow, so that
several seeds can run side by side. Prints and writes (``--out``) per-seed figures and the mean
and sample standard deviation of each capture over seeds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from statistics import mean, stdev

import polars as pl
import yaml

from bmlt_assets.core.calibration import validation_calibration
from bmlt_assets.core.config import PlatformConfig, load_config
from bmlt_assets.core.dataset import build_folds, load_dataset, save_dataset
from bmlt_assets.core.days import DayTensors, label_days
from bmlt_assets.core.evaluation import evaluate, oracle_for
from bmlt_assets.core.promotion import gate
from bmlt_assets.core.sources.synthetic import SyntheticMarket
from bmlt_assets.core.train import predict_logits, train

ROOT = Path(__file__).resolve().parent.parent
SPOT_TAKER_FEE_BPS = 10.0  # ccxt's Binance spot taker fee; used only where ccxt is not installed


def market(config: PlatformConfig) -> SyntheticMarket:
    d = config.data
    return SyntheticMarket(d.synthetic, config.seed, d.cadence_ms, d.depth, tuple(d.symbols))


def build_data(config: PlatformConfig, folder: Path) -> None:
    """book_tensors + forward_returns of every day, then training_dataset, into ``folder``."""
    d, source = config.data, market(config)
    days = [
        DayTensors.from_frame(pl.concat([source.simulate(date, symbol) for symbol in d.symbols]), date, config)
        for date in d.dates
    ]
    save_dataset(build_folds(label_days(days, config), config), folder, config)


def fee_resolved(config: PlatformConfig) -> PlatformConfig:
    try:
        from bmlt_resources.binance import with_market_fee

        evaluation = with_market_fee(config.evaluation, config.data.market)
    except ImportError:  # a machine without ccxt/Dagster (a GPU box): the spot taker fee ccxt reports
        evaluation = config.evaluation.model_copy(update={"fee_bps": config.evaluation.fee_bps or SPOT_TAKER_FEE_BPS})
    return config.model_copy(update={"evaluation": evaluation})


def one_seed(config_json: str, folder: str, seed: int, threads: int) -> dict:
    raw = json.loads(config_json)
    raw["training"] |= {"seed": seed, "threads": threads, "progress_bar": False}
    config = PlatformConfig.model_validate(raw)
    data = load_dataset(Path(folder), config)
    started = time.perf_counter()
    result = train(config, data)
    train_s = time.perf_counter() - started
    calibration = validation_calibration(result.model, data)
    test_logits = predict_logits(result.model, data, data.parts["test"].steps)
    oracle = oracle_for(market(config), config.target, data)
    report = evaluate(
        data, test_logits, calibration, oracle, config.evaluation, config.data.cadence_ms / 1000, labels=config.labels
    )
    verdict = gate(report, False, False, config.promotion, "no champion (a fresh registry)")
    return {
        "seed": seed,
        "train_s": train_s,
        "best_epoch": result.best_epoch,
        "samples_per_s": [round(r.samples_per_s) for r in result.history],
        "val_log_loss": [round(r.val_log_loss, 4) for r in result.history],
        "promoted": verdict.promote,
        "reasons": verdict.reasons,
        "horizons": {
            f"{entry.horizon_s:g}s": {
                "capture": asdict(entry.capture) if entry.capture else None,
                "model_minus_logistic_obi": asdict(entry.model_minus["logistic_obi"]),
                "model_minus_oracle": asdict(entry.model_minus["oracle"]),
                "leak_suspected": entry.leak_suspected,
                "pnl_by_fee": [asdict(level) for level in entry.pnl_by_fee],
            }
            for entry in report
        },
    }


def summary(runs: list[dict]) -> dict:
    out: dict = {}
    for horizon in runs[0]["horizons"]:
        for name in runs[0]["horizons"][horizon]["capture"]:
            values = [run["horizons"][horizon]["capture"][name] for run in runs]
            out[f"{horizon} {name}"] = {
                "mean": mean(values),
                "sd": stdev(values) if len(values) > 1 else 0.0,
                "min": min(values),
            }
    out["promoted"] = f"{sum(run['promoted'] for run in runs)} of {len(runs)}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=1, help="seeds trained side by side")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per seed")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=YAML", help="config overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "seeds.json")
    args = parser.parse_args()
    raw = load_config(args.config).model_dump(mode="json")
    for override in args.set:
        path, value = override.split("=", 1)
        section, field = path.split(".", 1)
        raw[section][field] = yaml.safe_load(value)
    config = fee_resolved(PlatformConfig.model_validate(raw))
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        build_data(config, Path(folder))
        print(f"data built in {time.perf_counter() - started:.0f} s")
        with ProcessPoolExecutor(args.parallel) as pool:
            jobs = [pool.submit(one_seed, config.model_dump_json(), folder, seed, args.threads) for seed in args.seeds]
            runs = [job.result() for job in jobs]
    results = {
        "config": str(args.config),
        "overrides": args.set,
        "fee_bps": config.evaluation.fee_bps,
        "runs": runs,
        "summary": summary(runs),
    }
    args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    for run in runs:
        captures = "; ".join(
            f"{h}: acc {c['accuracy_capture']:.3f} ll {c['logloss_capture']:.3f}, vs logistic [{d['low']:.4f}, "
            f"{d['high']:.4f}]"
            for h, v in run["horizons"].items()
            for c, d in [(v["capture"], v["model_minus_logistic_obi"])]
        )
        verdict = "promoted" if run["promoted"] else "NOT promoted"
        print(f"seed {run['seed']}: {captures}; {verdict} ({run['train_s']:.0f} s)")
    for name, s in results["summary"].items():
        print(f"{name}: {s}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
