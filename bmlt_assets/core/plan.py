"""The memory planner: what a config costs in bytes, before anything runs (docs/design.md §4, decision 1)."""

from __future__ import annotations

from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.representation import QUOTE_FIELDS

FLOAT32, FLOAT64, INT64 = 4, 8, 8


def memory_plan(config: PlatformConfig) -> dict[str, int]:
    """Bytes and counts for the configured symbols, cadence, levels, window and date range.

    Raw snapshots are counted at one snapshot per symbol and step (the synthetic market's rate;
    a live recorder at 100 ms keeps up to ten times more before resampling).
    """
    data, d = config.data, config.dataset
    steps, symbols, levels, window = data.steps_per_day, len(data.symbols), config.representation.levels, d.window_steps
    days = len(data.dates)
    raw_row = 4 * data.depth * FLOAT64 + 3 * INT64 + 12  # four level arrays, times, update id, symbol
    base_step = levels * 4 * symbols * FLOAT32
    # A sample per step (the test part keeps every one); training takes every sample_stride-th.
    train_samples = int(days * steps * d.train_fraction) // d.sample_stride
    if config.training.max_train_samples:
        train_samples = min(train_samples, config.training.max_train_samples)
    window_bytes = window * base_step
    return {
        "raw_snapshot_bytes_per_day": steps * symbols * raw_row,
        "base_tensor_bytes_per_day": steps * base_step,
        # mids, best quotes, validity, timestamps
        "companion_bytes_per_day": steps * (symbols * (FLOAT64 + len(QUOTE_FIELDS) * FLOAT32 + 1) + INT64),
        "dense_window_bytes_per_day": steps * window_bytes,  # what copying windows would cost
        "batch_bytes": config.training.batch_size * window_bytes,
        "train_samples_per_epoch": train_samples,
        "batches_per_epoch": -(-train_samples // config.training.batch_size),
        "gathered_bytes_per_epoch": train_samples * window_bytes,
        "dataset_base_bytes": days * steps * base_step,
    }


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    raise AssertionError("unreachable")


DEFAULT_OUTCOMES = 10_000  # independent outcomes per horizon worth planning a date range for


def horizon_plan(config: PlatformConfig, outcomes: int = DEFAULT_OUTCOMES) -> list[dict[str, int]]:
    """Per horizon: independent (non-overlapping) outcomes per day, the days that give ``outcomes``
    of them, and the configured range's days. Overlapping samples share their future, so it is the
    independent count that bounds how well a horizon can be learned and judged."""
    days = len(config.data.dates)
    plan = []
    for horizon in config.labels.horizons_s:
        per_day = 86_400 // horizon
        plan.append(
            {
                "horizon_s": horizon,
                "outcomes_per_day": per_day,
                "days_needed": -(-outcomes // per_day),
                "outcomes_in_range": per_day * days,
                "days_in_range": days,
            }
        )
    return plan
