"""Importing the real Binance recording (tests/data) and running the pipeline on it."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import polars as pl
import pytest
import yaml

from bmlt_assets.core.config import PROJECT_ROOT, load_config
from bmlt_assets.core.sources.binance.sync import BookBuilder, read_recording
from bmlt_assets.definitions import CHECKS, INGEST_ASSETS, TRAINING_ASSETS, build_resources
from bmlt_assets.partitions import range_tags
from bmlt_resources.storage import StorageResource
from tests.helpers import real_recording

BIN = Path(sys.executable).parent


def _independent_rebuild(levels: int) -> tuple[int, int, tuple[float, float]]:
    """A second, plain implementation of the spot rules: (books, crossed, final best bid/ask)."""
    with gzip.open(real_recording(), "rt") as recording:
        lines = [line.split(" ", 1) for line in recording]
    messages = [json.loads(payload) for _, payload in lines]
    snapshot_at = next(i for i, m in enumerate(messages) if "lastUpdateId" in m)
    snapshot = messages[snapshot_at]
    bids = dict(snapshot["bids"])
    asks = dict(snapshot["asks"])
    last = snapshot["lastUpdateId"]
    books = crossed = 0
    best = (0.0, 0.0)
    for message in messages:  # buffered events before the snapshot are replayed too
        data = message.get("data", {})
        if data.get("e") != "depthUpdate" or data["u"] <= last:
            continue
        assert data["U"] <= last + 1, "a sequence gap in the recording"
        for book, changes in ((bids, data["b"]), (asks, data["a"])):
            for price, quantity in changes:
                if float(quantity) == 0:
                    book.pop(price, None)
                else:
                    book[price] = quantity
        last = data["u"]
        live_bids = sorted((float(p) for p, q in bids.items() if float(q) > 0), reverse=True)
        live_asks = sorted(float(p) for p, q in asks.items() if float(q) > 0)
        if len(live_bids) >= levels and len(live_asks) >= levels:
            books += 1
            crossed += live_bids[0] >= live_asks[0]
            best = (live_bids[0], live_asks[0])
    return books, crossed, best


def test_import_matches_an_independent_rebuild() -> None:
    builder = BookBuilder("spot", 20)
    builder.feed(read_recording(real_recording()))
    books, crossed, (best_bid, best_ask) = _independent_rebuild(20)
    summary = builder.summary
    assert summary.snapshots == books > 3000
    assert summary.gaps == [] and summary.crossed == crossed == 0
    frame = builder.frame()
    last = frame.sort("receive_ts").tail(1)
    assert last["bid_px"].to_numpy()[0][0] == best_bid and last["ask_px"].to_numpy()[0][0] == best_ask
    assert frame["receive_ts"].is_sorted() and (frame["update_id"].diff().drop_nulls() > 0).all()


def test_a_sequence_gap_is_recorded_and_the_book_resyncs(tmp_path: Path) -> None:
    with gzip.open(real_recording(), "rt") as recording:
        lines = recording.read().splitlines()
    depth = [i for i, line in enumerate(lines) if "depthUpdate" in line]
    broken = tmp_path / "gap.txt"
    broken.write_text("\n".join(line for i, line in enumerate(lines) if i != depth[1000]) + "\n")  # lose one diff
    builder = BookBuilder("spot", 20)
    builder.feed(read_recording(broken))
    assert len(builder.summary.gaps) == 1
    # With no second REST snapshot in the file, nothing after the gap may be emitted.
    assert builder.summary.snapshots < 1000


def _binance_config(tmp_path: Path) -> Path:
    raw = yaml.safe_load((PROJECT_ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    raw.update(
        name="binance-import",
        data={
            "source": "binance",
            "market": "spot",
            "symbols": ["BTC/USDT"],
            "start_date": "2024-08-08",
            "end_date": "2024-08-08",
            "cadence_ms": 1000,
            "depth": 20,
        },
        labels={"horizons_s": [5, 10], "vol_lookback_s": 30},
        dataset={"window_steps": 20, "sample_stride": 1, "norm_fit_samples": 128},
        quality={"min_coverage": 0.0, "min_valid_fraction": 0.0, "min_class_share": 0.0},
        storage={"uri": str(tmp_path / "data")},
    )
    raw["representation"] = {
        "kind": "hybrid",
        "raw_levels": 3,
        "bucket_count": 2,
        "bucket_min_bps": 0.5,
        "bucket_max_bps": 5.0,
    }
    raw["training"]["max_train_samples"] = None
    path = tmp_path / "binance.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


SENTINEL = "sentinel-secret-7f3a9c"


@pytest.mark.slow  # the whole pipeline on the imported recording: about 12 s
def test_the_pipeline_runs_on_imported_real_data_and_never_leaks_the_api_secret(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BINANCE_API_KEY", "sentinel-key-0b2d")
    monkeypatch.setenv("BINANCE_API_SECRET", SENTINEL)
    path = _binance_config(tmp_path)
    shown = subprocess.run(
        [str(BIN / "bmlt"), "import", str(real_recording()), "--levels", "20", "--config", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert summary["gaps"] == [] and summary["crossed_books"] == 0 and len(summary["written"]) == 1

    config = load_config(path)
    instance = dg.DagsterInstance.ephemeral()
    everything = INGEST_ASSETS + TRAINING_ASSETS + CHECKS
    tags = range_tags(config.data.start_date, config.data.end_date)
    assert dg.materialize(
        everything, selection=INGEST_ASSETS, resources=build_resources(path), instance=instance, tags=tags
    ).success
    result = dg.materialize(everything, selection=TRAINING_ASSETS, resources=build_resources(path), instance=instance)
    assert result.success
    storage = StorageResource.for_config(config)
    snapshots = pl.read_parquet(storage.snapshots(config.data.start_date))
    assert snapshots.height == summary["snapshots"]  # every imported book is sound
    valid = np.load(storage.tensors(config.data.start_date) / "valid.npy")
    assert 300 <= valid.sum() <= 350  # about 5.8 minutes of 1-second steps
    report = json.loads((storage.report / "metrics.json").read_text())["report"]
    assert "oracle" not in report[0]["metrics"]  # real data: no oracle, the baselines still run
    assert {"prior", "persistence", "logistic_obi"} <= set(report[0]["metrics"])

    # The secret reached the Binance resource from the environment...
    with dg.build_resources({"binance": build_resources(path)["binance"]}) as resources:
        assert resources.binance.api_secret == SENTINEL
    # ...and nowhere else: not in Dagster's event log, not in MLflow, not in any written file.
    events = instance.all_logs(result.run_id)
    assert SENTINEL not in " ".join(str(event) for event in events)
    client = mlflow.MlflowClient(tracking_uri=config.tracking_uri)
    for run in client.search_runs([client.get_experiment_by_name(config.mlflow.experiment).experiment_id]):
        assert SENTINEL not in json.dumps(run.data.params) + json.dumps(run.data.tags)
    for file in Path(config.local_dir).rglob("*"):
        if file.is_file():
            assert SENTINEL.encode() not in file.read_bytes(), file


def test_a_tardis_book_snapshot_file_imports_into_the_same_landing_format(tmp_path: Path) -> None:
    header = ["exchange", "symbol", "timestamp", "local_timestamp"]
    for i in range(25):
        header += [f"asks[{i}].price", f"asks[{i}].amount", f"bids[{i}].price", f"bids[{i}].amount"]
    rows = []
    for n, micros in enumerate((1_723_161_600_000_000, 1_723_161_601_000_000, 1_723_161_602_000_000)):
        row = ["binance", "BTCUSDT", str(micros), str(micros + 1500)]
        for i in range(25):
            row += [f"{61838.0 + n + i * 0.5:.2f}", "0.5", f"{61837.5 + n - i * 0.5:.2f}", "0.25"]
        rows.append(",".join(row))
    csv = tmp_path / "binance_book_snapshot_25_2024-08-09_BTCUSDT.csv"
    csv.write_text(",".join(header) + "\n" + "\n".join(rows) + "\n")
    path = _binance_config(tmp_path)
    shown = subprocess.run(
        [
            str(BIN / "bmlt"),
            "import",
            str(csv),
            "--format",
            "tardis-book-snapshot",
            "--levels",
            "20",
            "--config",
            str(path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert summary["snapshots"] == 3 and summary["crossed_books"] == 0
    landed = pl.read_parquet(summary["written"][0])
    assert landed["symbol"].to_list() == ["BTC/USDT"] * 3
    assert landed["receive_ts"].to_list() == [
        1_723_161_600_001_500_000,
        1_723_161_601_001_500_000,
        1_723_161_602_001_500_000,
    ]
    assert (
        landed["bid_px"].to_numpy()[1][:2].tolist() == [61838.5, 61838.0] and len(landed["ask_qty"].to_numpy()[0]) == 20
    )
    too_deep = subprocess.run(
        [
            str(BIN / "bmlt"),
            "import",
            str(csv),
            "--format",
            "tardis-book-snapshot",
            "--levels",
            "30",
            "--config",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert too_deep.returncode == 2 and "at most 25 levels" in too_deep.stderr


# Issue 13: exact book sync.


def _depth(first: int, last: int, previous: int | None = None, symbol: str = "BTCUSDT") -> dict:
    """A combined-stream depth update; ``previous`` is USD-M's ``pu``."""
    data = {"e": "depthUpdate", "E": 1_723_161_600_000, "s": symbol, "U": first, "u": last}
    data |= {"b": [["100.0", "1.0"]], "a": [["101.0", "1.0"]]}
    if previous is not None:
        data["pu"] = previous
    return {"stream": f"{symbol.lower()}@depth", "data": data}


