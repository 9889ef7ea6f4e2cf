"""The compiled book engine gives the books of the engine it replaced (tests/reference_books.py), on
every recording and fixture, at every cadence, for both markets and all three formats; random
streams with gaps, re-snapshots and zero amounts agree too (hypothesis); and its memory does not
grow with the length of the file."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bmlt_assets.core.config import PROJECT_ROOT
from bmlt_assets.core.sources.binance.sync import BookBuilder, ImportSummary, read_recording
from bmlt_assets.core.sources.importer import import_recordings
from bmlt_assets.core.sources.tardis import incremental_books, snapshot25_books
from tests import reference_books as reference
from tests.helpers import real_recording
from tests.tardis_archive import gzip_csv, incremental_rows, snapshot25_rows
from tests.tiled_recordings import tiled_file

CADENCES_MS = [0, 100, 1000, 5000]


def _same_summary(new: ImportSummary, old: ImportSummary) -> None:
    for name in ("snapshots", "updates_applied", "updates_dropped", "crossed", "gaps", "first_receive_ns"):
        assert getattr(new, name) == getattr(old, name), name
    assert new.last_receive_ns == old.last_receive_ns


def _same_books(new: pl.DataFrame, old: pl.DataFrame) -> None:
    """Identical books: every level of every side, receive and exchange times, update ids, symbols."""
    assert new.height == old.height
    if old.height:
        assert new.equals(old.select(new.columns)), "the books differ"


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiles")


# Real recordings and their fixtures: binance-ws.


@pytest.mark.parametrize("levels", [1, 20, 100])
def test_the_real_recording_gives_the_reference_books(levels: int) -> None:
    new, new_summary = import_recordings([real_recording()], "binance-ws", "spot", levels)
    old, old_summary = reference.replay_recordings([real_recording()], "spot", levels)
    assert new.height > 3000
    _same_books(new, old)
    _same_summary(new_summary, old_summary)


@pytest.mark.parametrize("market", ["spot", pytest.param("usdm", marks=pytest.mark.slow)])
def test_two_tiles_with_a_gap_and_a_resync_give_the_reference_books(tiles: Path, market: str) -> None:
    """Each tile's ids jump, so the book goes through a gap and a fresh snapshot at the second tile."""
    path = tiled_file(tiles, "binance-ws", market, "2tiles")
    new, new_summary = import_recordings([path], "binance-ws", market, 20)
    old, old_summary = reference.replay_recordings([path], market, 20)
    assert len(new_summary.gaps) == 1 and new.height > 6000
    _same_books(new, old)
    _same_summary(new_summary, old_summary)


# tardis incremental_book_L2 and book_snapshot_25.


@pytest.mark.parametrize("every_ms", CADENCES_MS)
def test_the_incremental_fixture_gives_the_reference_books_at_every_cadence(tmp_path: Path, every_ms: int) -> None:
    path = tmp_path / "BTCUSDT.csv.gz"
    path.write_bytes(gzip_csv(incremental_rows(real_recording())))
    for market in ("spot", "usdm"):
        new, new_summary = incremental_books(path, "BTC/USDT", market, 20, every_ms, chunk_bytes=1 << 20)
        old, old_summary = reference.incremental_books(path, "BTC/USDT", market, 20, every_ms)
        _same_books(new, old)
        _same_summary(new_summary, old_summary)


@pytest.mark.parametrize("market", ["spot", pytest.param("usdm", marks=pytest.mark.slow)])
def test_a_tiled_tardis_file_gives_the_reference_books(tiles: Path, market: str) -> None:
    """Two tiles: folded snapshot rows with zero amounts, a second snapshot run, and (small
    batches) updates split between batches."""
    path = tiled_file(tiles, "tardis", market, "2tiles")
    for every_ms in (0, 1000):
        new, new_summary = incremental_books(path, "BTC/USDT", market, 20, every_ms, chunk_bytes=1 << 20)
        old, old_summary = reference.incremental_books(path, "BTC/USDT", market, 20, every_ms)
        assert new.height > (600 if every_ms else 6000)
        _same_books(new, old)
        _same_summary(new_summary, old_summary)


@pytest.mark.parametrize("every_ms", CADENCES_MS)
def test_book_snapshot_25_gives_the_reference_books(tmp_path: Path, every_ms: int) -> None:
    path = tmp_path / "BTCUSDT.csv.gz"
    path.write_bytes(gzip_csv(snapshot25_rows(real_recording())))
    for levels in (5, 25):
        old = reference.snapshot25_books(path, "BTC/USDT", levels, every_ms)
        _same_books(snapshot25_books(path, "BTC/USDT", levels, every_ms), old)
    books, _ = import_recordings([path], "tardis-book-snapshot", "spot", 20)
    _same_books(books, reference.tardis_book_snapshots(path, 20))


