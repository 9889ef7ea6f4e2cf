"""forward_returns: per-step forward log returns of every horizon and symbol, plus trailing vol."""

import datetime as dt

import dagster as dg
import numpy as np

from bmlt_assets.core.files import load_arrays, save_arrays, write_json
from bmlt_assets.core.labels import forward_log_returns, trailing_volatility
from bmlt_assets.core.quality import labels_across_gaps
from bmlt_assets.metadata import partitioned_result
from bmlt_assets.partitions import DAILY, WITH_NEXT_DAY, partition_dates
from bmlt_assets.provenance import content_hash
from bmlt_assets.tensors import book_tensors
from bmlt_resources.settings import SettingsResource
from bmlt_resources.storage import StorageResource


@dg.asset(
    pool="forward_returns",  # one writer at a time across runs (docs/design.md §9.5)
    partitions_def=DAILY,
    deps=[dg.AssetDep(book_tensors, partition_mapping=WITH_NEXT_DAY)],
    group_name="ingest",
    kinds={"numpy"},
    description="Forward log return per horizon and symbol (NaN across gaps or missing data) and trailing volatility.",
)
def forward_returns(
    context: dg.AssetExecutionContext, settings: SettingsResource, storage: StorageResource
) -> dg.MaterializeResult:
    config = settings.get()
    horizons = config.horizon_steps
    per_day = []
    for date in partition_dates(context):
        today = load_arrays(storage.require(storage.tensors(date), "book_tensors", date), ["mids", "valid"])
        mids, valid = today["mids"], today["valid"]
        # dagster#26935: a missing next day is not an error; those horizons stay NaN until it exists.
        following = date + dt.timedelta(days=1)
        next_day_used = storage.committed(storage.tensors(following))
        if next_day_used:
            tomorrow = load_arrays(
                storage.require(storage.tensors(following), "book_tensors", following), ["mids", "valid"], mmap=True
            )
            mids = np.concatenate([mids, tomorrow["mids"][: max(horizons)]])
            valid = np.concatenate([valid, tomorrow["valid"][: max(horizons)]])
        else:
            context.log.info(f"{date}: next day not materialized; the day's last horizons are NaN")
        steps = today["mids"].shape[0]
        arrays = {
            "returns": forward_log_returns(mids, valid, horizons, steps),
            "volatility": trailing_volatility(today["mids"], today["valid"], config.vol_lookback_steps),
        }
        with storage.commit(storage.returns(date)) as staging:
            save_arrays(staging, arrays)
            write_json(
                {
                    "date": date.isoformat(),
                    "horizons_s": config.labels.horizons_s,
                    "symbols": config.data.symbols,
                    "next_day_used": next_day_used,
                },
                staging / "meta.json",
            )
        returns = arrays["returns"]
        target = config.data.symbols.index(config.target)
        row = {"date": date.isoformat(), "content_hash": content_hash(storage.returns(date))[:16]}
        for i, horizon in enumerate(config.labels.horizons_s):
            r = returns[:, i, target]
            row[f"labelled[{horizon}s]"] = float(np.isfinite(r).mean())
            row[f"std_bps[{horizon}s]"] = float(np.nanstd(r) * 1e4)
        per_day.append(row)
    return partitioned_result(
        per_day,
        {
            "horizons_s": dg.MetadataValue.json(config.labels.horizons_s),
            "target_symbol": config.target,
        },
    )


@dg.asset_check(
    asset=forward_returns,
    partitions_def=DAILY,
    blocking=True,
    description="No label crosses an invalid step: horizons over gaps are masked (NaN), never filled.",
)
def labels_never_cross_gaps(
    context: dg.AssetCheckExecutionContext, settings: SettingsResource, storage: StorageResource
) -> dg.AssetCheckResult:
    config = settings.get()
    leaks, labelled = {}, {}
    for key in context.partition_keys:
        date = dt.date.fromisoformat(key)
        valid = load_arrays(storage.require(storage.tensors(date), "book_tensors", date), ["valid"])["valid"]
        returns = load_arrays(storage.require(storage.returns(date), "forward_returns", date), ["returns"])["returns"]
        for i, horizon_s in enumerate(config.labels.horizons_s):
            bad_steps = labels_across_gaps(valid, returns[:, i, :], config.horizon_steps[i])
            if len(bad_steps):
                leaks[f"{key} {horizon_s}s"] = bad_steps[:10].tolist()
            labelled[f"{key} {horizon_s}s"] = float(np.isfinite(returns[:, i, :]).mean())
    return dg.AssetCheckResult(
        passed=not leaks,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"labels over gaps at steps {leaks}" if leaks else "every label over a gap is masked",
        metadata={"labelled_fraction": dg.MetadataValue.json(labelled)},
    )
