"""A day of the landing zone in bounded memory: ``bmlt import`` streams its books into the landing
files, ``orderbook_snapshots`` validates and writes them a window at a time, and
``snapshots_are_sound`` measures the partition a batch at a time; each gives what the whole-day
code gave (tests/reference_landing.py), and none grows with the length of the day."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bmlt_assets.core import book
from bmlt_assets.core.book import snapshot_frame, trim_depth, validate_parts
from bmlt_assets.core.config import PROJECT_ROOT, QualityConfig, load_config
from bmlt_assets.core.files import landing_root
from bmlt_assets.core.quality import snapshot_quality
from bmlt_assets.core.sources.importer import import_recordings
from bmlt_assets.definitions import CHECKS, build_resources
from bmlt_assets.snapshots import orderbook_snapshots
from bmlt_resources.storage import StorageResource
from tests import reference_landing as reference
from tests.helpers import real_recording, write_config
from tests.tardis_archive import gzip_csv, incremental_rows, snapshot25_rows
from tests.tiled_recordings import DAY, tiled_file

SYMBOLS = ["AAA/USDT", "BTC/USDT", "ETH/USDT"]
BIN = Path(sys.executable).parent


def _books(rng: np.random.Generator, rows: int, symbols: list[str], held: int, spoil: float) -> pl.DataFrame:
    """``rows`` books of ``held`` levels over a few symbols, receive times and update ids drawn from
    small ranges (ties, repeats and ids that go back), ``spoil`` of them broken in one of the ways
    the validation catches, and runs of identical books."""
    mid = 100 + rng.integers(0, 3, rows)[:, None]
    steps = np.arange(1, held + 1)
    bid_px, ask_px = (mid - steps).astype(float), (mid + steps).astype(float)
    bid_qty, ask_qty = rng.integers(1, 3, (2, rows, held)).astype(float)
    for spoilt in np.flatnonzero(rng.random(rows) < spoil):
        kind = rng.integers(0, 5)
        if kind == 0:
            bid_px[spoilt, 0] = ask_px[spoilt, 0]  # locked
        elif kind == 1:
            ask_qty[spoilt, -1] = 0.0
        elif kind == 2:
            bid_qty[spoilt, 0] = np.nan
        elif kind == 3 and held > 1:
            bid_px[spoilt, [0, 1]] = bid_px[spoilt, [1, 0]]  # not descending
        else:
            ask_px[spoilt, -1] = np.inf
    frames = []
    names = rng.choice(symbols, rows)
    for name in dict.fromkeys(names):
        mine = names == name
        count = int(mine.sum())
        frames.append(
            snapshot_frame(
                exchange_ns=rng.integers(0, 50, count),
                receive_ns=rng.integers(0, 12, count),
                symbol=str(name),
                update_id=rng.integers(0, 15, count),
                bid_px=bid_px[mine],
                bid_qty=bid_qty[mine],
                ask_px=ask_px[mine],
                ask_qty=ask_qty[mine],
            )
        )
    return pl.concat(frames).sample(fraction=1.0, shuffle=True, seed=int(rng.integers(1 << 31)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), window_bytes=st.sampled_from([1, 300, 5_000, 1 << 24]), tiny=st.booleans())
def test_streamed_validation_gives_the_whole_day_validation(seed: int, window_bytes: int, tiny: bool) -> None:
    """Random parts (frames and Parquet files in row groups of a few rows, of more levels than kept,
    overlapping in time, other symbols among them) give the clean and quarantined rows, in order
    and with their reasons, of the whole-day validation; windows of one row, and a row-group cache
    too small to keep anything, change nothing."""
    rng = np.random.default_rng(seed)
    depth = int(rng.integers(1, 4))
    symbols = None if rng.random() < 0.3 else sorted(rng.choice(SYMBOLS, int(rng.integers(1, 3)), replace=False))
    with tempfile.TemporaryDirectory() as folder:
        frames, parts = [], []
        for number in range(int(rng.integers(1, 5))):
            frame = _books(
                rng, int(rng.integers(1, 60)), SYMBOLS[: int(rng.integers(1, 4))], depth + int(rng.integers(0, 3)), 0.15
            )
            frames.append(frame)
            if rng.random() < 0.6:
                path = Path(folder) / f"part-{number}.parquet"
                pq.write_table(frame.to_arrow(), path, row_group_size=int(rng.integers(1, 20)))
                parts.append(path)
            else:
                parts.append(frame)
        clean, quarantined = [], []
        cache = book.ROW_GROUP_CACHE_BYTES
        book.ROW_GROUP_CACHE_BYTES = 1 if tiny else cache
        try:
            validated = validate_parts(parts, clean.append, quarantined.append, symbols, depth, window_bytes)
        finally:
            book.ROW_GROUP_CACHE_BYTES = cache
    expected_clean, expected_quarantined = reference.validate_snapshots(reference.landing_day(frames, symbols, depth))
    got_clean = pl.concat(clean) if clean else expected_clean.clear()
    got_quarantined = pl.concat(quarantined) if quarantined else expected_quarantined.clear()
    assert got_clean.equals(expected_clean)
    assert got_quarantined.equals(expected_quarantined)
    assert validated.quarantined == expected_quarantined.height
    counts = expected_clean.group_by("symbol").len().sort("symbol")
    assert validated.rows_per_symbol == dict(counts.iter_rows())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 40))
def test_streamed_quality_gives_the_whole_day_figures(seed: int, batch: int) -> None:
    """Coverage, stale runs (across batch boundaries) and rates per rule, batch by batch."""
    rng = np.random.default_rng(seed)
    frame = _books(rng, int(rng.integers(2, 120)), SYMBOLS[:2], 2, 0.2).sort("symbol", maintain_order=True)
    # Runs of one book: rows repeated in place, in time order.
    frame = frame.gather(np.sort(rng.integers(0, frame.height, frame.height * 3)))
    order = pl.Series(np.arange(frame.height))
    clean, quarantined = reference.validate_snapshots(frame.with_columns(receive_ts=order, update_id=order))
    quality = QualityConfig(max_stale_s=float(rng.choice([0.5, 2.0, 4.0])), max_stale_fraction=0.1, min_coverage=0.3)
    steps, cadence = int(rng.integers(10, 400)), 1000
    batches = [clean[start : start + batch] for start in range(0, clean.height, batch)]
    got = snapshot_quality(batches, quarantined["reason"], steps, cadence, SYMBOLS, quality)
    assert got == reference.snapshot_quality(clean, quarantined, steps, cadence, SYMBOLS, quality)


def _landing_config(folder: Path, depth: int = 20) -> Path:
    return write_config(
        folder,
        {
            "data": {"source": "binance", "depth": depth, "cadence_ms": 1000},
            "quality": {"min_coverage": 0.0, "max_quarantined_fraction": 0.5},
            "storage": {"uri": str(folder / "data")},
        },
    )


def test_overlapping_landing_files_of_two_depths_give_the_whole_day_partition(tmp_path: Path) -> None:
    """Two recorder hosts' files of one day, overlapping in time and holding 25 and 20 levels, with a
    symbol the config does not list: the partition and the quarantine are the whole-day
    validation's, and the check measures them as the whole-day check did."""
    config_path = _landing_config(tmp_path, depth=20)
    config = load_config(config_path)
    rng = np.random.default_rng(7)
    day = landing_root(config.local_dir, "spot") / f"date={DAY.isoformat()}"
    day.mkdir(parents=True)
    start = int(np.datetime64(DAY.isoformat(), "ns").astype(np.int64))
    # One stream of books, ids rising in time; host b saw half of them, up to 40 ms either side of host a.
    stream = _books(rng, 6000, ["BTC/USDT", "ETH/USDT", "XRP/USDT"], 25, 0.01).with_columns(
        update_id=pl.int_range(pl.len()).over("symbol"), receive_ts=start + pl.int_range(pl.len()) * 10**7
    )
    host_b = trim_depth(stream.sample(fraction=0.5, seed=1).sort("receive_ts"), 20)
    host_b = host_b.with_columns(pl.col("receive_ts") + pl.Series(rng.integers(-4 * 10**7, 4 * 10**7, host_b.height)))
    hosts = [stream, host_b]
    for name, frame in zip(("host-a", "host-b"), hosts, strict=True):
        pq.write_table(frame.to_arrow(), day / f"{name}.parquet", row_group_size=500)
    result = dg.materialize(
        [orderbook_snapshots, *CHECKS[:1]], resources=build_resources(config_path), partition_key=DAY.isoformat()
    )
    assert result.success
    storage = StorageResource.for_config(config)
    expected_clean, expected_quarantined = reference.validate_snapshots(
        reference.landing_day(hosts, config.data.symbols, 20)
    )
    assert pl.read_parquet(storage.snapshots(DAY)).equals(expected_clean)
    assert pl.read_parquet(storage.quarantine(DAY)).equals(expected_quarantined)
    reasons = set(expected_quarantined["reason"])
    assert {
        "duplicate update id",
        "update id goes backwards",
        "crossed or locked book (best bid >= best ask)",
    } <= reasons
    (evaluation,) = result.get_asset_check_evaluations()
    expected = reference.snapshot_quality(
        expected_clean,
        expected_quarantined,
        config.data.steps_per_day,
        config.data.cadence_ms,
        config.data.symbols,
        config.quality,
    )
    measured = evaluation.metadata["per_day"].value[DAY.isoformat()]
    assert {key: measured[key] for key in ("rows", "quarantined", "by_rule", "per_symbol")} == {
        key: expected[key] for key in ("rows", "quarantined", "by_rule", "per_symbol")
    }


