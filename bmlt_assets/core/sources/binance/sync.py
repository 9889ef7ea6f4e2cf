"""Rebuilding Binance L2 books from raw depth streams, by Binance's documented rules.

Spot (``U``/``u``): buffer diff events, take a REST snapshot, drop events with
``u <= lastUpdateId``; the first applied event must straddle ``lastUpdateId + 1``; every later
event must start at ``U == previous u + 1``. USD-M futures: drop events with ``u < lastUpdateId``;
the first applied event has ``U <= lastUpdateId <= u``; every later one chains by
``pu == previous u``. A break in the chain is a gap: the book is discarded until the next
snapshot, and the gap's interval (receive times) is recorded. A snapshot that arrives while the
book is in sync is ignored: the applied stream already holds everything it could tell. After
every applied event the top ``levels`` of each side are emitted as one snapshot in the landing
schema (``bmlt_assets.core.book``). A REST snapshot names no symbol: it belongs to the symbol
whose stream's update ids bracket its ``lastUpdateId`` (see ``BookBuilder._owner``).

Recordings are ``<receive ns> <raw JSON>`` lines (gzip or plain): combined-stream messages
(``{"stream": ..., "data": ...}``) and REST depth snapshots (``{"lastUpdateId": ...}``).

A file that cannot be imported as asked raises :class:`RecordingError`, whose one-line message
names the file, what is wrong and what to do. A damaged gzip stream (a truncated download) is
not an error of the whole import: the books rebuilt before the damage are kept and the damage is
listed in :attr:`ImportSummary.damaged`.
"""

from __future__ import annotations

import codecs
import gzip
import io
import logging
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl

from bmlt_assets.core.book import snapshot_schema
from bmlt_assets.core.sources.book_engine import BookEngine, BookSink, EngineStats
from bmlt_assets.core.sources.book_layout import RESET, SNAPSHOT, UPDATE

log = logging.getLogger(__name__)
GZIP_MAGIC = b"\x1f\x8b"
TARDIS_HEADER = "exchange,symbol,timestamp,local_timestamp"
PROGRESS_EVERY_LINES = 20_000
# Called every PROGRESS_EVERY_LINES lines and at the end of each file: (file, bytes read, file size).
Progress = Callable[[Path, int, int], None]
QUOTES = ("USDT", "USDC", "FDUSD", "TUSD", "BUSD", "BTC", "ETH", "BNB", "EUR", "TRY")


def unified_symbol(raw: str) -> str:
    """'BTCUSDT' -> 'BTC/USDT' (ccxt's unified form)."""
    for quote in QUOTES:
        if raw.endswith(quote) and len(raw) > len(quote):
            return f"{raw[: -len(quote)]}/{quote}"
    raise ValueError(f"cannot split Binance symbol {raw!r} into base and quote")


class RecordingError(ValueError):
    """A file that cannot be imported as asked; the message names it, the problem and the fix."""


class TruncatedRecording(RecordingError):
    """The file ends (or its gzip stream breaks) after ``lines`` good lines."""

    def __init__(self, path: Path, lines: int, reason: str):
        super().__init__(f"{path} is truncated after {lines} lines ({reason})")
        self.path, self.lines, self.reason = path, lines, reason


class MarketMismatch(ValueError):
    """Depth updates of the other market than the one asked for."""


class AmbiguousSnapshot(ValueError):
    """A REST snapshot (which names no symbol) that the update ids of several symbols could sync."""


def _open_binary(raw: io.BufferedReader) -> io.BufferedReader | gzip.GzipFile:
    """``raw`` itself, or a gzip reader over it when it starts with the gzip magic bytes (the
    content decides, not the file name)."""
    magic = raw.read(2)
    raw.seek(0)
    return gzip.GzipFile(fileobj=raw) if magic == GZIP_MAGIC else raw