def test_the_forms_of_one_tiled_day_agree(tiles: Path) -> None:
    """The USD-M tardis file and the USD-M recording written from it rebuild the same books."""
    ws, _ = import_recordings([tiled_file(tiles, "binance-ws", "usdm", "2tiles")], "binance-ws", "usdm", 20)
    tardis, _ = incremental_books(tiled_file(tiles, "tardis", "usdm", "2tiles"), "BTC/USDT:USDT", "usdm", 20)
    assert ws.height == tardis.height > 13_000
    for column in ("bid_px", "bid_qty", "ask_px", "ask_qty", "receive_ts"):
        assert ws[column].equals(tardis[column]), column
    deepest = max(
        len(m["bids"]) for _, m in read_recording(tiled_file(tiles, "binance-ws", "usdm", "2tiles")) if "bids" in m
    )
    assert deepest > 3_900  # as deep as a real USD-M book (4 x 1,000 levels, less repeated prices)


# Where the old engine was wrong: tardis snapshot runs.


def _tardis_file(folder: Path, rows: list[tuple], name: str = "f.csv") -> Path:
    columns = ["timestamp", "local_timestamp", "is_snapshot", "side", "price", "amount"]
    frame = pl.DataFrame(rows, schema=columns, orient="row")
    path = folder / name
    frame.select(pl.lit("binance").alias("exchange"), pl.lit("BTCUSDT").alias("symbol"), pl.all()).write_csv(path)
    return path


def test_a_zero_amount_snapshot_row_after_its_price_removes_it(tmp_path: Path) -> None:
    """Tardis folds updates received before the snapshot into its rows, zero amounts included: a
    level the snapshot held and a folded update removed appears twice, the zero last."""
    path = _tardis_file(
        tmp_path,
        [
            (1, 1, True, "bid", 100.0, 1.0),
            (1, 1, True, "bid", 99.0, 1.0),
            (1, 1, True, "ask", 101.0, 1.0),
            (1, 1, True, "bid", 100.0, 0.0),  # folded: the best bid is gone
            (2, 2, False, "ask", 102.0, 1.0),
        ],
    )
    books, _ = incremental_books(path, "BTC/USDT", "spot", 1)
    assert books["bid_px"].to_list() == [[99.0]]  # the old engine kept 100.0 (it dropped zero rows)


def test_a_snapshot_run_is_one_snapshot_whatever_its_stamps(tmp_path: Path) -> None:
    """A run of is_snapshot rows is one fresh book (tardis's definition), even if its rows carry
    different timestamps; the old engine made each stamp a new book, keeping only the last rows."""
    path = _tardis_file(
        tmp_path,
        [
            (1, 1, True, "bid", 100.0, 1.0),
            (1, 1, True, "bid", 99.0, 1.0),
            (2, 2, True, "ask", 101.0, 1.0),
            (2, 2, True, "ask", 102.0, 1.0),
            (3, 3, False, "ask", 103.0, 1.0),
        ],
    )
    books, _ = incremental_books(path, "BTC/USDT", "spot", 2)
    assert books["bid_px"].to_list() == [[100.0, 99.0]]
    assert books["ask_px"].to_list() == [[101.0, 102.0]]


# Random streams (hypothesis): gaps, re-snapshots, zero amounts, repeated prices.

PRICES = [round(95 + 0.5 * i, 1) for i in range(21)]  # bids and asks share the grid: crossed books too
QUANTITIES = [0.0, 0.0, 0.25, 1.0, 2.5]


