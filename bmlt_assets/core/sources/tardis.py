"""tardis.dev's historical archive: file layout, free days, download verification, and rebuilding books.

The archive serves one gzip CSV per exchange, data type, day and symbol at
``{endpoint}/{exchange}/{data_type}/{YYYY}/{MM}/{DD}/{SYMBOL}.csv.gz``; downloads are cached
under the same layout. Without an API key only the first day of each month is served.

``incremental_book_L2`` rows (``exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,
amount``, times in microseconds; amount 0 deletes a level; a run of ``is_snapshot`` rows is a
fresh book) are grouped into updates and fed to the same :class:`BookBuilder` as ``bmlt import``,
so both paths rebuild books by one set of rules. ``book_snapshot_25`` files already hold books.

A cached file is used only once it was verified whole (the gzip stream decompresses to its end
and its CRC matches); a ``.verified.json`` note beside it records the size and time it was
verified at, so a complete file is not decompressed again and a file changed since is.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from bmlt_assets.core.book import snapshot_frame, snapshot_schema
from bmlt_assets.core.sources.binance.sync import (
    TARDIS_HEADER,
    BookBuilder,
    ImportSummary,
    RecordingError,
    first_line,
    unified_symbol,
)

DEFAULT_ENDPOINT = "https://datasets.tardis.dev/v1"
API_KEY_VARIABLE = "TARDIS_API_KEY"
EXCHANGE_OF_MARKET = {"spot": "binance", "usdm": "binance-futures"}
DATA_TYPES = ("incremental_book_L2", "book_snapshot_25")
CSV_HEADER = "exchange,symbol,timestamp,local_timestamp"
INCREMENTAL_COLUMNS = {
    "timestamp": pl.Int64,
    "local_timestamp": pl.Int64,
    "is_snapshot": pl.Boolean,
    "side": pl.String,
    "price": pl.Float64,
    "amount": pl.Float64,
}
VERIFIED_SUFFIX = ".verified.json"
DAY_NS = 86_400 * 10**9


class TardisError(RuntimeError):
    """The archive cannot give what the config asks for; the message says why and what to do."""


def exchange_symbol(symbol: str) -> str:
    """The archive's symbol id for a ccxt unified symbol: 'BTC/USDT' and 'BTC/USDT:USDT' -> 'BTCUSDT'."""
    return symbol.split(":")[0].replace("/", "").upper()


def dataset_path(exchange: str, data_type: str, date: dt.date, symbol_id: str) -> str:
    """Where one day's file lives, below the endpoint and below the download folder alike."""
    return f"{exchange}/{data_type}/{date:%Y/%m/%d}/{symbol_id}.csv.gz"


def dataset_url(endpoint: str, exchange: str, data_type: str, date: dt.date, symbol_id: str) -> str:
    return f"{endpoint.rstrip('/')}/{dataset_path(exchange, data_type, date, symbol_id)}"


def client_file_name(exchange: str, data_type: str, date: dt.datetime, symbol: str, file_format: str) -> str:
    """The tardis-dev client's ``get_filename`` hook: cache files under the archive's own layout."""
    return dataset_path(exchange, data_type, date.date(), symbol).replace(".csv.gz", f".{file_format}.gz")


def is_free_day(date: dt.date) -> bool:
    """tardis.dev serves the first day of each month without an API key."""
    return date.day == 1


def require_access(dates: list[dt.date], has_key: bool) -> None:
    """Refuse, before any download, days that need an API key when none is set."""
    if has_key:
        return
    paid = [d for d in dates if not is_free_day(d)]
    if paid:
        free = [d.isoformat() for d in dates if is_free_day(d)]
        shown = ", ".join(d.isoformat() for d in paid[:5]) + (" ..." if len(paid) > 5 else "")
        raise TardisError(
            f"{API_KEY_VARIABLE} is not set, and without an API key tardis.dev serves only the first day of each "
            f"month; {shown} need a key. Free days here: {', '.join(free) or 'none'}. Set {API_KEY_VARIABLE} "
            "in the environment, or materialize only first-of-month days"
        )


@dataclass(frozen=True)
class DownloadState:
    """What a downloaded file holds: ``problem`` is None when it is whole; ``empty`` when the
    archive had no data for that day."""

    problem: str | None
    empty: bool = False


