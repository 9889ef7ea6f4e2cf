"""Data-quality checks: garbage is quarantined or blocks the pipeline, with the rule that failed."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from bmlt_assets.core.book import book_arrays, snapshot_frame
from bmlt_assets.core.config import SyntheticConfig, load_config
from bmlt_assets.core.files import write_parquet
from bmlt_assets.core.sources.synthetic import SyntheticMarket
from bmlt_assets.definitions import CHECKS, INGEST_ASSETS, TRAINING_ASSETS, build_resources
from bmlt_resources.storage import StorageResource
from tests.helpers import write_config

DAYS = [dt.date(2025, 1, 6), dt.date(2025, 1, 7), dt.date(2025, 1, 8)]
SYMBOLS = ["BTC/USDT", "ETH/USDT"]


def _landing_config(tmp_path: Path) -> Path:
    """The tiny config reading 'recorded' books from the landing zone instead of the simulator."""
    return write_config(tmp_path, {"data": {"source": "binance", "end_date": "2025-01-08"}})


def _record(config_path: Path, date: dt.date, crossed_share: float) -> None:
    """Write a day of books to the landing zone, crossing ``crossed_share`` of them."""
    config = load_config(config_path)
    market = SyntheticMarket(SyntheticConfig(), seed=1, cadence_ms=config.data.cadence_ms, depth=config.data.depth)
    frames = []
    for symbol in SYMBOLS:
        frame = market.simulate(date, symbol)
        books = book_arrays(frame)
        bad = np.random.default_rng(0).random(frame.height) < crossed_share
        bid = books["bid_px"].copy()
        bid[bad] += books["ask_px"][bad, :1] - books["bid_px"][bad, :1] + 0.01  # the best bid above the best ask
        frames.append(
            snapshot_frame(
                exchange_ns=frame["exchange_ts"].to_numpy(),
                receive_ns=frame["receive_ts"].to_numpy(),
                symbol=symbol,
                update_id=frame["update_id"].to_numpy(),
                bid_px=bid,
                bid_qty=books["bid_qty"],
                ask_px=books["ask_px"],
                ask_qty=books["ask_qty"],
            )
        )
    write_parquet(pl.concat(frames), config.local_dir / "landing" / "spot" / f"date={date}" / "recording.parquet")


def _run(config_path: Path, instance: dg.DagsterInstance, date: dt.date) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        INGEST_ASSETS + TRAINING_ASSETS + CHECKS,
        selection=INGEST_ASSETS[:2],
        resources=build_resources(config_path),
        instance=instance,
        partition_key=date.isoformat(),
        raise_on_error=False,
    )


def _check(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == name)


def test_a_partly_bad_day_is_cleaned_and_a_mostly_bad_day_blocks_downstream(tmp_path: Path) -> None:
    path = _landing_config(tmp_path)
    config = load_config(path)
    storage = StorageResource.for_config(config)
    _record(path, DAYS[0], crossed_share=0.01)
    _record(path, DAYS[1], crossed_share=0.30)
    instance = dg.DagsterInstance.ephemeral()

    partly = _run(path, instance, DAYS[0])
    assert partly.success and _check(partly, "snapshots_are_sound").passed
    quarantined = pl.read_parquet(storage.quarantine(DAYS[0]))
    assert 0 < quarantined.height < 0.02 * 2 * 8640
    assert set(quarantined["reason"]) == {"crossed or locked book (best bid >= best ask)"}
    assert (
        partly.asset_materializations_for_node("orderbook_snapshots")[0].metadata["quarantined_rows"].value
        == quarantined.height
    )
    assert (storage.tensors(DAYS[0]) / "meta.json").exists()

    mostly = _run(path, instance, DAYS[1])
    check = _check(mostly, "snapshots_are_sound")
    assert not check.passed
    assert "crossed or locked book" in check.description and "2025-01-07" in check.description
    assert not (storage.tensors(DAYS[1]) / "meta.json").exists()  # blocked: book_tensors never ran


def test_a_backfill_with_one_bad_day_and_its_rerun_after_the_fix(tmp_path: Path) -> None:
    path = _landing_config(tmp_path)
    config = load_config(path)
    storage = StorageResource.for_config(config)
    for date in DAYS:
        _record(path, date, crossed_share=0.30 if date == DAYS[1] else 0.0)
    instance = dg.DagsterInstance.ephemeral()
    first = {date: _run(path, instance, date) for date in DAYS}  # one run per day, as `dagster job backfill` does
    assert [(storage.tensors(d) / "meta.json").exists() for d in DAYS] == [True, False, True]
    assert "2025-01-07" in _check(first[DAYS[1]], "snapshots_are_sound").description

    _record(path, DAYS[1], crossed_share=0.0)  # the day is fixed upstream
    second = {date: _run(path, instance, date) for date in DAYS}
    assert all(result.success for result in second.values())

    def version(result: dg.ExecuteInProcessResult) -> str:
        return result.asset_materializations_for_node("book_tensors")[0].tags["dagster/data_version"]

    for date in (DAYS[0], DAYS[2]):  # untouched days come back with the same data version
        assert version(first[date]) == version(second[date])


def test_a_label_filled_across_a_gap_is_caught() -> None:
    from bmlt_assets.core.labels import forward_log_returns
    from bmlt_assets.core.quality import labels_across_gaps

    valid = np.ones((200, 2), dtype=bool)
    valid[120, 1] = False
    mids = np.exp(np.cumsum(np.random.default_rng(0).normal(0, 1e-4, (200, 2)), axis=0))
    returns = forward_log_returns(mids, valid, [5], 200)[:, 0, :]
    assert len(labels_across_gaps(valid, returns, 5)) == 0  # what the pipeline writes passes
    filled = returns.copy()
    filled[117, 1] = 0.001  # (117, 122] holds the gap at 120: a filled, not masked, label
    np.testing.assert_array_equal(labels_across_gaps(valid, filled, 5), [117])


def test_a_later_run_of_book_tensors_alone_refuses_a_day_whose_snapshots_failed(tmp_path: Path) -> None:
    path = _landing_config(tmp_path)
    config = load_config(path)
    storage = StorageResource.for_config(config)
    _record(path, DAYS[1], crossed_share=0.30)
    instance = dg.DagsterInstance.ephemeral()
    assert not _check(_run(path, instance, DAYS[1]), "snapshots_are_sound").passed
    alone = dg.materialize(
        INGEST_ASSETS + TRAINING_ASSETS + CHECKS,
        selection=[INGEST_ASSETS[1]],  # book_tensors only: no blocking check in this run
        resources=build_resources(path),
        instance=instance,
        partition_key=DAYS[1].isoformat(),
        raise_on_error=False,
    )
    assert not alone.success
    message = str(alone.get_step_failure_events()[0].event_specific_data.error)
    assert "orderbook_snapshots for 2025-01-07 failed its blocking check snapshots_are_sound" in message
    assert "crossed or locked book" in message and "--select tiny/orderbook_snapshots --partition 2025-01-07" in message
    assert not (storage.tensors(DAYS[1]) / "meta.json").exists()


def test_grid_steps_inside_a_recorded_gap_are_invalid_whatever_the_staleness(tmp_path: Path) -> None:
    # An hour's staleness would bridge the 10-minute gap: only the recorded interval can invalidate it.
    path = write_config(
        tmp_path, {"data": {"source": "binance", "end_date": "2025-01-08", "max_staleness_ms": 3_600_000}}
    )
    config = load_config(path)
    storage = StorageResource.for_config(config)
    _record(path, DAYS[0], crossed_share=0.0)
    day = config.local_dir / "landing" / "spot" / f"date={DAYS[0]}"
    start = int(dt.datetime(2025, 1, 6, tzinfo=dt.UTC).timestamp()) * 10**9
    books = pl.read_parquet(day / "recording.parquet")
    btc, lo, hi = pl.col("symbol") == "BTC/USDT", start + 3600 * 10**9, start + 4200 * 10**9
    lost = btc & pl.col("receive_ts").is_between(lo, hi)
    from_ns = int(books.filter(btc & (pl.col("receive_ts") < lo))["receive_ts"].max())
    after = books.filter(btc & (pl.col("receive_ts") > hi))
    to_ns = int(after["receive_ts"].min())
    write_parquet(books.filter(~lost), day / "recording.parquet")
    gap = {"symbol": "BTC/USDT", "from_ns": from_ns, "to_ns": to_ns, "reason": "connection lost"}
    (day / "recording.gaps.json").write_text(json.dumps([gap]))
    result = _run(path, dg.DagsterInstance.ephemeral(), DAYS[0])
    assert result.success
    assert result.asset_materializations_for_node("orderbook_snapshots")[0].metadata["recorded_gaps"].value == 1
    valid = np.load(storage.tensors(DAYS[0]) / "valid.npy")
    grid = np.load(storage.tensors(DAYS[0]) / "timestamps.npy")
    inside = (grid > from_ns) & (grid < to_ns)
    assert inside.sum() > 50 and not valid[inside, 0].any()  # BTC/USDT: every step inside the gap
    assert valid[inside, 1].all() and valid[grid >= to_ns, 0].all()  # ETH/USDT, and BTC after the re-sync