@st.composite
def binance_streams(draw: st.DrawFn, market: str) -> list[tuple[int, dict]]:
    """Depth updates and REST snapshots with random id gaps, stale and in-sync snapshots."""
    levels = st.lists(st.tuples(st.sampled_from(PRICES), st.sampled_from(QUANTITIES)), max_size=4)
    messages: list[tuple[int, dict]] = []
    last_u, stamp = draw(st.integers(1, 50)), 0
    for _ in range(draw(st.integers(1, 40))):
        stamp += draw(st.integers(1, 3_000_000))
        if messages and draw(st.integers(0, 5)) == 0:
            bids = draw(st.lists(st.sampled_from(PRICES), unique=True, max_size=6))
            asks = draw(st.lists(st.sampled_from(PRICES), unique=True, max_size=6))
            snapshot = {
                "lastUpdateId": last_u + draw(st.integers(-3, 3)),
                "bids": [[str(p), str(draw(st.sampled_from(QUANTITIES[2:])))] for p in bids],
                "asks": [[str(p), str(draw(st.sampled_from(QUANTITIES[2:])))] for p in asks],
            }
            messages.append((stamp, snapshot))
            continue
        first = last_u + 1 + (draw(st.integers(0, 3)) if draw(st.integers(0, 6)) == 0 else 0)  # sometimes a gap
        last = first + draw(st.integers(0, 3))
        event = {"e": "depthUpdate", "E": stamp // 1_000_000, "s": "BTCUSDT", "U": first, "u": last}
        event |= {"b": [[str(p), str(q)] for p, q in draw(levels)], "a": [[str(p), str(q)] for p, q in draw(levels)]}
        if market == "usdm":
            event["pu"] = last_u if first == last_u + 1 else last_u - 1
        messages.append((stamp, {"stream": "btcusdt@depth", "data": event}))
        last_u = last
    return messages


def _outcome(builder_class: type, market: str, levels: int, messages: list) -> tuple:
    builder = builder_class(market, levels)
    try:
        builder.feed(messages)
    except ValueError as error:  # e.g. a snapshot before any event: both must refuse alike
        return (type(error).__name__,)
    return builder.frame(), builder.summary, builder.deepest


@pytest.mark.parametrize("market", ["spot", "usdm"])
def test_random_binance_streams_give_the_reference_books(market: str) -> None:
    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(messages=binance_streams(market), levels=st.integers(1, 3))
    def check(messages: list, levels: int) -> None:
        new = _outcome(BookBuilder, market, levels, messages)
        old = _outcome(reference.BookBuilder, market, levels, messages)
        if len(old) == 1:
            assert new == old
            return
        _same_books(new[0], old[0])
        _same_summary(new[1], old[1])
        assert new[2] == old[2]

    check()


@st.composite
def tardis_rows(draw: st.DrawFn) -> list[tuple]:
    """incremental_book_L2 rows: updates before the first snapshot, snapshot runs (unique prices,
    zero amounts) between updates, updates sharing stamps, repeated prices within an update."""
    rows: list[tuple] = []
    exchange_us = local_us = 1_723_161_600_000_000
    previous_snapshot = True  # no snapshot run right after another: tardis never writes two in a row
    for _ in range(draw(st.integers(1, 30))):
        local_us += draw(st.sampled_from([0, 0, 1, 700, 40_000, 1_000_000]))
        exchange_us += draw(st.sampled_from([0, 1, 900]))
        if not previous_snapshot and draw(st.integers(0, 4)) == 0:
            for side in ("bid", "ask"):
                for price in draw(st.lists(st.sampled_from(PRICES), unique=True, max_size=6)):
                    rows.append((exchange_us, local_us, True, side, price, draw(st.sampled_from(QUANTITIES))))
            previous_snapshot = True
            continue
        changes = draw(
            st.lists(st.tuples(st.sampled_from(["bid", "ask"]), st.sampled_from(PRICES)), min_size=1, max_size=4)
        )
        rows += [(exchange_us, local_us, False, side, p, draw(st.sampled_from(QUANTITIES))) for side, p in changes]
        previous_snapshot = False
    return rows


def test_random_tardis_files_give_the_reference_books() -> None:
    with tempfile.TemporaryDirectory() as folder:

        @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            rows=tardis_rows(),
            market=st.sampled_from(["spot", "usdm"]),
            levels=st.integers(1, 3),
            every_ms=st.sampled_from([0, 1, 1000]),
        )
        def check(rows: list[tuple], market: str, levels: int, every_ms: int) -> None:
            path = _tardis_file(Path(folder), rows)
            new, new_summary = incremental_books(path, "BTC/USDT", market, levels, every_ms, chunk_bytes=256)
            old, old_summary = reference.incremental_books(path, "BTC/USDT", market, levels, every_ms)
            _same_books(new, old)
            _same_summary(new_summary, old_summary)

        check()


# Memory: bounded by the book, never by the file.

PEAK = """
import json, sys
from pathlib import Path
from bmlt_assets.core.sources.tardis import incremental_books
from tests.tiled_recordings import tiled_file
folder, market, length = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
def books(length):
    path = tiled_file(folder, "tardis", market, length)
    return incremental_books(path, "BTC/USDT", market, 20, 1000, chunk_bytes=1 << 20)[0]
books("1tiles")  # warm up alike: compiled code loaded, first allocations made
books = books(length)
status = Path("/proc/self/status").read_text()
print(json.dumps({"books": books.height, "peak": int(status.split("VmHWM:")[1].split()[0]) * 1024}))
"""


def _peak(folder: Path, market: str, length: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PEAK, str(folder), market, length],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout)


def test_peak_memory_does_not_grow_with_the_file(tiles: Path) -> None:
    """Two USD-M tiles (1 M rows) peak no higher than one tile (the old engine held every row:
    about 175 bytes a row, +90 MB here), in a fresh process each, warmed up alike."""
    one, two = _peak(tiles, "usdm", "1tiles"), _peak(tiles, "usdm", "2tiles")
    assert two["books"] > 1.9 * one["books"]
    assert two["peak"] <= one["peak"] + 16 * 2**20, (one, two)


def test_old_gzip_ws_lines_still_parse(tmp_path: Path) -> None:
    """orjson reads what json read: the recording's lines, floats and big ids included."""
    path = tmp_path / "r.gz"
    with gzip.open(real_recording(), "rt") as source:
        lines = source.read().splitlines()[:50]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    assert [m for _, m in read_recording(path)] == [json.loads(line.split(" ", 1)[1]) for line in lines]
    assert np.array_equal([t for t, _ in read_recording(path)], [int(line.split(" ", 1)[0]) for line in lines])
