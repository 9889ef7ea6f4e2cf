"""tardis.dev's historical archive: file layout, free days, download verification, and rebuilding books.

The archive serves one gzip CSV per exchange, data type, day and symbol at
``{endpoint}/{exchange}/{data_type}/{YYYY}/{MM}/{DD}/{SYMBOL}.csv.gz``; downloads are cached
under the same layout. Without an API key only the first day of each month is served.

``incremental_book_L2`` rows (``exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,
amount``, times in microseconds; amount 0 deletes a level; a run of ``is_snapshot`` rows is a
fresh book) are grouped into updates and fed to the same :class:`BookBuilder` as ``bmlt import``,
so both paths rebuild books by one set of rules. ``book_snapshot_25`` files already hold books.

A cached file is used only once it was verified whole (the gzip stream decompresses to its end
and its CRC matches). The pass that parses it is that verification: its books are used only
when it reached the end of the stream, and a damaged file is deleted and fetched again. A
``.verified.json`` note beside a verified file records its size and time, so a file changed
since is not trusted.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import polars as pl

from bmlt_assets.core.book import snapshot_frame, snapshot_schema
from bmlt_assets.core.representation import read_ahead
from bmlt_assets.core.sources.binance.sync import (
    GZIP_MAGIC,
    TARDIS_HEADER,
    ImportSummary,
    RecordingError,
    first_line,
    unified_symbol,
)
from bmlt_assets.core.sources.book_engine import (
    BookEngine,
    BookSink,
    TimeSteps,
    time_steps_warning,
)
from bmlt_assets.core.sources.book_layout import SNAPSHOT, UPDATE

log = logging.getLogger(__name__)
DEFAULT_ENDPOINT = "https://datasets.tardis.dev/v1"
API_KEY_VARIABLE = "TARDIS_API_KEY"
EXCHANGE_OF_MARKET = {"spot": "binance", "usdm": "binance-futures"}
DATA_TYPES = ("incremental_book_L2", "book_snapshot_25")
CSV_HEADER = "exchange,symbol,timestamp,local_timestamp"
INCREMENTAL_COLUMNS: dict[str, pl.DataType] = {
    "timestamp": pl.Int64(),
    "local_timestamp": pl.Int64(),
    "is_snapshot": pl.Boolean(),
    "side": pl.String(),
    "price": pl.Float64(),
    "amount": pl.Float64(),
}
CHUNK_BYTES = 1 << 24  # CSV text parsed at a time: about 300,000 incremental_book_L2 rows
VERIFIED_SUFFIX = ".verified.json"
HEAD_BYTES = 1 << 20  # decompressed when a download is inspected
DAY_NS = 86_400 * 10**9


class TardisError(RuntimeError):
    """The archive cannot give what the config asks for; the message says why and what to do."""


class DamagedFile(RecordingError):
    """A file's gzip stream is cut off or damaged (found while reading it to its end)."""

    def __init__(self, path: Path, line: int, reason: str):
        self.problem = f"damaged or cut off after line {line} ({reason})"
        super().__init__(f"{path}: {self.problem}: re-download it")


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
    """What a downloaded file holds: ``problem`` is None when nothing is known to be wrong with it;
    ``empty`` when the archive had no data for that day; ``verified`` once it is known whole (its
    gzip stream decompressed to its end and its CRC matched)."""

    problem: str | None
    empty: bool = False
    verified: bool = False