SNAPSHOT_100 = {"lastUpdateId": 100, "bids": [["99.0", "2.0"]], "asks": [["102.0", "2.0"]]}
BUFFERED = _depth(80, 90, 79)  # the USD-M event buffered before the snapshot (older than it: dropped)


def test_usdm_first_event_after_a_snapshot_follows_the_futures_rule() -> None:
    # Binance's USD-M procedure: drop u < lastUpdateId; the first event has U <= lastUpdateId <= u.
    documented = BookBuilder("usdm", 1)
    documented.feed([(0, BUFFERED), (1, SNAPSHOT_100), (2, _depth(95, 105, 94))])
    assert documented.summary.updates_applied == 1 and documented.summary.gaps == []
    # An event ending exactly at lastUpdateId is the first one under USD-M (spot would drop it: u <= 100)...
    boundary = BookBuilder("usdm", 1)
    boundary.feed([(0, BUFFERED), (1, SNAPSHOT_100), (2, _depth(95, 100, 94)), (3, _depth(101, 103, 100))])
    assert boundary.summary.updates_applied == 2 and boundary.summary.gaps == []
    assert boundary.frame()["update_id"].to_list() == [100, 103]
    # ...and one starting right after it (spot's straddle of lastUpdateId + 1) does not sync a USD-M book.
    late = BookBuilder("usdm", 1)
    late.feed([(0, BUFFERED), (1, SNAPSHOT_100), (2, _depth(101, 105, 100))])
    assert late.summary.updates_applied == 0 and len(late.summary.gaps) == 1


