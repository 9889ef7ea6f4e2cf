"""tardis.dev as a book source, offline: the official client downloads from a loopback archive that
serves fixtures built from the real spot recording (tests/tardis_archive.py)."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from bmlt_assets.core.config import PROJECT_ROOT, ConfigError, load_config
from bmlt_assets.core.plan import horizon_plan
from bmlt_assets.core.sources.importer import import_recordings
from bmlt_assets.core.sources.tardis import (
    TardisError,
    incremental_books,
    inspect_download,
    require_access,
    snapshot25_books,
)
from bmlt_assets.definitions import CHECKS, build_definitions, build_resources
from bmlt_assets.partitions import range_tags
from bmlt_assets.snapshots import orderbook_snapshots
from bmlt_resources.storage import StorageResource
from bmlt_resources.tardis import TardisArchiveResource
from tests.helpers import real_recording, write_config
from tests.tardis_archive import ArchiveServer, gzip_csv, incremental_rows, snapshot25_rows

DAY1, DAY2, EMPTY_DAY = dt.date(2024, 8, 8), dt.date(2024, 8, 9), dt.date(2024, 8, 10)
SENTINEL_KEY = "tardis-sentinel-key-5f1c9a"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def reference_books() -> pl.DataFrame:
    """What `bmlt import` rebuilds from the recording, at 20 levels."""
    books, summary = import_recordings([real_recording()], "binance-ws", "spot", 20)
    assert summary.snapshots == books.height > 3000 and not summary.gaps
    return books


@pytest.fixture(scope="module")
def incremental_days() -> dict[dt.date, bytes]:
    return {day: gzip_csv(incremental_rows(real_recording(), shift)) for shift, day in enumerate((DAY1, DAY2))}


@pytest.fixture
def archive(incremental_days: dict[dt.date, bytes]) -> Iterator[ArchiveServer]:
    """Two recorded days of BTCUSDT incremental_book_L2, then a day served as an empty file."""
    with ArchiveServer() as server:
        for day, body in incremental_days.items():
            server.add("binance", "incremental_book_L2", day, "BTCUSDT", body)
        server.add("binance", "incremental_book_L2", EMPTY_DAY, "BTCUSDT", gzip.compress(b""))
        yield server


def _resource(server: ArchiveServer, folder: Path, every_ms: int = 0) -> TardisArchiveResource:
    return TardisArchiveResource(
        exchange="binance",
        data_type="incremental_book_L2",
        market="spot",
        depth=20,
        download_dir=str(folder),
        endpoint=server.endpoint,
        keep_every_ms=every_ms,
    )


def _assert_same_books(books: pl.DataFrame, reference: pl.DataFrame, shift_ns: int = 0) -> None:
    """Equal books at equal times; tardis keeps microseconds, so receive times are compared at that."""
    assert books.height == reference.height
    for column in ("bid_px", "bid_qty", "ask_px", "ask_qty"):
        np.testing.assert_array_equal(books[column].to_numpy(), reference[column].to_numpy())
    np.testing.assert_array_equal(books["exchange_ts"].to_numpy(), reference["exchange_ts"].to_numpy() + shift_ns)
    expected_receive = reference["receive_ts"].to_numpy() // 1000 * 1000 + shift_ns
    np.testing.assert_array_equal(books["receive_ts"].to_numpy(), expected_receive)
    assert (np.diff(books["update_id"].to_numpy()) > 0).all()


def test_incremental_rows_rebuild_the_books_of_bmlt_import(tmp_path: Path, reference_books: pl.DataFrame) -> None:
    path = tmp_path / "BTCUSDT.csv.gz"
    path.write_bytes(gzip_csv(incremental_rows(real_recording())))
    books, summary = incremental_books(path, "BTC/USDT", "spot", 20)
    assert summary.updates_applied == reference_books.height and not summary.gaps
    _assert_same_books(books, reference_books)


@pytest.mark.parametrize("market", ["spot", "usdm"])
def test_a_snapshot_run_mid_file_starts_a_fresh_book(tmp_path: Path, market: str) -> None:
    rows = [
        (1, 1, True, "bid", 100.0, 1.0),
        (1, 1, True, "ask", 101.0, 1.0),
        (2, 2, False, "bid", 100.5, 2.0),  # a level the next snapshot does not hold
        (3, 3, True, "bid", 99.0, 3.0),
        (3, 3, True, "ask", 102.0, 3.0),
        (4, 4, False, "ask", 102.0, 0.0),  # amount 0 deletes the level...
        (4, 4, False, "ask", 103.0, 4.0),  # ...in the same update as this one
    ]
    columns = ["timestamp", "local_timestamp", "is_snapshot", "side", "price", "amount"]
    frame = pl.DataFrame(rows, schema=columns, orient="row")
    path = tmp_path / "f.csv.gz"
    named = frame.select(pl.lit("binance").alias("exchange"), pl.lit("BTCUSDT").alias("symbol"), pl.all())
    path.write_bytes(gzip_csv(named))
    books, summary = incremental_books(path, "BTC/USDT", market, 1)
    assert not summary.gaps and summary.updates_applied == 2
    assert books["bid_px"].to_list() == [[100.5], [99.0]]
    assert books["ask_px"].to_list() == [[101.0], [103.0]]


def test_book_snapshot_25_rows_give_the_books_of_bmlt_import(tmp_path: Path, reference_books: pl.DataFrame) -> None:
    path = tmp_path / "BTCUSDT.csv.gz"
    path.write_bytes(gzip_csv(snapshot25_rows(real_recording())))
    _assert_same_books(snapshot25_books(path, "BTC/USDT", 20), reference_books)


def test_the_client_downloads_once_and_the_cache_is_reused(
    tmp_path: Path, archive: ArchiveServer, reference_books: pl.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TARDIS_API_KEY", SENTINEL_KEY)
    source = _resource(archive, tmp_path / "cache")
    for shift, day in enumerate((DAY1, DAY2)):
        _assert_same_books(source.snapshots(day, ["BTC/USDT"]), reference_books, shift * 86_400 * 10**9)
        assert source.gaps(day, ["BTC/USDT"]) == []
    assert [auth for _, auth in archive.requests] == [f"Bearer {SENTINEL_KEY}"] * 2  # one request per file
    assert (tmp_path / "cache/binance/incremental_book_L2/2024/08/09/BTCUSDT.csv.gz").exists()
    source.snapshots(DAY1, ["BTC/USDT"])
    assert len(archive.requests) == 2  # complete and verified: not fetched again


def test_a_file_cut_halfway_is_fetched_again_never_used_half(
    tmp_path: Path, archive: ArchiveServer, reference_books: pl.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TARDIS_API_KEY", SENTINEL_KEY)
    source = _resource(archive, tmp_path / "cache")
    cached = source.cached(DAY1, "BTC/USDT")
    path = "binance/incremental_book_L2/2024/08/08/BTCUSDT.csv.gz"
    # A download killed halfway by an earlier run: the client would skip an existing file.
    cached.parent.mkdir(parents=True)
    cached.write_bytes(archive.files[path][: len(archive.files[path]) // 2])
    assert not inspect_download(cached).verified  # its first MiB reads well: parsing it finds the cut
    _assert_same_books(source.snapshots(DAY1, ["BTC/USDT"]), reference_books)
    assert archive.fetched(path) == 1
    # The archive itself cuts the answer (no Content-Length, so the client keeps the half file): fetched again.
    cached.unlink()
    archive.cut_next[path] = 1
    _assert_same_books(source.snapshots(DAY1, ["BTC/USDT"]), reference_books)
    assert archive.fetched(path) == 3
    # Always cut: the day fails with the reason, and nothing half is left for a later run.
    cached.unlink()
    archive.cut_next[path] = 99
    with pytest.raises(TardisError, match="damaged files 3 times .*cut off"):
        source.snapshots(DAY1, ["BTC/USDT"])
    assert not cached.exists() and not list(cached.parent.glob("*.unconfirmed"))


def test_a_download_is_decompressed_once_parsing_it_verifies_it(
    tmp_path: Path, archive: ArchiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pass that rebuilds the books is the verification: a fresh 9 MB day is decompressed once
    (and its first MiB on inspection), not once to verify and again to parse; a second read of the
    same day trusts the note and decompresses it only to parse it."""
    monkeypatch.setenv("TARDIS_API_KEY", SENTINEL_KEY)
    decompressed = [0]
    read = gzip.GzipFile.read

    def counted(self: gzip.GzipFile, size: int = -1) -> bytes:
        data = read(self, size)
        decompressed[0] += len(data)
        return data

    monkeypatch.setattr(gzip.GzipFile, "read", counted)
    source = _resource(archive, tmp_path / "cache")
    day_bytes = len(gzip.decompress(archive.files["binance/incremental_book_L2/2024/08/08/BTCUSDT.csv.gz"]))
    assert source.snapshots(DAY1, ["BTC/USDT"]).height and source.gaps(DAY1, ["BTC/USDT"]) == []
    assert day_bytes - 2**10 < decompressed[0] <= day_bytes + 2**20 + 2**10  # the old code: twice the day
    assert (tmp_path / "cache/binance/incremental_book_L2/2024/08/08/BTCUSDT.csv.gz.verified.json").exists()
    decompressed[0] = 0
    source.snapshots(DAY1, ["BTC/USDT"])
    assert day_bytes - 2**10 < decompressed[0] <= day_bytes + 2**10