def inspect_download(path: Path) -> DownloadState:
    """A cached file's first :data:`HEAD_BYTES` decompressed: a gzip file that starts with a tardis
    CSV header, and verified whole when it ends within them (an empty day among them). The rest of
    a longer file is verified by the pass that parses it, which reads the stream to its end
    (``read_csv_batches``): decompressing a day twice cost a USD-M day 15 CPU-seconds."""
    if not path.exists():
        return DownloadState("not downloaded")
    if path.stat().st_size == 0:
        return DownloadState(None, empty=True, verified=True)
    with open(path, "rb") as raw:
        if raw.read(2) != GZIP_MAGIC:
            return DownloadState("damaged or cut off (not a gzip file)")
    try:
        with gzip.open(path, "rb") as stream:
            head = stream.read(HEAD_BYTES)
            whole = not stream.read(1)
    except (EOFError, OSError, zlib.error) as error:
        return DownloadState(f"damaged or cut off ({error or type(error).__name__})")
    if not head:
        return DownloadState(None, empty=True, verified=True)
    if not head.decode("utf-8", "replace").startswith(CSV_HEADER):
        return DownloadState(f"not a tardis CSV (it starts {head[:40]!r})")
    return DownloadState(None, verified=whole)


def _verified_note(path: Path) -> Path:
    return path.with_name(path.name + VERIFIED_SUFFIX)


def download_state(path: Path) -> DownloadState:
    """The file's state: as noted when it was verified as it is now, else its head inspected (a
    file found damaged is deleted so that it is fetched again; one found whole is noted)."""
    note = _verified_note(path)
    if path.exists() and note.exists():
        stat, saved = path.stat(), json.loads(note.read_text())
        if saved.get("bytes") == stat.st_size and saved.get("mtime_ns") == stat.st_mtime_ns:
            return DownloadState(None, empty=bool(saved["empty"]), verified=True)
    state = inspect_download(path)
    if state.problem is not None:
        discard_download(path)
    elif state.verified:
        note_verified(path, state.empty)
    return state


def note_verified(path: Path, empty: bool = False) -> None:
    """Note that ``path``, as it is now, was verified whole: it is not decompressed for that again."""
    stat = path.stat()
    payload = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "empty": empty}
    _verified_note(path).write_text(json.dumps(payload))