def test_a_usdm_pu_chain_with_one_break_gives_one_gap() -> None:
    # Futures update ids are not contiguous: only pu == previous u chains.
    events = [(95, 100, 90), (103, 110, 100), (117, 120, 110), (125, 130, 121), (131, 140, 130)]
    builder = BookBuilder("usdm", 1)
    messages = [(0, BUFFERED), (1, SNAPSHOT_100)] + [(2 + i, _depth(*ids)) for i, ids in enumerate(events)]
    builder.feed(messages + [(10, {**SNAPSHOT_100, "lastUpdateId": 130})])
    gaps = builder.summary.gaps
    assert len(gaps) == 1 and gaps[0]["after_update_id"] == 120 and (gaps[0]["from_ns"], gaps[0]["to_ns"]) == (4, 5)
    # Re-synced from the second snapshot with the buffered events (the first of them ends at its lastUpdateId).
    assert builder.frame()["update_id"].to_list() == [100, 110, 120, 130, 140]


def test_a_gap_starts_at_the_last_book_never_at_the_epoch() -> None:
    fresh = BookBuilder("spot", 1)  # no book yet: the gap starts at the symbol's first message
    fresh.feed([(1_000, _depth(1, 5)), (2_000, SNAPSHOT_100), (3_000, _depth(120, 125))])
    assert [(g["from_ns"], g["to_ns"]) for g in fresh.summary.gaps] == [(1_000, 3_000)]
    resynced = BookBuilder("spot", 1)  # a failed re-sync: the gap still starts at the last book
    resynced.feed(
        [
            (500, _depth(90, 95)),
            (1_000, SNAPSHOT_100),
            (4_000, _depth(101, 105)),
            (5_000, _depth(120, 125)),
            (6_000, {**SNAPSHOT_100, "lastUpdateId": 130}),
            (7_000, _depth(140, 145)),
        ]
    )
    assert [(g["from_ns"], g["to_ns"]) for g in resynced.summary.gaps] == [(4_000, 5_000), (4_000, 7_000)]


