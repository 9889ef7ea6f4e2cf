"""book_tensors: one day of snapshots resampled to the cadence grid and represented as levels."""

import datetime as dt

import dagster as dg
import numpy as np

from bmlt_assets.core.days import DayTensors, SnapshotVerdict
from bmlt_assets.core.files import readable
from bmlt_assets.core.plan import memory_plan
from bmlt_assets.core.quality import tensor_quality
from bmlt_assets.core.representation import CHANNELS, level_names
from bmlt_assets.metadata import partitioned_check, partitioned_result, stored
from bmlt_assets.partitions import DAILY, partition_dates
from bmlt_assets.snapshots import orderbook_snapshots
from bmlt_resources.settings import SettingsResource
from bmlt_resources.storage import StorageResource


@dg.asset(
    pool="book_tensors",  # one writer at a time across runs (docs/design.md §9.5)
    partitions_def=DAILY,
    deps=[orderbook_snapshots],
    group_name="ingest",
    kinds={"numpy"},
    description="Base array (S, L, 4, K) float32 on the cadence grid, with mids, validity mask and timestamps.",
)
def book_tensors(
    context: dg.AssetExecutionContext, settings: SettingsResource, storage: StorageResource
) -> dg.MaterializeResult:
    config, per_day = settings.get(), []
    for date in partition_dates(context):
        files = storage.snapshot_files(date)
        source = storage.require_file(files.clean, "orderbook_snapshots", date)
        _refuse_failed_snapshots(storage, date)
        with readable(source) as snapshots:
            day = DayTensors.from_snapshots(snapshots, date, config, files.recorded_gaps())
        with storage.commit(storage.tensors(date)) as staging:
            day.save(staging)
        per_day.append(day.summary() | stored(storage.tensors(date)))
        context.log.info(f"{date}: base {day.base.shape}, {per_day[-1]['valid_fraction']:.3f} of steps valid")
    return partitioned_result(
        per_day,
        {
            "shape_per_day": dg.MetadataValue.json(list(day.base.shape)),
            "levels": dg.MetadataValue.json(level_names(config.representation)),
            "channels": dg.MetadataValue.json(list(CHANNELS)),
            "bytes": sum(day["bytes"] for day in per_day),
            "valid_fraction": float(np.mean([day["valid_fraction"] for day in per_day])),
            "memory_plan": dg.MetadataValue.json(memory_plan(config)),
        },
    )


def _refuse_failed_snapshots(storage: StorageResource, date: dt.date) -> None:
    """A blocking check stops book_tensors only within its own run: a later run that selects
    book_tensors alone must still refuse a day whose snapshots failed their stored verdict."""
    verdict = SnapshotVerdict.load(storage.snapshot_files(date))
    if verdict is None or verdict.passed:
        return  # not checked (yet): the same-run blocking check still guards it
    raise dg.Failure(
        f"orderbook_snapshots for {date.isoformat()} failed its blocking check {verdict.check} "
        f"({'; '.join(verdict.failures)}): fix the landing data (or the quality thresholds), then "
        f"re-materialize it with its check: {storage.materialize_command('orderbook_snapshots', date)}"
    )


@dg.asset_check(
    asset=book_tensors,
    partitions_def=DAILY,
    blocking=True,
    description="Valid-step fraction, NaN/inf counts and channel ranges against config thresholds.",
)
def tensors_are_sound(
    context: dg.AssetCheckExecutionContext, settings: SettingsResource, storage: StorageResource
) -> dg.AssetCheckResult:
    config = settings.get()
    days, failures = {}, []
    for key in context.partition_keys:
        date = dt.date.fromisoformat(key)
        day = storage.require_tensors(date)
        measured = tensor_quality(np.asarray(day.base), day.valid, config.quality)
        days[key] = measured
        failures += [f"{key}: {failure}" for failure in measured.pop("failures")]
    return partitioned_check(days, failures)
