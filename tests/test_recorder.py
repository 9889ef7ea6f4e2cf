"""The live recorder against a local Binance stand-in that replays the shared recording.

ccxt.pro runs unmodified (its WebSocket client, REST snapshot, sync rules and parsing); only its
endpoint URLs point at tests/replay_server.py. Every recorded book is compared with the server's
independent rebuild at the same update id.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from bmlt_assets.cli import main as bmlt
from bmlt_assets.cli import parse_duration
from bmlt_assets.core.book import snapshot_schema
from bmlt_assets.core.config import ConfigError, load_config
from bmlt_assets.core.files import landing_root
from bmlt_assets.core.sources.binance.errors import BinanceBanned
from bmlt_assets.core.sources.binance.recorder import BookRow, CadenceSampler, LandingWriter, Recorder
from bmlt_assets.definitions import build_definitions, build_resources
from bmlt_assets.snapshots import orderbook_snapshots
from bmlt_resources.binance import BinanceResource
from bmlt_resources.storage import LandingZoneResource, StorageResource
from tests.helpers import real_recording, write_config
from tests.replay_server import ReplayServer, ThreadedReplayServer

BIN = Path(sys.executable).parent
DEPTH = 20


def landing_books(folder: Path) -> pl.DataFrame:
    files = sorted(folder.rglob("*.parquet"))
    assert files, f"no landing files under {folder}"
    return pl.concat([pl.read_parquet(f) for f in files]).sort("receive_ts")


def assert_books_match(books: pl.DataFrame, truth: dict[int, tuple[list, list]]) -> None:
    """Every recorded book equals the independent rebuild after the same update."""
    assert books.schema == pl.Schema(snapshot_schema(DEPTH))
    for row in books.iter_rows(named=True):
        bids, asks = truth[row["update_id"]]
        assert (row["bid_px"], row["bid_qty"]) == tuple(map(list, zip(*bids))), (
            f"bids differ at update {row['update_id']}"
        )
        assert (row["ask_px"], row["ask_qty"]) == tuple(map(list, zip(*asks))), (
            f"asks differ at update {row['update_id']}"
        )
    assert (books["update_id"].diff().drop_nulls() > 0).all()  # one symbol, receive order = update order


async def record_replay(server: ReplayServer, landing: Path, *, cadence_ms: int = 0) -> Recorder:
    """Record everything the server streams, then stop."""
    await server.start()
    exchange = BinanceResource(rest_url=server.rest_url, ws_url=server.ws_url).stream_exchange()
    recorder = Recorder(
        exchange,
        ["BTC/USDT"],
        DEPTH,
        LandingWriter(landing, DEPTH, rotate_s=60),
        cadence_ms=cadence_ms,
        flush_s=0.5,
        backoff_s=0.02,
        max_backoff_s=0.5,
    )
    stop = asyncio.Event()

    async def stop_when_replayed() -> None:
        await server.finished.wait()
        deadline = time.monotonic() + 30
        while recorder.states["BTC/USDT"].last_update_id != server.updates[-1]["u"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # until the last update is in
        stop.set()

    stopper = asyncio.create_task(stop_when_replayed())
    try:
        await asyncio.wait_for(recorder.run(stop), timeout=120)
    finally:
        stopper.cancel()
        await server.stop()
    return recorder


def test_every_recorded_book_equals_the_independent_rebuild(tmp_path: Path) -> None:
    server = ReplayServer(real_recording(), levels=DEPTH, rate=2000)
    recorder = asyncio.run(record_replay(server, tmp_path))
    books = landing_books(tmp_path)
    assert_books_match(books, server.truth)
    assert books.height == sum(recorder.stats.books.values()) > 500
    assert recorder.stats.gaps == [] and recorder.stats.reconnects == 0 and server.connections == 1
    assert books["update_id"][-1] == server.updates[-1]["u"]  # the last update was recorded
    assert not list(tmp_path.rglob("*.gaps.json"))


@pytest.mark.slow  # waits out real reconnect back-offs: about 12 s
def test_disconnects_and_a_sequence_gap_resync_and_are_recorded(tmp_path: Path) -> None:
    skipped, disconnects = 500, (1500, 2500)
    server = ReplayServer(real_recording(), levels=DEPTH, rate=500, skip=(skipped,), disconnect_after=disconnects)
    recorder = asyncio.run(record_replay(server, landing_root(tmp_path, "spot")))
    stats = recorder.stats
    assert stats.reconnects == 2 and server.connections == 3
    # ccxt raises a dropped connection only to a watch call pending at that moment; otherwise it
    # reconnects silently and the re-sync alone reveals the gap.
    assert stats.gaps[0].reason == "sequence gap"
    assert all(gap.reason.split(":")[0] in ("NetworkError", "connection lost") for gap in stats.gaps[1:])
    lost = [server.updates[skipped]["u"], *(server.updates[i + 1]["u"] for i in disconnects)]
    assert len(stats.gaps) == len(lost)
    for gap, first_lost in zip(stats.gaps, lost):
        assert gap.after_update_id < first_lost <= gap.resumed_update_id and gap.from_ns < gap.to_ns
    books = landing_books(tmp_path)
    assert set(books["update_id"]) >= {gap.resumed_update_id for gap in stats.gaps}  # each gap ends at a recorded book
    assert_books_match(books, server.truth)  # no corrupted book before, between or after the gaps
    # The intervals are saved beside the files, where orderbook_snapshots reports them from.
    landing = LandingZoneResource(base=str(tmp_path), market="spot", depth=DEPTH)
    days = sorted(
        dt.date.fromisoformat(folder.name.removeprefix("date=")) for folder in landing_root(tmp_path, "spot").iterdir()
    )
    saved = [gap for day in days for gap in landing.gaps(day, ["BTC/USDT"])]
    assert sorted(saved, key=lambda gap: gap["to_ns"]) == [asdict(gap) for gap in stats.gaps]


def _row(symbol: str, receive_s: float, update_id: int) -> BookRow:
    return BookRow(symbol, 0, int(receive_s * 1e9), update_id, np.zeros((1, 2)), np.zeros((1, 2)))


def test_the_cadence_keeps_the_last_book_of_each_interval() -> None:
    sampler = CadenceSampler(1000)
    offered = [sampler.offer(_row("A", t, i)) for i, t in enumerate([0.1, 0.5, 0.9, 1.2, 2.5, 2.7])]
    assert [[r.update_id for r in out] for out in offered] == [[], [], [], [2], [3], []]
    assert [r.update_id for r in sampler.release(int(2.9e9))] == []  # its interval is still open
    assert [r.update_id for r in sampler.release(int(3.0e9))] == [5]
    assert sampler.drain() == [] and CadenceSampler(0).offer(_row("A", 0.1, 9))[0].update_id == 9


def test_an_ip_ban_stops_the_recorder_instead_of_retrying(tmp_path: Path) -> None:
    server = ReplayServer(real_recording(), levels=DEPTH, rate=500, depth_status=418)
    with pytest.raises(BinanceBanned, match="HTTP 418.*wait for the ban to expire"):
        asyncio.run(record_replay(server, tmp_path))
    assert server.sent < len(server.updates)  # it stopped at the first snapshot, long before the end


def _full_row(symbol: str, receive_s: float, update_id: int) -> BookRow:
    return BookRow(symbol, 0, int(receive_s * 1e9), update_id, np.array([[1.0, 2.0]]), np.array([[3.0, 4.0]]))


def test_rotation_splits_files_by_interval_across_midnight(tmp_path: Path) -> None:
    writer = LandingWriter(tmp_path, 1, rotate_s=60, session="s")
    rows = [_full_row("A", t, i) for i, t in enumerate([86_340.0, 86_399.5, 86_400.2])]  # the last one is the next day
    writer.add(rows[:2])
    writer.flush(now_ns=rows[1].receive_ns)
    writer.add(rows[2:])
    writer.flush(now_ns=rows[2].receive_ns)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet"))
    assert files == ["date=1970-01-01/rec-235900-s.parquet", "date=1970-01-02/rec-000000-s.parquet"]
    assert pl.read_parquet(tmp_path / files[0])["update_id"].to_list() == [0, 1]
    assert list(writer.frames) == [1440] and not writer.rows  # the closed interval is no longer held in memory


def test_a_failed_write_keeps_its_rows_for_the_next_flush(tmp_path: Path, monkeypatch) -> None:
    writer = LandingWriter(tmp_path, 1, rotate_s=60, session="s")
    writer.add([_full_row("A", 10.0, 1)])
    writer.flush(now_ns=int(11e9))
    writer.add([_full_row("A", 20.0, 2)])

    def disk_full(frame: pl.DataFrame, path: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("bmlt_assets.core.sources.binance.recorder.write_parquet", disk_full)
    with pytest.raises(OSError, match="disk full"):
        writer.flush(now_ns=int(21e9))
    monkeypatch.undo()
    (published,) = tmp_path.rglob("*.parquet")
    assert pl.read_parquet(published)["update_id"].to_list() == [1]  # the old content, intact
    writer.flush(now_ns=int(61e9))  # the next flush, even after the interval closed
    assert pl.read_parquet(published)["update_id"].to_list() == [1, 2]


def test_a_clock_stepping_back_into_a_closed_interval_keeps_its_file(tmp_path: Path) -> None:
    writer = LandingWriter(tmp_path, 1, rotate_s=60, session="s")
    writer.add([_full_row("A", 10.0, 1), _full_row("A", 20.0, 2)])
    writer.flush(now_ns=int(61e9))  # interval 0 is closed and forgotten
    writer.add([_full_row("A", 30.0, 3)])  # e.g. after an NTP step back
    writer.flush(now_ns=int(62e9))
    (published,) = tmp_path.rglob("*.parquet")
    assert pl.read_parquet(published)["update_id"].to_list() == [1, 2, 3]


def _binance_config(tmp_path: Path, server: ReplayServer, **recording: object) -> Path:
    return write_config(
        tmp_path,
        {
            "data": {
                "source": "binance",
                "symbols": ["BTC/USDT"],
                "depth": DEPTH,
                "cadence_ms": 1000,
                "binance": {"rest_url": server.rest_url, "ws_url": server.ws_url},
            },
            "labels": {"target_symbol": "BTC/USDT", "horizons_s": [30, 120]},
            "recording": {"flush_s": 0.25, "backoff_s": 0.05, "max_backoff_s": 1.0, **recording},
        },
    )


@pytest.fixture
def threaded_server():
    servers: list[ThreadedReplayServer] = []

    def start(**options: object) -> ReplayServer:
        servers.append(ThreadedReplayServer(real_recording(), levels=DEPTH, **options))
        return servers[-1].server

    yield start
    for server in servers:
        server.close()


def _wait_for_files(folder: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not list(folder.rglob("*.parquet")):
        assert time.monotonic() < deadline, f"the recorder published nothing under {folder} in {timeout_s} s"
        time.sleep(0.1)


@pytest.fixture
def record_process():
    """Starts `bmlt record` subprocesses; kills any still running when the test ends."""
    processes: list[subprocess.Popen] = []

    def start(config: Path, *extra: str) -> subprocess.Popen:
        processes.append(
            subprocess.Popen(
                [str(BIN / "bmlt"), "record", "--config", str(config), *extra],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        return processes[-1]

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_sigterm_flushes_everything_and_exits_cleanly(tmp_path: Path, threaded_server, record_process) -> None:
    server = threaded_server(rate=400)
    config = _binance_config(tmp_path, server, cadence_ms=0)
    process = record_process(config, "--json")
    _wait_for_files(tmp_path / "data" / "landing" / "spot")
    time.sleep(2.0)  # at 400 books/s, well over 100 books even on a loaded machine
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    summary = json.loads(out)
    books = landing_books(tmp_path / "data" / "landing")
    assert books.height == summary["books"]["BTC/USDT"] > 100  # everything counted was published
    assert_books_match(books, server.truth)
    assert re.search(
        r"\] [\d.]+ books/s \(BTC/USDT [\d.]+\) \| gaps 0 \| reconnects 0 \| [\d.]+ MiB in \d+ file\(s\) \| cpu \d+%",
        err,
    )


def test_a_killed_recorder_leaves_only_complete_files(tmp_path: Path, threaded_server, record_process) -> None:
    server = threaded_server(rate=400)
    config = _binance_config(tmp_path, server, cadence_ms=0, rotate_s=1)
    landing = tmp_path / "data" / "landing"
    process = record_process(config)
    _wait_for_files(landing)
    time.sleep(2.5)
    process.kill()
    killed_ns = time.time_ns()
    process.communicate(timeout=30)
    files = sorted(landing.rglob("*.parquet"))
    assert len(files) >= 2  # rotated at least once
    books = landing_books(landing)  # every published file reads in full
    assert_books_match(books, server.truth)
    lost_s = (killed_ns - books["receive_ts"].max()) / 1e9
    assert lost_s < 0.25 + 2.0, (
        f"{lost_s:.2f} s of books lost, more than one flush interval (+2 s slack for a loaded machine)"
    )


def test_record_job_runs_the_recorder_in_dagster(tmp_path: Path, threaded_server) -> None:
    server = threaded_server(rate=400)
    definitions = build_definitions(_binance_config(tmp_path, server))  # cadence: data.cadence_ms (1 s)
    result = definitions.get_job_def("record_job").execute_in_process(
        run_config={"ops": {"record_order_books": {"config": {"duration_s": 4.0}}}}
    )
    assert result.success
    metadata = next(e for e in result.all_events if e.event_type_value == "STEP_OUTPUT").event_specific_data.metadata
    books = landing_books(tmp_path / "data" / "landing")
    assert books.height == metadata["books"].value["BTC/USDT"]
    assert 2 <= books.height <= 6  # one book per second of a ~4 s recording
    assert_books_match(books, server.truth)
    seconds = books["receive_ts"].to_numpy() // 1_000_000_000
    assert len(np.unique(seconds)) == len(seconds)  # at most one book per cadence interval

    # Recorded files are landing files like any other: orderbook_snapshots consolidates them. Today's
    # partition only exists once the day is over, so file the recording under a past day.
    landing = tmp_path / "data" / "landing" / "spot"
    past = landing / "date=2024-08-09"
    for file in list(landing.rglob("*.parquet")):
        past.mkdir(exist_ok=True)
        file.rename(past / file.name)
    ingested = dg.materialize(
        [orderbook_snapshots], partition_key="2024-08-09", resources=build_resources(_binance_config(tmp_path, server))
    )
    assert ingested.success
    storage = StorageResource(uri=str(tmp_path / "data"), local_dir=str(tmp_path / "data"), config_name="tiny")
    consolidated = pl.read_parquet(storage.snapshots(dt.date(2024, 8, 9)))
    assert consolidated.sort("receive_ts").equals(books)


def test_record_refuses_a_synthetic_config_an_unknown_symbol_and_an_unreachable_exchange(
    tmp_path: Path, threaded_server, tiny_config_path: Path, capsys
) -> None:
    assert bmlt(["record", "--config", str(tiny_config_path), "--duration", "1"]) == 2
    assert "recording needs a Binance config" in capsys.readouterr().err
    server = threaded_server()
    config = _binance_config(tmp_path, server)
    config.write_text(
        config.read_text()
        .replace("- BTC/USDT", "- DOGE/USDT", 1)
        .replace("target_symbol: BTC/USDT", "target_symbol: DOGE/USDT")
    )
    assert bmlt(["record", "--config", str(config), "--duration", "5"]) == 2
    assert "['DOGE/USDT'] not listed by Binance" in capsys.readouterr().err
    config.write_text(config.read_text().replace(server.rest_url, "http://127.0.0.1:9/api/v3"))  # nothing listens there
    assert bmlt(["record", "--config", str(config), "--duration", "1"]) == 2
    assert "cannot reach Binance" in capsys.readouterr().err
    assert not (tmp_path / "data" / "landing").exists()


def test_a_spot_stream_url_without_stream_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "data": {"source": "binance", "symbols": ["BTC/USDT"], "binance": {"ws_url": "wss://relay.example/ws"}},
            "labels": {"target_symbol": "BTC/USDT"},
        },
    )
    with pytest.raises(ConfigError, match="must contain '/stream'"):
        load_config(config)


def test_durations_parse_with_units() -> None:
    assert [parse_duration(text) for text in ("90", "90s", "1.5m", "2h", "1d")] == [90, 90, 90, 7200, 86400]
    for bad in ("", "abc", "-5", "0m", "nan", "inf"):
        with pytest.raises(Exception, match="duration"):
            parse_duration(bad)