def test_without_a_key_only_the_first_day_of_each_month_is_asked_for(
    tmp_path: Path, archive: ArchiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TARDIS_API_KEY", raising=False)
    with pytest.raises(TardisError, match=r"TARDIS_API_KEY is not set.*2024-08-08 need a key"):
        _resource(archive, tmp_path).snapshots(DAY1, ["BTC/USDT"])
    assert archive.requests == []
    days = [dt.date(2024, 10, 1) + dt.timedelta(days=i) for i in range(92)]
    with pytest.raises(TardisError, match="Free days here: 2024-10-01, 2024-11-01, 2024-12-01"):
        require_access(days, has_key=False)
    require_access([dt.date(2024, 11, 1)], has_key=False)
    require_access(days, has_key=True)


def _tardis_config(folder: Path, server: ArchiveServer, start: dt.date, end: dt.date) -> Path:
    """The tiny config on the recording's BTC/USDT: six minutes a day, so coverage thresholds are off."""
    return write_config(
        folder,
        {
            "data": {
                "source": "tardis",
                "symbols": ["BTC/USDT"],
                "start_date": start.isoformat(),
                "end_date": end.isoformat(),
                "cadence_ms": 1000,
                "tardis": {"endpoint": server.endpoint},
            },
            "labels": {"target_symbol": "BTC/USDT", "horizons_s": [10, 30], "vol_lookback_s": 60},
            "quality": {"min_coverage": 0.0, "min_valid_fraction": 0.0, "min_class_share": 0.0},
        },
    )


def test_an_empty_archive_day_fails_its_check_with_that_reason_only(
    tmp_path: Path, archive: ArchiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TARDIS_API_KEY", SENTINEL_KEY)
    config_path = _tardis_config(tmp_path, archive, DAY1, EMPTY_DAY)
    resources = build_resources(config_path)
    checks = {}
    for day in (DAY1, EMPTY_DAY):
        result = dg.materialize(
            [orderbook_snapshots, *CHECKS[:1]],
            resources=resources,
            partition_key=day.isoformat(),
            raise_on_error=False,
        )
        assert result.asset_materializations_for_node("orderbook_snapshots")  # the day itself is written
        (evaluation,) = result.get_asset_check_evaluations()
        checks[day] = evaluation
    assert checks[DAY1].passed
    assert not checks[EMPTY_DAY].passed
    reason = "2024-08-10: BTC/USDT: the tardis archive served an empty file for BTC/USDT on 2024-08-10"
    assert reason in (checks[EMPTY_DAY].description or "")
    assert "2024-08-08" not in (checks[EMPTY_DAY].description or "")


def test_config_ties_the_exchange_to_the_market_and_ships_a_history_config(tmp_path: Path) -> None:
    bad = write_config(tmp_path, {"data": {"source": "tardis", "market": "usdm", "tardis": {"exchange": "binance"}}})
    with pytest.raises(ConfigError, match="'binance' does not serve data.market 'usdm': use 'binance-futures'"):
        load_config(bad)
    history = load_config(PROJECT_ROOT / "configs/binance-history.yaml")
    assert history.data.source == "tardis" and history.data.tardis_exchange == "binance"
    assert history.labels.horizons_s == [60, 300, 900, 3600] and history.labels.edges == "volatility_scaled"
    assert history.labels.fixed_pct_edges == [-10, -5, -2, 0, 2, 5, 10]
    dg.Definitions.validate_loadable(build_definitions(PROJECT_ROOT / "configs/binance-history.yaml"))
    plan = {row["horizon_s"]: row for row in horizon_plan(history, 10_000)}
    assert plan[60]["outcomes_per_day"] == 1440 and plan[3600]["days_needed"] == 417
    shown = subprocess.run(
        [str(BIN / "bmlt"), "plan", "--config", str(PROJECT_ROOT / "configs/binance-history.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "TARDIS_API_KEY"},
    )
    assert shown.returncode == 0, shown.stderr
    assert "warning: 92 day(s) are too short for the 3600s horizon" in shown.stdout
    assert "warning" not in shown.stdout.split("300s")[0]  # 60 s is well covered
    assert "2024-10-01, 2024-11-01, 2024-12-01" in shown.stdout


@pytest.mark.slow  # a `dagster job execute` process tree over the whole pipeline: about 30 s
def test_dagster_job_execute_runs_the_pipeline_on_two_archive_days_and_never_shows_the_key(
    tmp_path: Path, archive: ArchiveServer
) -> None:
    config_path = _tardis_config(tmp_path, archive, DAY1, DAY2)
    config = load_config(config_path)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "BMLT_CONFIG": str(config_path), "DAGSTER_HOME": str(home), "TARDIS_API_KEY": SENTINEL_KEY}
    tags = json.dumps(range_tags(DAY1, DAY2))
    command = ["job", "execute", "-m", "bmlt_assets.definitions", "-j", "full_pipeline", "--tags", tags]
    completed = subprocess.run(
        [str(BIN / "dagster"), *command],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    assert "RUN_SUCCESS" in output
    assert {auth for _, auth in archive.requests} == {f"Bearer {SENTINEL_KEY}"}  # the key was used...
    assert SENTINEL_KEY not in output  # ...and shows nowhere: not in the output, the event log or any file
    for path in [*home.rglob("*"), *config.local_dir.rglob("*")]:
        if path.is_file():
            assert SENTINEL_KEY.encode() not in path.read_bytes(), path
    storage = StorageResource.for_config(config)
    for day in (DAY1, DAY2):
        assert pl.read_parquet(storage.snapshots(day)).height > 300
        assert (storage.returns(day) / "meta.json").exists()
    assert (storage.report / "metrics.json").exists()
