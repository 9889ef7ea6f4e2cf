"""orderbook_snapshots: validated L2 snapshots of every configured symbol for one UTC day."""

import datetime as dt

import dagster as dg

from bmlt_assets.core.days import DaySnapshots, SnapshotVerdict
from bmlt_assets.core.quality import snapshot_quality
from bmlt_assets.core.sources import BookSource
from bmlt_assets.metadata import partitioned_check, partitioned_result, stored
from bmlt_assets.partitions import DAILY, partition_dates
from bmlt_resources.settings import SettingsResource
from bmlt_resources.storage import StorageResource


@dg.asset(
    pool="orderbook_snapshots",  # one writer at a time across runs (docs/design.md §9.5)
    partitions_def=DAILY,
    group_name="ingest",
    kinds={"parquet"},
    description="Validated L2 snapshots (all configured symbols) of one UTC day; malformed rows are quarantined.",
)
def orderbook_snapshots(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    storage: StorageResource,
    book_source: dg.ResourceParam[BookSource],
) -> dg.MaterializeResult:
    config = settings.get()
    symbols, depth, per_day = config.data.symbols, config.data.depth, []
    for date in partition_dates(context):
        files = storage.snapshot_files(date)
        # Streamed: the source's parts are read, validated and written a row group at a time.
        parts, gaps = book_source.snapshot_parts(date, symbols), book_source.gaps(date, symbols)
        day = DaySnapshots.write(date, parts, gaps, files, symbols, depth)
        if day.quarantined:
            context.log.warning(f"{date}: quarantined {day.quarantined} malformed snapshots")
        per_day.append(day.summary() | stored(files.clean) | day.rows_per_symbol)
    return partitioned_result(
        per_day,
        {
            "dagster/row_count": sum(day["rows"] for day in per_day),
            "quarantined_rows": sum(day["quarantined"] for day in per_day),
            "recorded_gaps": sum(day["recorded_gaps"] for day in per_day),  # intervals the recorder lost and re-synced
            "bytes": sum(day["bytes"] for day in per_day),
            "depth": depth,
        },
    )


@dg.asset_check(
    asset=orderbook_snapshots,
    partitions_def=DAILY,
    blocking=True,
    description="Quarantine rate per rule, stale books and coverage per symbol against config thresholds; "
    "days a source lost whole.",
)
def snapshots_are_sound(
    context: dg.AssetCheckExecutionContext,
    settings: SettingsResource,
    storage: StorageResource,
    book_source: dg.ResourceParam[BookSource],
) -> dg.AssetCheckResult:
    config = settings.get()
    d, days, failures = config.data, {}, []
    for key in context.partition_keys:
        date = dt.date.fromisoformat(key)
        files = storage.snapshot_files(date)
        storage.require_file(files.clean, "orderbook_snapshots", date)
        with files.clean_batches() as clean:  # a batch at a time: the day's books are never held whole
            measured = snapshot_quality(
                clean, files.quarantine_reasons(), d.steps_per_day, d.cadence_ms, d.symbols, config.quality
            )
        # A day the source lost whole (an archive's empty file) fails with the source's reason.
        lost = [gap for gap in book_source.gaps(date, d.symbols) if gap.get("whole_day")]
        day_failures = measured.pop("failures") + [f"{gap['symbol']}: {gap['reason']}" for gap in lost]
        failures += [f"{key}: {failure}" for failure in day_failures]
        # Blocking stops book_tensors in this run only; the stored verdict stops later runs too.
        SnapshotVerdict("snapshots_are_sound", not day_failures, day_failures).save(files)
        if measured["quarantined"]:
            measured["quarantine_file"] = str(files.quarantine)  # the offending rows, each with its rule
        days[key] = measured
    return partitioned_check(days, failures, " (rows and reasons in the quarantine files)")
