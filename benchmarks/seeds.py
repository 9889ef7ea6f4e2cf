"""Quality across markets and training seeds on one config: capture on the test part and on fresh days.

    python -m benchmarks.seeds [--config configs/default.yaml] [--markets 7 8 9] [--seeds 0]
                               [--fresh-days 3] [--parallel 1] [--threads 2]

A *market* is the synthetic market of a seed (``seed``: another market means other books, other
regimes and another test window); a training seed only changes the model's initialization and
batch order. For every market the data of the config is built once (as the ingest assets build
it); every (market, training seed) then trains, calibrates and is evaluated exactly as
``trained_model`` and ``evaluation_report`` do, with the same core functions, but without Dagster
or MLflow, so that several runs can go side by side: on the purged test part, and on
``--fresh-days`` whole days after the range that nothing was fitted on. Prints and writes
(``--out``) every run's figures and, per horizon, the mean and sample standard deviation of each
capture over runs x fresh days, the model against the gradient-boosted baseline per market, and
the shipped calibration against the temperature alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean, stdev

import polars as pl
import yaml

from bmlt_assets.core.calibration import validation_calibration
from bmlt_assets.core.config import PlatformConfig, load_config
from bmlt_assets.core.dataset import build_folds, load_dataset, save_dataset
from bmlt_assets.core.days import DayTensors, label_days
from bmlt_assets.core.evaluation import evaluate, evaluate_fresh_days, oracle_for
from bmlt_assets.core.gradient_boosting import fit_gradient_boosting
from bmlt_assets.core.promotion import gate
from bmlt_assets.core.sources.synthetic import SyntheticMarket
from bmlt_assets.core.train import predict_logits, train

ROOT = Path(__file__).resolve().parent.parent
SPOT_TAKER_FEE_BPS = 10.0  # ccxt's Binance spot taker fee; used only where ccxt is not installed


@dataclass(frozen=True)
class Simulated:
    """The config's synthetic market as a :class:`~bmlt_assets.core.sources.BookSource`, as
    ``bmlt_resources.synthetic`` serves it, without Dagster (a machine may run this without it)."""

    market: SyntheticMarket

    @classmethod
    def of(cls, config: PlatformConfig) -> Simulated:
        d = config.data
        return cls(SyntheticMarket(d.synthetic, config.seed, d.cadence_ms, d.depth, tuple(d.symbols)))

    def snapshots(self, date: dt.date, symbols: list[str]) -> pl.DataFrame:
        return pl.concat(self.snapshot_parts(date, symbols))

    def snapshot_parts(self, date: dt.date, symbols: list[str]) -> list[pl.DataFrame]:
        return [self.market.simulate(date, symbol) for symbol in symbols]

    def gaps(self, date: dt.date, symbols: list[str]) -> list[dict]:
        return []

    def oracle(self) -> SyntheticMarket:
        return self.market


def build_data(config: PlatformConfig, folder: Path) -> None:
    """book_tensors + forward_returns of every day, then training_dataset, into ``folder``."""
    source = Simulated.of(config)
    days = [
        DayTensors.from_frame(source.snapshots(date, config.data.symbols), date, config) for date in config.data.dates
    ]
    save_dataset(build_folds(label_days(days, config), config), folder, config)


def fee_resolved(config: PlatformConfig) -> PlatformConfig:
    try:
        from bmlt_resources.binance import with_market_fee

        evaluation = with_market_fee(config.evaluation, config.data.market)
    except ImportError:  # a machine without ccxt/Dagster (a GPU box): the spot taker fee ccxt reports
        evaluation = config.evaluation.model_copy(update={"fee_bps": config.evaluation.fee_bps or SPOT_TAKER_FEE_BPS})
    return config.model_copy(update={"evaluation": evaluation})


def one_run(config_json: str, folder: str, seed: int, threads: int, fresh_days: int) -> dict:
    raw = json.loads(config_json)
    raw["training"] |= {"seed": seed, "threads": threads, "progress_bar": False}
    raw["evaluation"] |= {"fresh_days": fresh_days}
    config = PlatformConfig.model_validate(raw)
    data = load_dataset(Path(folder), config)
    started = time.perf_counter()
    result = train(config, data)
    train_s = time.perf_counter() - started
    calibration = validation_calibration(result.model, data)
    baselines = fit_gradient_boosting(data, seed, threads)
    test_logits = predict_logits(result.model, data, data.parts["test"].steps)
    source = Simulated.of(config)
    report = evaluate(
        data,
        test_logits,
        calibration,
        oracle_for(source.market, config.target, data),
        config.evaluation,
        config.data.cadence_ms / 1000,
        labels=config.labels,
        baselines=baselines,
    )
    verdict = gate(report, False, False, config.promotion, "no champion (a fresh registry)")
    fresh = evaluate_fresh_days(config, data, result.model, calibration, baselines, source, source.oracle())
    return {
        "market": config.seed,
        "seed": seed,
        "train_s": train_s,
        "best_epoch": result.best_epoch,
        "val_log_loss": [round(r.val_log_loss, 4) for r in result.history],
        "calibration": [asdict(c) for c in calibration],
        "promoted": verdict.promote,
        "reasons": verdict.reasons,
        "horizons": {
            f"{entry.horizon_s:g}s": {
                "capture": asdict(entry.capture) if entry.capture else None,
                "model_minus": {name: asdict(entry.model_minus[name]) for name in ("logistic_obi", "gbm", "oracle")},
                "gbm_capture": asdict(entry.predictors["gbm"].capture) if entry.predictors["gbm"].capture else None,
                "leak_suspected": entry.leak_suspected,
                "pnl_by_fee": [asdict(level) for level in entry.pnl_by_fee],
                "fresh": [asdict(scores) for scores in fresh[i]],
            }
            for i, entry in enumerate(report)
        },
    }


def summary(runs: list[dict]) -> dict:
    """Per horizon: capture on the test part and on every fresh day, mean +/- sd over runs (x days),
    and per market the pooled fresh-day comparisons that the targets read."""

    def spread(values: list[float]) -> dict[str, float]:
        return {"mean": mean(values), "sd": stdev(values) if len(values) > 1 else 0.0, "min": min(values)}

    out: dict = {}
    for horizon in runs[0]["horizons"]:
        test = [run["horizons"][horizon] for run in runs]
        days = [day for h in test for day in h["fresh"] if day["day"] != "pooled"]
        pooled = {(run["market"], run["seed"]): run["horizons"][horizon]["fresh"][-1] for run in runs}
        out[horizon] = {
            "test logloss_capture": spread([h["capture"]["logloss_capture"] for h in test]),
            "test accuracy_capture": spread([h["capture"]["accuracy_capture"] for h in test]),
            "fresh logloss_capture": spread([day["logloss_capture"]["mean"] for day in days]),
            "fresh accuracy_capture": spread([day["accuracy_capture"]["mean"] for day in days]),
            "fresh days": len(days),
            "per run (market, seed), fresh days pooled": {
                f"{market}/{seed}": {
                    "logloss_capture": day["logloss_capture"],
                    "accuracy_capture": day["accuracy_capture"],
                    "model_minus_gbm": day["model_minus"]["gbm"],
                    "model_minus_temperature_alone": day["model_minus"].get("temperature_alone"),
                    "model_minus_oracle": day["model_minus"]["oracle"],
                    "gbm_logloss_capture": _capture(day, "gbm"),
                }
                for (market, seed), day in pooled.items()
            },
        }
    out["promoted"] = f"{sum(run['promoted'] for run in runs)} of {len(runs)}"
    return out


def _capture(day: dict, name: str) -> float:
    """A predictor's log-loss capture on a fresh day (0 = class prior, 1 = oracle)."""
    losses = day["log_loss"]
    return (losses["prior"] - losses[name]) / (losses["prior"] - losses["oracle"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--markets", type=int, nargs="+", default=None, help="market seeds (default: the config's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    parser.add_argument("--fresh-days", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=1, help="runs side by side")
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenMP threads per run")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=YAML", help="config overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "seeds.json")
    args = parser.parse_args()
    raw = load_config(args.config).model_dump(mode="json")
    for override in args.set:
        path, value = override.split("=", 1)
        section, field = path.split(".", 1)
        raw[section][field] = yaml.safe_load(value)
    base = fee_resolved(PlatformConfig.model_validate(raw))
    configs = [base.model_copy(update={"seed": m}) for m in (args.markets or [base.seed])]
    started = time.perf_counter()
    # Spawned, not forked: a forked worker inherits polars' and OpenMP's thread pools without their
    # threads and deadlocks in its first parallel call (pl.concat of a fresh day's symbols).
    spawned = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as root, ProcessPoolExecutor(args.parallel, mp_context=spawned) as pool:
        jobs = []
        for config in configs:
            folder = Path(root) / f"market{config.seed}"
            folder.mkdir()
            build_data(config, folder)
            for seed in args.seeds:
                jobs.append(
                    pool.submit(one_run, config.model_dump_json(), str(folder), seed, args.threads, args.fresh_days)
                )
        runs = [job.result() for job in jobs]
    results = {
        "config": str(args.config),
        "overrides": args.set,
        "fee_bps": base.evaluation.fee_bps,
        "wall_s": time.perf_counter() - started,
        "runs": runs,
        "summary": summary(runs),
    }
    args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    for run in runs:
        line = "; ".join(
            f"{h}: test ll {v['capture']['logloss_capture']:.3f}, fresh ll "
            + " ".join(f"{day['logloss_capture']['mean']:.3f}" for day in v["fresh"])
            for h, v in run["horizons"].items()
        )
        verdict = "promoted" if run["promoted"] else "NOT promoted"
        print(f"market {run['market']} seed {run['seed']}: {line}; {verdict} ({run['train_s']:.0f} s)")
    print(json.dumps(results["summary"], indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
