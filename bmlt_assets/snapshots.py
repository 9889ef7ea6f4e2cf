"""orderbook_snapshots: validated L2 snapshots of every configured symbol for one UTC day."""


from typing import Any

import dagster as dg

from bmlt_assets.core.book import validate_snapshots
from bmlt_assets.metadata import partitioned_result
from bmlt_assets.provenance import content_hash
from bmlt_assets.partitions import DAILY, SINGLE_RUN, partition_dates
from bmlt_resources.settings import SettingsResource
from bmlt_resources.storage import StorageResource, write_parquet


@dg.asset(
    partitions_def=DAILY,
    backfill_policy=SINGLE_RUN,
    group_name="ingest",
    kinds={"parquet"},
    description="Validated L2 snapshots (all configured symbols) of one UTC day; malformed rows are quarantined.",
)
def orderbook_snapshots(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    storage: StorageResource,
    book_source: dg.ResourceParam[Any],
) -> dg.MaterializeResult:
    config = settings.get()
    per_day = []
    for date in partition_dates(context):
        raw = book_source.snapshots(date, config.data.symbols)
        clean, quarantined = validate_snapshots(raw)
        path = write_parquet(clean, storage.snapshots(date))
        if quarantined.height:
            write_parquet(quarantined, storage.quarantine(date))
            context.log.warning(f"{date}: quarantined {quarantined.height} malformed snapshots")
        counts = clean.group_by("symbol").len().sort("symbol")
        per_day.append(
            {
                "date": date.isoformat(),
                "rows": clean.height,
                "quarantined": quarantined.height,
                "bytes": path.stat().st_size,
                "content_hash": content_hash(path)[:16],
                **{row["symbol"]: row["len"] for row in counts.iter_rows(named=True)},
            }
        )
    return partitioned_result(
        per_day,
        {
            "dagster/row_count": sum(day["rows"] for day in per_day),
            "quarantined_rows": sum(day["quarantined"] for day in per_day),
            "bytes": sum(day["bytes"] for day in per_day),
            "depth": config.data.depth,
        },
    )