def inspect_download(path: Path) -> DownloadState:
    """Decompress the whole file: a cut or damaged gzip stream is a problem, never a short day."""
    if not path.exists():
        return DownloadState("not downloaded")
    if path.stat().st_size == 0:
        return DownloadState(None, empty=True)
    head, total = b"", 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 20):
                head = head or chunk[: len(CSV_HEADER)]
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as error:
        return DownloadState(f"damaged or cut off ({error or type(error).__name__})")
    if total == 0:
        return DownloadState(None, empty=True)
    if not head.decode("utf-8", "replace").startswith(CSV_HEADER):
        return DownloadState(f"not a tardis CSV (it starts {head[:40]!r})")
    return DownloadState(None)


def _verified_note(path: Path) -> Path:
    return path.with_name(path.name + VERIFIED_SUFFIX)


def verified_download(path: Path) -> DownloadState:
    """The file's state, decompressing it only when it has not been verified as it is now; a
    whole file is noted as verified, a damaged one is deleted so that it is fetched again."""
    note = _verified_note(path)
    if path.exists() and note.exists():
        stat, saved = path.stat(), json.loads(note.read_text())
        if saved.get("bytes") == stat.st_size and saved.get("mtime_ns") == stat.st_mtime_ns:
            return DownloadState(None, empty=bool(saved["empty"]))
    state = inspect_download(path)
    if state.problem is None:
        stat = path.stat()
        note.write_text(json.dumps({"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "empty": state.empty}))
    else:
        note.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    return state


def remove_unfinished(path: Path) -> None:
    """Delete what a killed download left beside ``path`` (the client's ``*.unconfirmed`` temporaries)."""
    for leftover in path.parent.glob(f"{path.name}*.unconfirmed"):
        leftover.unlink(missing_ok=True)


def empty_day_gap(date: dt.date, symbol: str, url: str) -> dict[str, Any]:
    """The whole day of ``symbol`` as lost, because the archive served an empty file for it."""
    start = int(dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC).timestamp()) * 10**9
    return {
        "symbol": symbol,
        "from_ns": start,
        "to_ns": start + DAY_NS,
        "reason": f"the tardis archive served an empty file for {symbol} on {date.isoformat()} ({url})",
        "whole_day": True,
    }


def read_incremental(path: Path) -> pl.DataFrame:
    """An ``incremental_book_L2`` CSV, in file order (which is the archive's receive order)."""
    return pl.read_csv(path, columns=list(INCREMENTAL_COLUMNS), schema_overrides=INCREMENTAL_COLUMNS)


def book_messages(rows: pl.DataFrame, symbol_id: str, usdm: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    """Tardis rows as the messages BookBuilder reads: each snapshot run as a REST snapshot, each
    group of rows sharing both timestamps as one depth update.

    Tardis carries no exchange update ids, so each update gets the next id and each snapshot the
    id that the next update syncs to by the market's rule (spot: ``U == lastUpdateId + 1``; USD-M:
    ``U <= lastUpdateId <= u``). The chain never breaks inside a file."""
    if rows.height == 0:
        return
    snapshot = rows["is_snapshot"].to_numpy()
    exchange_us, local_us = rows["timestamp"].to_numpy(), rows["local_timestamp"].to_numpy()
    changed = (snapshot[1:] != snapshot[:-1]) | (exchange_us[1:] != exchange_us[:-1]) | (local_us[1:] != local_us[:-1])
    starts = np.flatnonzero(np.r_[True, changed])
    bid = (rows["side"] == "bid").to_numpy().tolist()
    prices, amounts = rows["price"].to_list(), rows["amount"].to_list()
    ends = np.r_[starts[1:], rows.height].tolist()
    last_id = 0
    for start, end in zip(starts.tolist(), ends):
        bids = [(prices[i], amounts[i]) for i in range(start, end) if bid[i]]
        asks = [(prices[i], amounts[i]) for i in range(start, end) if not bid[i]]
        receive_ns = int(local_us[start]) * 1000
        if snapshot[start]:
            snapshot_id = last_id + 1
            last_id = snapshot_id - 1 if usdm else snapshot_id
            yield receive_ns, {"lastUpdateId": snapshot_id, "bids": bids, "asks": asks}
            continue
        last_id += 1
        event = {"e": "depthUpdate", "s": symbol_id, "E": int(exchange_us[start]) // 1000, "U": last_id}
        event |= {"u": last_id, "b": bids, "a": asks}
        if usdm:
            event["pu"] = last_id - 1
        yield receive_ns, event


def last_per_interval(frame: pl.DataFrame, every_ms: int) -> pl.DataFrame:
    """The last book of each ``every_ms`` interval (what the cadence grid samples); 0 keeps all."""
    if not every_ms or frame.height == 0:
        return frame
    interval = pl.col("receive_ts") // (every_ms * 1_000_000)
    return frame.filter(interval != interval.shift(-1).fill_null(-1))


def incremental_books(
    path: Path, symbol: str, market: str, levels: int, every_ms: int = 0, chunk_updates: int = 200_000
) -> tuple[pl.DataFrame, ImportSummary]:
    """Books of ``levels`` levels rebuilt from an ``incremental_book_L2`` file, the last of each
    ``every_ms`` interval (0: every update); rows are drained every ``chunk_updates`` updates so a
    busy day never holds all its books at once."""
    builder = BookBuilder(market, levels)
    kept: list[pl.DataFrame] = []

    def drain() -> None:
        frame = builder.frame()
        builder.rows.clear()
        if frame.height:
            kept.append(last_per_interval(frame.with_columns(pl.lit(symbol).alias("symbol")), every_ms))

    book_key = unified_symbol(exchange_symbol(symbol))  # the builder names books by the updates' own symbol
    batch: list[tuple[int, dict[str, Any]]] = []
    for message in book_messages(read_incremental(path), exchange_symbol(symbol), market == "usdm"):
        if "lastUpdateId" in message[1]:
            # A run of snapshot rows starts a fresh book; the builder keeps an in-sync book otherwise.
            builder.feed(batch, snapshot_symbol=book_key)
            batch = []
            builder.books.pop(book_key, None)
        batch.append(message)
        if len(batch) >= chunk_updates:
            builder.feed(batch, snapshot_symbol=book_key)
            batch = []
            drain()
    builder.feed(batch, snapshot_symbol=book_key)
    drain()
    frame = pl.concat(kept) if kept else pl.DataFrame(schema=snapshot_schema(levels))
    return last_per_interval(frame, every_ms), builder.summary


def snapshot25_books(path: Path, symbol: str, levels: int, every_ms: int = 0) -> pl.DataFrame:
    """Books from a ``book_snapshot_25`` file, named by the configured ``symbol``."""
    frame = tardis_book_snapshots(path, levels).with_columns(pl.lit(symbol).alias("symbol"))
    return last_per_interval(frame, every_ms)


def tardis_book_snapshots(path: Path, levels: int) -> pl.DataFrame:
    """A tardis.dev ``book_snapshot_25`` CSV (gzip or plain) in the landing schema.

    Columns: ``exchange, symbol, timestamp, local_timestamp`` (microseconds), then
    ``asks[i].price, asks[i].amount, bids[i].price, bids[i].amount`` for i < 25. Tardis carries no
    exchange update id, so ``update_id`` is the row's position within its symbol (monotone, as
    the snapshot validation requires).
    """
    if not 1 <= levels <= 25:
        raise ValueError(f"--levels {levels}: book_snapshot_25 holds at most 25 levels per side")
    header = first_line(path, f"a tardis book_snapshot_25 CSV (header {TARDIS_HEADER},...)")
    if re.match(r"\d+ [{\[]", header):
        raise RecordingError(
            f"{path} is not a tardis book_snapshot_25 CSV (its lines are '<receive ns> <JSON>', a Binance "
            "WebSocket recording): use --format binance-ws"
        )
    columns = header.split(",")
    missing = [
        c
        for c in ("symbol", "timestamp", "local_timestamp", f"asks[{levels - 1}].price", f"bids[{levels - 1}].amount")
        if c not in columns
    ]
    if missing:
        raise RecordingError(
            f"{path}: not a tardis book_snapshot_25 CSV, or fewer than {levels} levels (its header lacks {missing}): "
            f"pass a file whose header starts {TARDIS_HEADER!r}, or lower --levels"
        )
    try:
        raw = pl.read_csv(path)
    except (pl.exceptions.PolarsError, OSError, EOFError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RecordingError(f"{path}: not a readable CSV ({reason}): re-download it") from None
    frames = []
    for (symbol,), rows in (
        raw.sort("local_timestamp").partition_by("symbol", as_dict=True, maintain_order=True).items()
    ):

        def side(name: str, field: str, rows: pl.DataFrame = rows) -> np.ndarray:
            return rows.select([f"{name}[{i}].{field}" for i in range(levels)]).to_numpy().astype(np.float64)

        frames.append(
            snapshot_frame(
                exchange_ns=rows["timestamp"].to_numpy() * 1000,
                receive_ns=rows["local_timestamp"].to_numpy() * 1000,
                symbol=unified_symbol(symbol.upper().replace("-", "")),
                update_id=np.arange(rows.height),
                bid_px=side("bids", "price"),
                bid_qty=side("bids", "amount"),
                ask_px=side("asks", "price"),
                ask_qty=side("asks", "amount"),
            )
        )
    return pl.concat(frames)
