"""orderbook_snapshots: validated L2 snapshots of every configured symbol for one UTC day."""

import datetime as dt

import dagster as dg
import polars as pl

from bmlt_assets.core.book import snapshot_schema, validate_parts
from bmlt_assets.core.files import ParquetStream, local_files, parquet_batches, read_parquet, readable, write_json
from bmlt_assets.core.quality import snapshot_quality
from bmlt_assets.core.sources import BookSource
from bmlt_assets.metadata import partitioned_check, partitioned_result
from bmlt_assets.partitions import DAILY, partition_dates
from bmlt_assets.provenance import content_hash
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
    symbols, depth = config.data.symbols, config.data.depth
    per_day = []
    for date in partition_dates(context):
        schema = snapshot_schema(depth)
        # Streamed: the parts are read a row group at a time and the partition written as validated.
        with (
            local_files(book_source.snapshot_parts(date, symbols)) as parts,
            ParquetStream(storage.snapshots(date), schema) as clean,
            ParquetStream(storage.quarantine(date), schema | {"reason": pl.String()}) as quarantine,
        ):
            validated = validate_parts(parts, clean.write, quarantine.write, symbols, depth)
            path = clean.publish()
            if validated.quarantined:
                quarantine.publish()
                context.log.warning(f"{date}: quarantined {validated.quarantined} malformed snapshots")
            else:  # a clean re-run must not inherit an earlier run's quarantine
                quarantine.discard()
                storage.quarantine(date).unlink(missing_ok=True)
        gaps = book_source.gaps(date, symbols)
        # Stored beside the partition so that book_tensors (even in a later run) masks the lost intervals.
        write_json(gaps, storage.snapshot_gaps(date))
        # New content is unchecked: an earlier verdict must neither block nor vouch for it.
        storage.snapshot_check(date).unlink(missing_ok=True)
        per_day.append(
            {
                "date": date.isoformat(),
                "rows": validated.rows,
                "quarantined": validated.quarantined,
                "recorded_gaps": len(gaps),
                "gap_seconds": round(sum(gap["to_ns"] - gap["from_ns"] for gap in gaps) / 1e9, 3),
                "bytes": path.stat().st_size,
                "content_hash": content_hash(path)[:16],
                **validated.rows_per_symbol,
            }
        )
    return partitioned_result(
        per_day,
        {
            "dagster/row_count": sum(day["rows"] for day in per_day),
            "quarantined_rows": sum(day["quarantined"] for day in per_day),
            "recorded_gaps": sum(day["recorded_gaps"] for day in per_day),  # intervals the recorder lost and re-synced
            "bytes": sum(day["bytes"] for day in per_day),
            "depth": config.data.depth,
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
    days, failures = {}, []
    for key in context.partition_keys:
        date = dt.date.fromisoformat(key)
        clean = storage.require(storage.snapshots(date), "orderbook_snapshots", date)
        quarantine = storage.quarantine(date)
        reasons = (
            read_parquet(quarantine, ["reason"])["reason"] if quarantine.exists() else pl.Series([], dtype=pl.String)
        )
        with readable(clean) as local:  # streamed: the day's books are never held whole
            d = config.data
            measured = snapshot_quality(
                parquet_batches(local), reasons, d.steps_per_day, d.cadence_ms, d.symbols, config.quality
            )
        # A day the source lost whole (an archive's empty file) fails with the source's reason.
        lost = [gap for gap in book_source.gaps(date, config.data.symbols) if gap.get("whole_day")]
        measured["failures"] += [f"{gap['symbol']}: {gap['reason']}" for gap in lost]
        days[key] = measured
        day_failures = measured.pop("failures")
        failures += [f"{key}: {failure}" for failure in day_failures]
        # Blocking stops book_tensors in this run only; the stored verdict stops later runs too.
        verdict = {"check": "snapshots_are_sound", "passed": not day_failures, "failures": day_failures}
        write_json(verdict, storage.snapshot_check(date))
        if measured["quarantined"]:
            measured["quarantine_file"] = str(quarantine)  # the offending rows, each with its rule
    return partitioned_check(days, failures, " (rows and reasons in the quarantine files)")
