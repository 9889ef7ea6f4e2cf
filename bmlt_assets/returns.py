"""forward_returns: per-step forward log returns of every horizon and symbol, plus trailing vol."""

import datetime as dt

import dagster as dg
import numpy as np

from bmlt_assets.core.days import DayReturns
from bmlt_assets.core.quality import labels_across_gaps
from bmlt_assets.metadata import partitioned_result, stored
from bmlt_assets.partitions import DAILY, WITH_NEXT_DAY, partition_dates
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
    config, per_day = settings.get(), []
    for date in partition_dates(context):
        today = storage.require_tensors(date)
        # dagster#26935: a missing next day is not an error; those horizons stay NaN until it exists.
        following = date + dt.timedelta(days=1)
        tomorrow = None
        if storage.committed(storage.tensors(following)):
            tomorrow = storage.require_tensors(following)
        else:
            context.log.info(f"{date}: next day not materialized; the day's last horizons are NaN")
        day = DayReturns.of(today, tomorrow, config)
        with storage.commit(storage.returns(date)) as staging:
            day.save(staging)
        per_day.append(day.summary(config.target) | stored(storage.returns(date)))
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
        valid, returns = storage.require_tensors(date).valid, storage.require_returns(date).returns
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
