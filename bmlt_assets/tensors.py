"""book_tensors: one day of snapshots resampled to the cadence grid and represented as levels."""

import datetime as dt
import json

import dagster as dg
import numpy as np

from bmlt_assets.core.files import directory_bytes, load_arrays, readable, save_arrays, write_json
from bmlt_assets.core.plan import memory_plan
from bmlt_assets.core.quality import tensor_quality
from bmlt_assets.core.representation import CHANNELS, QUOTE_FIELDS, day_tensors_from_parquet, level_names
from bmlt_assets.metadata import partitioned_check, partitioned_result
from bmlt_assets.partitions import DAILY, partition_dates
from bmlt_assets.provenance import content_hash
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
    config = settings.get()
    data = config.data
    per_day = []
    for date in partition_dates(context):
        source = storage.require(storage.snapshots(date), "orderbook_snapshots", date)
        _refuse_failed_snapshots(storage, date)
        gaps_file = storage.snapshot_gaps(date)  # written with the partition (absent for older ones)
        gaps = json.loads(gaps_file.read_text()) if gaps_file.exists() else []
        with readable(source) as snapshots:
            arrays = day_tensors_from_parquet(
                snapshots, date, data.symbols, data.cadence_ms, data.staleness_ms, config.representation, gaps
            )
        meta = {
            "date": date.isoformat(),
            "shape": list(arrays["base"].shape),
            "axes": ["step", "level", "channel", "symbol"],
            "symbols": data.symbols,
            "channels": list(CHANNELS),
            "quote_fields": list(QUOTE_FIELDS),  # quotes.npy (step, field, symbol): the raw best bid and ask
            "levels": level_names(config.representation),
            "cadence_ms": data.cadence_ms,
            "representation": config.representation.model_dump(),
        }
        target = storage.tensors(date)
        with storage.commit(target) as staging:
            save_arrays(staging, arrays)
            write_json(meta, staging / "meta.json")
        valid = arrays["valid"]
        per_day.append(
            {
                "date": date.isoformat(),
                "steps": int(valid.shape[0]),
                "valid_fraction": float(valid.all(axis=1).mean()),
                **{f"valid[{s}]": float(valid[:, k].mean()) for k, s in enumerate(data.symbols)},
                "bytes": directory_bytes(target),
                "content_hash": content_hash(target)[:16],
            }
        )
        context.log.info(f"{date}: base {arrays['base'].shape}, {per_day[-1]['valid_fraction']:.3f} of steps valid")
    return partitioned_result(
        per_day,
        {
            "shape_per_day": dg.MetadataValue.json(meta["shape"]),
            "levels": dg.MetadataValue.json(meta["levels"]),
            "channels": dg.MetadataValue.json(meta["channels"]),
            "bytes": sum(day["bytes"] for day in per_day),
            "valid_fraction": float(np.mean([day["valid_fraction"] for day in per_day])),
            "memory_plan": dg.MetadataValue.json(memory_plan(config)),
        },
    )


def _refuse_failed_snapshots(storage: StorageResource, date: dt.date) -> None:
    """A blocking check stops book_tensors only within its own run: a later run that selects
    book_tensors alone must still refuse a day whose snapshots failed their stored verdict."""
    verdict_file = storage.snapshot_check(date)
    if not verdict_file.exists():
        return  # not checked (yet): the same-run blocking check still guards it
    verdict = json.loads(verdict_file.read_text())
    if not verdict["passed"]:
        raise dg.Failure(
            f"orderbook_snapshots for {date.isoformat()} failed its blocking check {verdict['check']} "
            f"({'; '.join(verdict['failures'])}): fix the landing data (or the quality thresholds), then "
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
        arrays = load_arrays(storage.require(storage.tensors(date), "book_tensors", date), ["base", "valid"], mmap=True)
        measured = tensor_quality(np.asarray(arrays["base"]), arrays["valid"], config.quality)
        days[key] = measured
        failures += [f"{key}: {failure}" for failure in measured.pop("failures")]
    return partitioned_check(days, failures)