def discard_download(path: Path) -> None:
    _verified_note(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


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


def _open_binary(raw: BinaryIO) -> BinaryIO:
    """``raw`` itself, or a gzip reader over it when it starts with the gzip magic bytes."""
    magic = raw.read(2)
    raw.seek(0)
    return cast(BinaryIO, gzip.GzipFile(fileobj=raw)) if magic == GZIP_MAGIC else raw


@dataclass(frozen=True)
class CsvBatch:
    frame: pl.DataFrame
    first_line: int  # the file line of the frame's first row (the header is line 1)


def read_csv_batches(
    path: Path, columns: dict[str, pl.DataType], what: str, chunk_bytes: int = CHUNK_BYTES, lacking_hint: str = ""
) -> Iterator[CsvBatch]:
    """``columns`` of a tardis CSV (gzip or plain, LF or CRLF), about ``chunk_bytes`` of text at a
    time: memory holds one batch, never the file. ``what`` names the expected file for messages;
    ``lacking_hint`` is added to the fix for missing columns.

    A header without some of ``columns``, a value that is not of its column's type, an empty value
    and damaged gzip data raise RecordingError naming the file (and the line)."""
    header = first_line(path, what).rstrip("\r")
    if re.match(r"\d+ [{\[]", header):
        raise RecordingError(
            f"{path} is not {what} (its lines are '<receive ns> <JSON>', a Binance WebSocket recording): "
            "use --format binance-ws"
        )
    names = header.split(",")
    missing = [column for column in columns if column not in names]
    if missing:
        raise RecordingError(
            f"{path}: not {what}: its header lacks {', '.join(missing)}: pass a file whose header starts "
            f"{TARDIS_HEADER!r} and holds those columns{lacking_hint}"
        )
    line = 2
    with open(path, "rb") as raw:
        stream = _open_binary(raw)
        try:
            head = stream.readline()
            rest = b""
            while True:
                chunk = stream.read(chunk_bytes)
                data = rest + chunk
                cut = data.rfind(b"\n") + 1 if chunk else len(data)
                if chunk and cut == 0:
                    rest = data
                    continue
                data, rest = data[:cut], data[cut:]
                if data.strip():
                    yield CsvBatch(_parse_batch(path, head + data, columns, line), line)
                    line += data.count(b"\n") + (not data.endswith(b"\n"))
                if not chunk:
                    return
        except (EOFError, OSError, zlib.error) as error:
            reason = str(error) or type(error).__name__
            raise DamagedFile(path, line - 1, reason) from None


def _parse_batch(path: Path, data: bytes, columns: dict[str, pl.DataType], first_line: int) -> pl.DataFrame:
    """One batch (with the header) parsed; a value that is not a number, or none, names its line."""
    try:
        frame = pl.read_csv(data, columns=list(columns), schema_overrides=columns)
    except pl.exceptions.PolarsError as error:
        raise _bad_value(path, data, columns, first_line) or _unreadable(path, error, first_line) from None
    nulls = [column for column in columns if frame[column].null_count()]
    if nulls:
        row = int(frame[nulls[0]].is_null().arg_true()[0])
        raise RecordingError(
            f"{path}:{first_line + row}: no {nulls[0]} value: the file is damaged or not a tardis CSV; re-download it"
        )
    return frame


def _bad_value(path: Path, data: bytes, columns: dict[str, pl.DataType], first_line: int) -> RecordingError | None:
    """The first value of ``data`` that its column's type cannot hold, as an error naming its line."""
    try:
        text = pl.read_csv(data, columns=list(columns), infer_schema=False)
    except pl.exceptions.PolarsError:
        return None
    for column, dtype in columns.items():
        values = text[column]
        if dtype == pl.Boolean:
            bad = ~values.str.to_lowercase().is_in(["true", "false"]) & values.is_not_null()
        elif dtype == pl.String:
            continue
        else:
            bad = values.cast(dtype, strict=False).is_null() & values.is_not_null()
        if bad.any():
            row = int(bad.arg_true()[0])
            expected = "true or false" if dtype == pl.Boolean else "a number"
            return RecordingError(
                f"{path}:{first_line + row}: {column} is {values[row]!r}, not {expected}: the file is damaged or "
                "not a tardis CSV; re-download it"
            )
    return None


def _unreadable(path: Path, error: Exception, first_line: int) -> RecordingError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return RecordingError(f"{path}: not a readable CSV from line {first_line} on ({reason}): re-download it")


def _updates(
    batch: CsvBatch, usdm: bool, ids: list[int], final: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """A batch of ``incremental_book_L2`` rows as the engine's level rows and operations, and the
    row where the last, possibly unfinished, operation starts (``final``: none is unfinished).

    A run of ``is_snapshot`` rows is one snapshot (a fresh book, as tardis documents it); each run
    of other rows sharing both timestamps is one update. Tardis carries no exchange update ids, so
    each update gets the next id, and so does each snapshot on spot (``ids``: the last one given)."""
    frame = batch.frame
    snapshot = frame["is_snapshot"].to_numpy()
    exchange_us, local_us = frame["timestamp"].to_numpy(), frame["local_timestamp"].to_numpy()
    changed = (snapshot[1:] != snapshot[:-1]) | (
        ~snapshot[1:] & ((exchange_us[1:] != exchange_us[:-1]) | (local_us[1:] != local_us[:-1]))
    )
    starts = np.flatnonzero(np.r_[True, changed])
    held = len(snapshot) if final else int(starts[-1])
    starts = starts if final else starts[:-1]
    ends = np.r_[starts[1:], held] if len(starts) else starts
    kinds = np.where(snapshot[starts], SNAPSHOT, UPDATE)
    numbered = kinds == UPDATE if usdm else np.ones(len(kinds), dtype=bool)
    update_ids = ids[0] + np.cumsum(numbered)
    if len(update_ids):
        ids[0] = int(update_ids[-1])
    operations = np.column_stack(
        [kinds, starts, ends, local_us[starts] * 1000, exchange_us[starts] // 1000 * 1_000_000, update_ids]
    ).astype(np.int64)
    is_bid = (frame["side"] == "bid").to_numpy()
    return is_bid, frame["price"].to_numpy(), frame["amount"].to_numpy(), operations, held


def incremental_books(
    path: Path,
    symbol: str | None,
    market: str,
    levels: int,
    every_ms: int = 0,
    chunk_bytes: int = CHUNK_BYTES,
    sink: BookSink | None = None,
) -> tuple[pl.DataFrame, ImportSummary]:
    """Books of ``levels`` levels rebuilt from an ``incremental_book_L2`` file, the last of each
    ``every_ms`` interval (0: every update), read ``chunk_bytes`` of text at a time. Updates
    before the file's first snapshot change no book (they would need an earlier day's). With a
    ``sink``, the books go to it a batch at a time and the frame returned is empty.

    The books are named ``symbol``; None takes it from the file's ``symbol`` column, which must
    then name one symbol (the archive's files each hold one)."""
    columns = INCREMENTAL_COLUMNS if symbol else {"symbol": pl.String(), **INCREMENTAL_COLUMNS}
    named = symbol
    engine: BookEngine | None = None
    steps = TimeSteps(path)
    ids = [0]
    carried: CsvBatch | None = None
    what = f"a tardis incremental_book_L2 CSV (header {CSV_HEADER},...)"
    batches = read_ahead(read_csv_batches(path, columns, what, chunk_bytes))
    for batch in chain(batches, [None]):
        final = batch is None
        if batch is not None:
            steps.see_many(batch.frame["local_timestamp"].to_numpy() * 1000, batch.first_line)
            if symbol is None:
                named = _one_symbol(path, batch, named)
            if engine is None:
                engine = BookEngine(cast(str, named), levels, every_ms, sink=sink)
        if carried is not None:  # the previous batch's last update may go on in this one
            frame = carried.frame if batch is None else pl.concat([carried.frame, batch.frame])
            batch = CsvBatch(frame, carried.first_line)
        if batch is None or engine is None or not batch.frame.height:
            break
        is_bid, prices, amounts, operations, held = _updates(batch, market == "usdm", ids, final)
        engine.apply(is_bid, prices, amounts, operations)
        carried = None if final else CsvBatch(batch.frame[held:], batch.first_line + held)
    summary = ImportSummary()
    if steps.steps:
        summary.time_steps_back.append(steps.as_dict())
    if engine is None:  # a header and no row
        return pl.DataFrame(schema=snapshot_schema(levels)), summary
    summary.add_engine(engine.summary())
    return engine.frame(), summary


def _one_symbol(path: Path, batch: CsvBatch, named: str | None) -> str:
    """The unified symbol the batch's rows name; RecordingError for a second one in the file."""
    raw = batch.frame["symbol"]
    symbols = [unified_symbol(s.upper().replace("-", "")) for s in raw.unique(maintain_order=True).to_list()]
    if named is not None:
        symbols = [named, *(s for s in symbols if s != named)]
    if len(symbols) > 1:
        row = int((raw.str.to_uppercase().str.replace_all("-", "") != raw[0].upper().replace("-", "")).arg_true()[0])
        raise RecordingError(
            f"{path}:{batch.first_line + row}: a second symbol ({symbols[1]} after {symbols[0]}): an "
            "incremental_book_L2 file holds one symbol's book; split the file by its symbol column"
        )
    return symbols[0]


def last_per_interval(frame: pl.DataFrame, every_ms: int) -> pl.DataFrame:
    """The last book of each run of ``every_ms`` intervals (what the cadence grid samples); 0 keeps all."""
    if not every_ms or frame.height == 0:
        return frame
    interval = pl.col("receive_ts") // (every_ms * 1_000_000)
    return frame.filter(interval != interval.shift(-1).fill_null(-1))


def snapshot25_books(path: Path, symbol: str, levels: int, every_ms: int = 0) -> pl.DataFrame:
    """Books from a ``book_snapshot_25`` file, named by the configured ``symbol``."""
    frame, steps = tardis_book_snapshots(path, levels, every_ms)
    for step in steps:
        log.warning(time_steps_warning(step))
    return frame.with_columns(pl.lit(symbol).alias("symbol"))


def tardis_book_snapshots(
    path: Path, levels: int, every_ms: int = 0, sink: BookSink | None = None
) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """A tardis.dev ``book_snapshot_25`` CSV (gzip or plain) in the landing schema, read in batches
    (with ``every_ms``, only the last book of each interval is kept), and where its receive times
    step back (``TimeSteps.as_dict``, at most one entry). With a ``sink``, the books go to it a
    batch at a time and the frame returned is empty.

    Columns: ``exchange, symbol, timestamp, local_timestamp`` (microseconds), then
    ``asks[i].price, asks[i].amount, bids[i].price, bids[i].amount`` for i < 25. Tardis carries no
    exchange update id, so ``update_id`` is the row's position within its symbol (monotone, as
    the snapshot validation requires). Rows keep the file's order, which is tardis's receive order.
    """
    if not 1 <= levels <= 25:
        raise ValueError(f"--levels {levels}: book_snapshot_25 holds at most 25 levels per side")
    sides = {
        "bid_px": [f"bids[{i}].price" for i in range(levels)],
        "bid_qty": [f"bids[{i}].amount" for i in range(levels)],
        "ask_px": [f"asks[{i}].price" for i in range(levels)],
        "ask_qty": [f"asks[{i}].amount" for i in range(levels)],
    }
    columns: dict[str, pl.DataType] = {"symbol": pl.String(), "timestamp": pl.Int64(), "local_timestamp": pl.Int64()}
    columns |= {column: pl.Float64() for names in sides.values() for column in names}
    what = f"a tardis book_snapshot_25 CSV with {levels} levels (header {TARDIS_HEADER},...)"
    steps = TimeSteps(path)
    positions: dict[str, int] = {}
    kept: dict[str, list[pl.DataFrame]] = {}  # without a sink: a symbol's books together, as the file's order has them

    def emit(books: pl.DataFrame) -> None:
        if sink is not None:
            sink(books)
        else:
            kept.setdefault(books["symbol"][0], []).append(books)

    # Per symbol, the last book kept: the next batch may hold a later book of its interval.
    held: dict[str, pl.DataFrame] = {}
    for batch in read_ahead(read_csv_batches(path, columns, what, lacking_hint=", or lower --levels")):
        steps.see_many(batch.frame["local_timestamp"].to_numpy() * 1000, batch.first_line)
        for (raw_symbol,), rows in batch.frame.partition_by("symbol", as_dict=True, maintain_order=True).items():
            symbol = unified_symbol(str(raw_symbol).upper().replace("-", ""))
            start = positions.get(symbol, 0)
            positions[symbol] = start + rows.height
            level = {side: rows.select(names).to_numpy().astype(np.float64) for side, names in sides.items()}
            books = snapshot_frame(
                exchange_ns=rows["timestamp"].to_numpy() * 1000,
                receive_ns=rows["local_timestamp"].to_numpy() * 1000,
                symbol=symbol,
                update_id=np.arange(start, start + rows.height),
                bid_px=level["bid_px"],
                bid_qty=level["bid_qty"],
                ask_px=level["ask_px"],
                ask_qty=level["ask_qty"],
            )
            if every_ms:
                books = last_per_interval(pl.concat([held[symbol], books]) if symbol in held else books, every_ms)
                books, held[symbol] = books[:-1], books[-1:]
            if books.height:
                emit(books)
    for books in held.values():
        emit(books)
    parts = [books for symbol_books in kept.values() for books in symbol_books]
    frame = pl.concat(parts) if parts else pl.DataFrame(schema=snapshot_schema(levels))
    return frame, [steps.as_dict()] if steps.steps else []
