"""The memory planner: what a config costs in bytes, before anything runs (docs/design.md §4, decision 1)."""

from __future__ import annotations

import math

from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.representation import QUOTE_FIELDS
from bmlt_assets.core.sources.synthetic import SYMBOL_PROFILES, VOL_MULTIPLIER

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


# A volatile real market, per square root of a second: about 170 %/year (BTC/USDT's is usually
# 40-80 %). Generous on purpose: a class empty even at this volatility is empty in practice.
VOLATILE_MARKET_PER_S = 3e-4
EMPTY_CLASS_SHARE = 0.001  # a class expected to hold fewer samples than this cannot be learned


def volatile_per_s(config: PlatformConfig) -> float:
    """The per-second log-return volatility the class check assumes: the synthetic target's in its
    most volatile regime, else that of a volatile real market."""
    if config.data.source == "synthetic":
        return SYMBOL_PROFILES[config.target].vol_per_s * float(VOL_MULTIPLIER.max())
    return VOLATILE_MARKET_PER_S


def class_shares(config: PlatformConfig, horizon_s: int, vol_per_s: float) -> list[float]:
    """Expected share of each fixed-percent class at ``horizon_s`` for a driftless normal log
    return of volatility ``vol_per_s`` x sqrt(horizon)."""
    sigma = vol_per_s * math.sqrt(horizon_s)
    edges = [math.log1p(pct / 100) for pct in config.labels.fixed_pct_edges]
    cdf = [0.0] + [0.5 * (1 + math.erf(edge / (sigma * math.sqrt(2)))) for edge in edges] + [1.0]
    return [high - low for low, high in zip(cdf, cdf[1:])]


def plan_warnings(config: PlatformConfig, memory_bytes: int | None, disk_free_bytes: int | None) -> list[str]:
    """Where a config cannot run on this machine, or cannot learn, before anything runs.

    ``memory_bytes`` is the machine's memory and ``disk_free_bytes`` the free space of the local
    storage folder (None: unknown, or remote storage)."""
    plan, warnings = memory_plan(config), []
    raw, day = plan["raw_snapshot_bytes_per_day"], plan["base_tensor_bytes_per_day"] + plan["companion_bytes_per_day"]
    if memory_bytes is not None and raw > memory_bytes:
        warnings.append(
            f"a day's snapshots take {human_bytes(raw)} in memory, as orderbook_snapshots holds them, and this "
            f"machine has {human_bytes(memory_bytes)}: lower data.depth, add to data.cadence_ms or drop symbols"
        )
    days = len(config.data.dates)
    if disk_free_bytes is not None and days * (raw + day) > disk_free_bytes:
        warnings.append(
            f"the {days} day(s) take up to {human_bytes(days * (raw + day))} on disk (snapshots before "
            f"compression, tensors) and the storage folder has {human_bytes(disk_free_bytes)} free: free space, "
            "shorten the range or point storage.uri at a larger disk"
        )
    if config.labels.edges == "fixed_pct":
        vol = volatile_per_s(config)
        for horizon in config.labels.horizons_s:
            shares = class_shares(config, horizon, vol)
            empty = sum(share < EMPTY_CLASS_SHARE for share in shares)
            if empty * 2 > len(shares):
                warnings.append(
                    f"labels.fixed_pct_edges at {horizon} s: {empty} of {len(shares)} classes would hold under "
                    f"{EMPTY_CLASS_SHARE:.1%} of the samples even at a volatility of "
                    f"{vol * math.sqrt(horizon):.3%} per {horizon} s: they cannot be learned; use labels.edges "
                    "volatility_scaled or quantile, or edges near that size"
                )
    return warnings