@pytest.mark.parametrize(
    ("fmt", "market", "write"),
    [
        ("binance-ws", "spot", None),
        ("tardis-incremental", "spot", lambda: gzip_csv(incremental_rows(real_recording()))),
        ("tardis-book-snapshot", "spot", lambda: gzip_csv(snapshot25_rows(real_recording()))),
    ],
)
def test_the_streamed_import_lands_every_book_of_the_import(tmp_path: Path, fmt: str, market: str, write) -> None:
    """`bmlt import` writes, row group by row group, exactly the books import_recordings returns."""
    source = real_recording()
    if write is not None:
        source = tmp_path / "BTCUSDT.csv.gz"
        source.write_bytes(write())
    config = _landing_config(tmp_path)
    done = subprocess.run(
        [
            str(BIN / "bmlt"),
            "import",
            str(source),
            "--format",
            fmt,
            "--market",
            market,
            "--config",
            str(config),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    books, expected = import_recordings([source], fmt, market, 20)
    (written,) = summary["written"]
    assert pl.read_parquet(written).equals(books)
    assert {key: summary[key] for key in expected.as_dict()} == expected.as_dict()
    assert not list(load_config(config).local_dir.glob(".bmlt-import-*"))  # the scratch folder is gone


def test_an_import_refused_after_its_books_streamed_leaves_nothing(tmp_path: Path) -> None:
    """The second recording is refused after the first one's books were written to scratch files:
    no landing file, no scratch file."""
    broken = tmp_path / "broken.gz"
    with gzip.open(real_recording(), "rb") as recording:
        lines = recording.read().splitlines(keepends=True)
    broken.write_bytes(gzip.compress(b"".join(lines[:100]) + b"not a line\n" + b"".join(lines[100:200])))
    config = _landing_config(tmp_path)
    done = subprocess.run(
        [str(BIN / "bmlt"), "import", str(real_recording()), str(broken), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and f"{broken}:101: not a '<receive ns> <JSON>' line" in done.stderr, done.stderr
    local = load_config(config).local_dir
    assert not (local / "landing").exists()
    assert not [path for path in local.rglob("*") if path.is_file()]


# Memory: bounded by a row group and a window, never by the day.

PEAK = """
import json, sys
from pathlib import Path
import dagster as dg
from bmlt_assets.cli import main
from bmlt_assets.core import book, files
from bmlt_assets.core.files import landing_base
from bmlt_assets.snapshots import orderbook_snapshots, snapshots_are_sound
from bmlt_resources.settings import SettingsResource
from bmlt_resources.storage import LandingZoneResource, StorageResource
from tests.tiled_recordings import DAY
# Row groups, windows and batches of 1 MiB: a day of a few MB is already many of each.
files.ROW_GROUP_BYTES = book.WINDOW_BYTES = 1 << 20
stage, recording, config = sys.argv[1], sys.argv[2], Path(sys.argv[3])
if stage == "import":
    assert main(["import", recording, "--config", str(config), "--market", "usdm", "--levels", "20", "--json"]) == 0
else:
    settings = SettingsResource.from_file(config)
    c = settings.get()
    resources = {
        "settings": settings,
        "storage": StorageResource.for_config(c),
        "book_source": LandingZoneResource(base=str(landing_base(c)), market="usdm", depth=c.data.depth),
    }
    day = DAY.isoformat()
    assert dg.materialize([orderbook_snapshots, snapshots_are_sound], resources=resources, partition_key=day).success
status = Path("/proc/self/status").read_text()
print(json.dumps({"peak": int(status.split("VmHWM:")[1].split()[0]) * 1024}))
"""


def _peak(stage: str, recording: Path, config: Path) -> int:
    # One polars thread and arrow on the system allocator: their per-thread caches and pools
    # otherwise move the peak by ±10 MB from run to run, which would blur the comparison.
    env = os.environ | {"POLARS_MAX_THREADS": "1", "ARROW_DEFAULT_MEMORY_POOL": "system"}
    done = subprocess.run(
        [sys.executable, "-c", PEAK, stage, str(recording), str(config)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["peak"]


def test_peak_memory_of_a_landing_day_does_not_grow_with_the_day(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Six USD-M tiles (35 minutes, 41,000 books of every update) peak no higher than two, both for
    `bmlt import` and for orderbook_snapshots with its check from those landing files (the whole-day
    code held every book: +49 MB and +96 MB here), each in a fresh process."""
    tiles = tmp_path_factory.mktemp("tiles")
    peaks, books = {}, {}
    for count in (2, 6):
        recording = tiled_file(tiles, "binance-ws", "usdm", f"{count}tiles")
        folder = tmp_path_factory.mktemp(f"landing-{count}")
        config = write_config(
            folder,
            {
                "data": {"source": "binance", "market": "usdm", "depth": 20, "cadence_ms": 1000},
                "quality": {"min_coverage": 0.0, "max_quarantined_fraction": 0.2},
                "storage": {"uri": str(folder / "data")},
            },
        )
        peaks[count] = {stage: _peak(stage, recording, config) for stage in ("import", "snapshots")}
        storage = StorageResource.for_config(load_config(config))
        books[count] = pq.ParquetFile(storage.snapshots(DAY)).metadata.num_rows
    assert books[6] > 2.8 * books[2] > 30_000
    for stage in ("import", "snapshots"):
        assert peaks[6][stage] <= peaks[2][stage] + 16 * 2**20, (stage, peaks)