def first_line(path: Path, expected: str) -> str:
    """The first line of a recording (gzip or plain), after checking that it is a non-empty text
    file; ``expected`` says what it should have been, for the message."""
    if path.is_dir():
        raise RecordingError(f"{path} is a directory: pass the files in it ({path}/*), not the folder")
    head = b""
    with open(path, "rb") as raw:
        stream = _open_binary(raw)
        try:
            while len(head) < 4096 and (chunk := stream.read1(4096 - len(head))):
                head += chunk
        except (EOFError, OSError, zlib.error):
            pass  # damaged further on: read_recording reports where
    if not head:
        raise RecordingError(f"{path} is empty: nothing to import; pass {expected}")
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut at 4096 is fine
    except UnicodeDecodeError:
        text = "\x00"
    if "\x00" in text:
        raise RecordingError(f"{path} is a binary file, neither gzip nor text: pass {expected}")
    return text.partition("\n")[0]


def read_recording(path: Path, progress: Progress | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """The ``(receive ns, message)`` of each line. A damaged or cut-off end raises
    :class:`TruncatedRecording` after the good lines; anything else unreadable, RecordingError."""
    first = first_line(path, "a Binance recording of '<receive ns> <JSON>' lines (gzip or plain)")
    if first.startswith(TARDIS_HEADER):
        raise RecordingError(
            f"{path} is a tardis book_snapshot_25 CSV, not a Binance WebSocket recording: "
            "use --format tardis-book-snapshot"
        )
    size = path.stat().st_size
    number = 0
    with open(path, "rb") as raw:
        try:
            for number, line in enumerate(io.TextIOWrapper(_open_binary(raw), encoding="utf-8"), 1):
                stamp, _, payload = line.partition(" ")
                try:
                    message = int(stamp), orjson.loads(payload)
                except ValueError as error:
                    if not line.endswith("\n"):  # the last line, cut off by a killed writer
                        raise TruncatedRecording(path, number - 1, "its last line is cut off") from None
                    raise RecordingError(
                        f"{path}:{number}: not a '<receive ns> <JSON>' line ({error}): "
                        "pass a Binance WebSocket recording, or --format tardis-book-snapshot for a tardis CSV"
                    ) from None
                yield message
                if progress is not None and number % PROGRESS_EVERY_LINES == 0:
                    progress(path, raw.tell(), size)
        except EOFError:
            raise TruncatedRecording(path, number, "gzip stream ended early") from None
        except (zlib.error, gzip.BadGzipFile) as error:
            raise TruncatedRecording(path, number, f"gzip data damaged: {error}") from None
        except UnicodeDecodeError as error:
            raise RecordingError(
                f"{path}: bytes after line {number} are not UTF-8 text ({error.reason}): the file is damaged; "
                "re-download or re-record it"
            ) from None
    if progress is not None:
        progress(path, size, size)


@dataclass
class SyncState:
    """Where one symbol's stream stands under the sync rules (its book lives in the engine)."""

    last_update_id: int | None = None  # None: waiting for a snapshot
    first_after_snapshot: bool = False
    buffer: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    last_receive_ns: int = 0  # of the last applied update, or of the symbol's first message: a gap's start


@dataclass
class ImportSummary:
    snapshots: int = 0
    updates_applied: int = 0
    updates_dropped: int = 0
    crossed: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    first_receive_ns: int | None = None
    last_receive_ns: int | None = None
    # Files whose end is damaged: {"file", "lines" (good ones), "books" (rebuilt from them), "reason"}.
    damaged: list[dict[str, Any]] = field(default_factory=list)
    # Files whose receive times step back: {"file", "line" (the first step), "steps", "largest_s"}.
    time_steps_back: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        def iso(ns: int | None) -> str | None:
            return None if ns is None else str(np.datetime64(ns, "ns"))

        return {
            "snapshots": self.snapshots,
            "updates_applied": self.updates_applied,
            "updates_dropped": self.updates_dropped,
            "crossed_books": self.crossed,
            "gaps": self.gaps,
            "first": iso(self.first_receive_ns),
            "last": iso(self.last_receive_ns),
            "damaged": self.damaged,
            "time_steps_back": self.time_steps_back,
        }

    def add_engine(self, stats: EngineStats) -> None:
        """Count in what one book's engine emitted."""
        self.updates_applied += stats.applied
        self.snapshots += stats.emitted
        self.crossed += stats.crossed
        for ns in (stats.first_receive_ns, stats.last_receive_ns):
            if ns is not None:
                self.first_receive_ns = ns if self.first_receive_ns is None else min(self.first_receive_ns, ns)
                self.last_receive_ns = ns if self.last_receive_ns is None else max(self.last_receive_ns, ns)


class LevelError(ValueError):
    """A level of the ``message``-th fed message is not a [price, quantity] pair of numbers."""

    def __init__(self, message: int, detail: str):
        super().__init__(detail)
        self.message = message


class BookBuilder:
    """Feeds recorded messages through the sync rules; the book engine applies them and collects
    N-level snapshots (every update's, or with ``every_ms`` the last of each interval), or hands
    them to ``sink`` as they come (``BookEngine``).

    The rules need only update ids, so they run here per message while the levels wait in a
    batch of at most :data:`FLUSH_LEVELS` level changes for the compiled engine."""

    FLUSH_LEVELS = 1 << 18

    def __init__(self, market: str, levels: int, every_ms: int = 0, sink: BookSink | None = None):
        if market not in ("spot", "usdm"):
            raise ValueError(f"market must be 'spot' or 'usdm', got {market!r}")
        if levels < 1:
            raise ValueError(f"levels must be at least 1 per side, got {levels}")
        self.market, self.levels, self.every_ms, self.sink = market, levels, every_ms, sink
        self.books: dict[str, SyncState] = {}
        self.engines: dict[str, BookEngine] = {}  # in the order of their first operation
        self.summary = ImportSummary()
        self.rest_snapshots = 0  # REST snapshots seen
        self.seen_ids: dict[str, tuple[int, int]] = {}  # per symbol: (first U, last u) of every event seen
        self.unclaimed: list[tuple[int, dict[str, Any]]] = []  # snapshots ahead of every symbol's stream
        self.fed = 0  # messages fed so far: a LevelError names one by this count
        # Operations waiting for the engine: (symbol, kind, receive ns, exchange ns, update id,
        # bid level count, ask level count, the levels as "price,quantity" lines, message number).
        self._pending: list[tuple[str, int, int, int, int, int, int, str, int]] = []
        self._pending_levels = 0

    @property
    def deepest(self) -> int:
        """The most levels (the shorter side) of any book too shallow to emit."""
        return max((engine.summary().deepest for engine in self.engines.values()), default=0)

    def feed(self, messages: Iterable[tuple[int, dict[str, Any]]], snapshot_symbol: str | None = None) -> None:
        try:
            for receive_ns, message in messages:
                self.fed += 1
                self._message(receive_ns, message, snapshot_symbol)
                if self._pending_levels >= self.FLUSH_LEVELS:
                    self._flush()
        except TruncatedRecording:
            self._flush()  # the books before the damage are kept
            raise
        self._flush()

    def _message(self, receive_ns: int, message: dict[str, Any], snapshot_symbol: str | None) -> None:
        if "lastUpdateId" in message:
            self.rest_snapshots += 1
            symbol = snapshot_symbol or self._owner(int(message["lastUpdateId"]))
            if symbol is None:
                self.unclaimed.append((receive_ns, message))  # claimed by the first event reaching it
            else:
                self._snapshot(symbol, receive_ns, message)
        else:
            data = message.get("data", message)
            if data.get("e") == "depthUpdate":
                symbol = unified_symbol(data["s"])
                first, last = self.seen_ids.get(symbol, (int(data["U"]), int(data["u"])))
                self.seen_ids[symbol] = (min(first, int(data["U"])), max(last, int(data["u"])))
                self._event(symbol, receive_ns, data)
                self._claim(symbol)

    def _owner(self, last_update_id: int) -> str | None:
        """The symbol a REST snapshot belongs to. It names none, so: the only symbol seen, else the one
        whose stream's update ids bracket its lastUpdateId (it is the stream the snapshot can sync);
        None while no stream reaches it yet (a snapshot taken ahead of the buffered events)."""
        if not self.seen_ids:
            raise ValueError("a REST snapshot arrived before any depth event: its symbol is unknown")
        if len(self.seen_ids) == 1:
            return next(iter(self.seen_ids))
        owners = [s for s, (lo, hi) in self.seen_ids.items() if lo <= last_update_id + 1 and last_update_id <= hi]
        # A symbol in sync ignores snapshots: of several candidates, the one waiting for a snapshot is meant.
        waiting = [s for s in owners if s not in self.books or self.books[s].last_update_id is None]
        if len(owners) > 1 and len(waiting) == 1:
            return waiting[0]
        if len(owners) > 1:
            raise AmbiguousSnapshot(
                f"a REST snapshot (lastUpdateId {last_update_id}) fits the update ids of {', '.join(owners)}: "
                "record each symbol's stream and snapshots in its own file and import them one symbol at a time"
            )
        return owners[0] if owners else None

    def _claim(self, symbol: str) -> None:
        """Apply the unclaimed snapshots that ``symbol``'s stream has now reached."""
        for receive_ns, message in list(self.unclaimed):
            if self._owner(int(message["lastUpdateId"])) == symbol:
                self.unclaimed.remove((receive_ns, message))
                self._snapshot(symbol, receive_ns, message)

    def _queue(self, symbol: str, kind: int, receive_ns: int, exchange_ns: int, update_id: int, bids, asks) -> None:
        """Queue an operation; its levels wait as CSV text (one str object, which the garbage collector
        need not track as it would a list per level), parsed a batch at a time."""
        try:
            text = "\n".join(map(",".join, chain(bids, asks)))
        except TypeError:  # numbers rather than strings, or not lists: read as the old engine read them
            text = "\n".join(f"{price!r},{quantity!r}" for price, quantity in _levels(chain(bids, asks), self.fed))
        self._pending.append((symbol, kind, receive_ns, exchange_ns, update_id, len(bids), len(asks), text, self.fed))
        self._pending_levels += len(bids) + len(asks)

    def _snapshot(self, symbol: str, receive_ns: int, message: dict[str, Any]) -> None:
        book = self.books.setdefault(symbol, SyncState(last_receive_ns=receive_ns))
        snapshot_id = int(message["lastUpdateId"])
        if book.last_update_id is not None and (not book.first_after_snapshot or snapshot_id <= book.last_update_id):
            # In sync (or holding a newer snapshot): an older snapshot would roll the book back, a newer one
            # only repeats what the chained stream is about to deliver. Resetting would fake a gap.
            return
        self._queue(symbol, SNAPSHOT, receive_ns, 0, snapshot_id, message["bids"], message["asks"])
        book.last_update_id = snapshot_id
        book.first_after_snapshot = True
        buffered, book.buffer = book.buffer, []
        for stamp, event in buffered:
            self._event(symbol, stamp, event)

    def _event(self, symbol: str, receive_ns: int, event: dict[str, Any]) -> None:
        if ("pu" in event) != (self.market == "usdm"):  # USD-M updates chain by pu, spot ones carry none
            raise MarketMismatch(
                "looks like a spot recording (depth updates carry no 'pu'): use --market spot"
                if self.market == "usdm"
                else "looks like a USD-M futures recording (depth updates carry 'pu'): use --market usdm"
            )
        book = self.books.setdefault(symbol, SyncState(last_receive_ns=receive_ns))
        if book.last_update_id is None:
            book.buffer.append((receive_ns, event))
            return
        first, last = int(event["U"]), int(event["u"])
        # USD-M's first event may end at lastUpdateId itself (U <= lastUpdateId <= u); spot's starts after it.
        usdm_first = self.market == "usdm" and book.first_after_snapshot
        if last < book.last_update_id or (last == book.last_update_id and not usdm_first):
            self.summary.updates_dropped += 1
            return
        if usdm_first:
            chained = first <= book.last_update_id <= last
        elif book.first_after_snapshot:
            chained = first <= book.last_update_id + 1 <= last
        elif self.market == "spot":
            chained = first == book.last_update_id + 1
        else:
            chained = int(event["pu"]) == book.last_update_id
        if not chained:
            self.summary.gaps.append(
                {
                    "symbol": symbol,
                    "from_ns": book.last_receive_ns,
                    "to_ns": receive_ns,
                    "after_update_id": book.last_update_id,
                }
            )
            # Re-sync at the next snapshot; a later gap still starts at this book's last update.
            self.books[symbol] = SyncState(buffer=[(receive_ns, event)], last_receive_ns=book.last_receive_ns)
            self._queue(symbol, RESET, receive_ns, 0, 0, (), ())
            return
        self._queue(symbol, UPDATE, receive_ns, int(event["E"]) * 1_000_000, last, event["b"], event["a"])
        book.last_update_id, book.first_after_snapshot, book.last_receive_ns = last, False, receive_ns

    def _flush(self) -> None:
        """Hand the queued operations to each symbol's engine."""
        pending, self._pending, self._pending_levels = self._pending, [], 0
        if not pending:
            return
        bid_counts = np.fromiter((op[5] for op in pending), dtype=np.int64, count=len(pending))
        ask_counts = np.fromiter((op[6] for op in pending), dtype=np.int64, count=len(pending))
        prices, quantities = _parse_levels(pending, int(bid_counts.sum() + ask_counts.sum()))
        is_bid = np.repeat(
            np.tile(np.array([True, False]), len(pending)), np.column_stack([bid_counts, ask_counts]).ravel()
        )
        ends = np.cumsum(bid_counts + ask_counts)
        operations = np.empty((len(pending), 6), dtype=np.int64)
        operations[:, 0] = [op[1] for op in pending]
        operations[:, 1], operations[:, 2] = ends - bid_counts - ask_counts, ends
        operations[:, 3] = [op[2] for op in pending]
        operations[:, 4] = [op[3] for op in pending]
        operations[:, 5] = [op[4] for op in pending]
        symbols = [op[0] for op in pending]
        distinct = list(dict.fromkeys(symbols))
        for symbol in distinct:
            engine = self.engines.get(symbol)
            if engine is None:
                engine = self.engines[symbol] = BookEngine(symbol, self.levels, self.every_ms, sink=self.sink)
            mine = np.flatnonzero(np.array(symbols) == symbol) if len(distinct) > 1 else slice(None)
            engine.apply(is_bid, prices, quantities, np.ascontiguousarray(operations[mine]))
        self._recount()

    def _recount(self) -> None:
        """The summary's figures of emitted books, from the engines (the rules count gaps and drops)."""
        total = ImportSummary()
        for engine in self.engines.values():
            total.add_engine(engine.summary())
        for name in ("updates_applied", "snapshots", "crossed", "first_receive_ns", "last_receive_ns"):
            setattr(self.summary, name, getattr(total, name))

    def frame(self) -> pl.DataFrame:
        self._flush()
        frames = [engine.frame() for engine in self.engines.values()]
        frames = [frame for frame in frames if frame.height]
        if not frames:
            return pl.DataFrame(schema=snapshot_schema(self.levels))
        return pl.concat(frames) if len(frames) > 1 else frames[0]


def _levels(levels: Iterable[Any], message: int) -> Iterator[tuple[float, float]]:
    """Each ``[price, quantity]`` pair as floats, as the old engine read them; LevelError otherwise."""
    try:
        for price, quantity in levels:
            yield float(price), float(quantity)
    except (TypeError, ValueError) as error:
        raise LevelError(message, f"a level is not a [price, quantity] pair of numbers: {error}") from None


def _parse_levels(pending: list[tuple], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The prices and quantities of the queued operations' levels, in order. One CSV parse for the
    batch; where it fails (a level that is no pair of numbers), operation by operation, so the
    LevelError names the message."""
    texts = [op[7] for op in pending if op[7]]
    if rows:
        try:
            frame = pl.read_csv(
                "\n".join(texts).encode(), has_header=False, schema={"price": pl.Float64, "quantity": pl.Float64}
            )
            if frame.height == rows and not frame.null_count().sum_horizontal().item():
                return frame["price"].to_numpy(), frame["quantity"].to_numpy()
        except pl.exceptions.PolarsError:
            pass
    pairs = [
        pair for op in pending if op[7] for pair in _levels((line.split(",") for line in op[7].split("\n")), op[8])
    ]
    values = np.array(pairs, dtype=np.float64).reshape(-1, 2)
    return values[:, 0].copy(), values[:, 1].copy()