def test_a_snapshot_arriving_while_in_sync_does_not_reset_the_book(tmp_path: Path) -> None:
    with gzip.open(real_recording(), "rt") as recording:
        lines = recording.read().splitlines()
    snapshot_at = next(i for i, line in enumerate(lines) if "lastUpdateId" in line)
    depth_after = [i for i, line in enumerate(lines) if i > snapshot_at and "depthUpdate" in line]
    late = tmp_path / "late_snapshot.txt"  # the same REST snapshot again, three events late
    late.write_text("\n".join(lines[: depth_after[3]] + [lines[snapshot_at]] + lines[depth_after[3] :]) + "\n")
    builder = BookBuilder("spot", 20)
    builder.feed(read_recording(late))
    assert builder.summary.gaps == [] and builder.summary.snapshots == 3449


def _as_other_symbol(lines: list[str], shift: int, delay_ns: int) -> list[str]:
    """The recording as ETH/USDT's: renamed stream, update ids shifted, receive times delayed."""
    out = []
    for line in lines:
        stamp, payload = line.split(" ", 1)
        message = json.loads(payload)
        data = message.get("data", message)
        if "lastUpdateId" in message:
            message["lastUpdateId"] += shift
        elif data.get("e") == "depthUpdate":
            message["stream"] = message["stream"].replace("btcusdt", "ethusdt")
            data["s"], data["U"], data["u"] = "ETHUSDT", data["U"] + shift, data["u"] + shift
        out.append(f"{int(stamp) + delay_ns} {json.dumps(message)}")
    return out


def test_multi_symbol_and_multi_file_imports_keep_every_symbol(tmp_path: Path) -> None:
    from bmlt_assets.core.sources.binance.sync import RecordingError
    from bmlt_assets.core.sources.importer import import_recordings

    with gzip.open(real_recording(), "rt") as recording:
        btc = recording.read().splitlines()
    eth = _as_other_symbol(btc, -20_000_000_000, 1_000)
    btc_file, eth_file, both_file = tmp_path / "btc.txt", tmp_path / "eth.txt", tmp_path / "both.txt"
    btc_file.write_text("\n".join(btc) + "\n")
    eth_file.write_text("\n".join(eth) + "\n")
    both_file.write_text("\n".join(sorted(btc + eth, key=lambda line: int(line.split(" ", 1)[0]))) + "\n")
    for files in ([btc_file, eth_file], [both_file]):
        frame, summary = import_recordings(files, "binance-ws", "spot", 20)
        counts = dict(frame.group_by("symbol").len().iter_rows())
        assert counts == {"BTC/USDT": 3449, "ETH/USDT": 3449} and summary.gaps == [], files
    # Two streams whose update ids both bracket a snapshot: no guessing.
    same_ids = tmp_path / "same_ids.txt"
    same = _as_other_symbol(btc, 0, 1_000)
    same_ids.write_text("\n".join(sorted(btc + same, key=lambda line: int(line.split(" ", 1)[0]))) + "\n")
    try:
        import_recordings([same_ids], "binance-ws", "spot", 20)
    except RecordingError as error:
        assert "fits the update ids of BTC/USDT, ETH/USDT" in str(error) and str(same_ids) in str(error)
    else:
        raise AssertionError("an ambiguous snapshot was imported")
