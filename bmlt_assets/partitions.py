"""Daily UTC partitions shared by every partitioned asset, and how they map onto each other."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from bmlt_assets.core.config import FIRST_DAY, DeploymentConfig

# From Binance spot's opening to the last complete day (UTC); core.config refuses dates outside it.
DAILY = dg.DailyPartitionsDefinition(start_date=FIRST_DAY.isoformat(), end_offset=0)
# forward_returns of day D reads book_tensors of D and D + 1 (labels look ahead by design).
WITH_NEXT_DAY = dg.TimeWindowPartitionMapping(start_offset=0, end_offset=1)


def backfill_policy(deployment: DeploymentConfig) -> dg.BackfillPolicy:
    """How a backfill of the daily assets is cut into runs (``deployment.backfill``): the whole
    range in one run, or runs of ``partitions_per_run`` days that the run coordinator starts side
    by side. Either way one run may span several days (``--partition-range``)."""
    if deployment.backfill == "multi_run":
        assert deployment.partitions_per_run is not None  # the config's validator demands it
        return dg.BackfillPolicy.multi_run(deployment.partitions_per_run)
    return dg.BackfillPolicy.single_run()


def partition_dates(context: dg.AssetExecutionContext) -> list[dt.date]:
    """The dates this run materializes: one, or a range in a single-run backfill."""
    return [dt.date.fromisoformat(key) for key in context.partition_keys]


def range_tags(start: dt.date, end: dt.date) -> dict[str, str]:
    """Run tags that make `dagster job execute` materialize the partitions start..end in one run."""
    return {
        "dagster/asset_partition_range_start": start.isoformat(),
        "dagster/asset_partition_range_end": end.isoformat(),
    }
