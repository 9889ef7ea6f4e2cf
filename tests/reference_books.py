"""Today's book engine before issue 22, frozen: the slow reference the compiled engine is tested against.

Python dicts per side, every side sorted after every update (``BookBuilder._emit``), tardis rows
turned into one message dict per update, whole files read at once. Copied unchanged from
``core/sources/binance/sync.py``, ``core/sources/tardis.py`` and ``core/sources/importer.py`` as
they were; only the imports differ. Never used by the product.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from bmlt_assets.core.book import snapshot_frame, snapshot_schema
from bmlt_assets.core.sources.binance.sync import (
    TARDIS_HEADER,
    AmbiguousSnapshot,
    ImportSummary,
    MarketMismatch,
    Progress,
    RecordingError,
    TruncatedRecording,
    first_line,
    unified_symbol,
)
from bmlt_assets.core.sources.tardis import INCREMENTAL_COLUMNS, exchange_symbol

PROGRESS_EVERY_LINES = 20_000


def _open_binary(raw: io.BufferedReader) -> io.BufferedReader | gzip.GzipFile:
    magic = raw.read(2)
    raw.seek(0)
    return gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw


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
                    message = int(stamp), json.loads(payload)
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
class BookState:
    bids: dict[float, float] = field(default_factory=dict)
    asks: dict[float, float] = field(default_factory=dict)
    last_update_id: int | None = None  # None: waiting for a snapshot
    first_after_snapshot: bool = False
    buffer: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    last_receive_ns: int = 0  # of the last applied update, or of the symbol's first message: a gap's start


class BookBuilder:
    """Feeds recorded messages through the sync rules and collects N-level snapshots."""

    def __init__(self, market: str, levels: int):
        if market not in ("spot", "usdm"):
            raise ValueError(f"market must be 'spot' or 'usdm', got {market!r}")
        if levels < 1:
            raise ValueError(f"levels must be at least 1 per side, got {levels}")
        self.market, self.levels = market, levels
        self.books: dict[str, BookState] = {}
        self.rows: dict[str, list[tuple]] = {}
        self.summary = ImportSummary()
        self.rest_snapshots = 0  # REST snapshots seen
        self.deepest = 0  # the most levels (the shorter side) of any book too shallow to emit
        self.seen_ids: dict[str, tuple[int, int]] = {}  # per symbol: (first U, last u) of every event seen
        self.unclaimed: list[tuple[int, dict[str, Any]]] = []  # snapshots ahead of every symbol's stream

    def feed(self, messages: Iterable[tuple[int, dict[str, Any]]], snapshot_symbol: str | None = None) -> None:
        for receive_ns, message in messages:
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

    def _snapshot(self, symbol: str, receive_ns: int, message: dict[str, Any]) -> None:
        book = self.books.setdefault(symbol, BookState(last_receive_ns=receive_ns))
        snapshot_id = int(message["lastUpdateId"])
        if book.last_update_id is not None and (not book.first_after_snapshot or snapshot_id <= book.last_update_id):
            # In sync (or holding a newer snapshot): an older snapshot would roll the book back, a newer one
            # only repeats what the chained stream is about to deliver. Resetting would fake a gap.
            return
        book.bids = {float(p): float(q) for p, q in message["bids"] if float(q) > 0}
        book.asks = {float(p): float(q) for p, q in message["asks"] if float(q) > 0}
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
        book = self.books.setdefault(symbol, BookState(last_receive_ns=receive_ns))
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
            self.books[symbol] = BookState(buffer=[(receive_ns, event)], last_receive_ns=book.last_receive_ns)
            return
        for side, changes in ((book.bids, event["b"]), (book.asks, event["a"])):
            for price, quantity in changes:
                p, q = float(price), float(quantity)
                if q == 0:
                    side.pop(p, None)
                else:
                    side[p] = q
        book.last_update_id, book.first_after_snapshot, book.last_receive_ns = last, False, receive_ns
        self.summary.updates_applied += 1
        self._emit(symbol, receive_ns, int(event["E"]) * 1_000_000, last, book)

    def _emit(self, symbol: str, receive_ns: int, exchange_ns: int, update_id: int, book: BookState) -> None:
        if len(book.bids) < self.levels or len(book.asks) < self.levels:
            self.deepest = max(self.deepest, min(len(book.bids), len(book.asks)))
            return
        bid_prices = sorted(book.bids, reverse=True)[: self.levels]
        ask_prices = sorted(book.asks)[: self.levels]
        if bid_prices[0] >= ask_prices[0]:
            self.summary.crossed += 1
        self.rows.setdefault(symbol, []).append(
            (
                exchange_ns,
                receive_ns,
                update_id,
                bid_prices,
                [book.bids[p] for p in bid_prices],
                ask_prices,
                [book.asks[p] for p in ask_prices],
            )
        )
        s = self.summary
        s.snapshots += 1
        s.first_receive_ns = receive_ns if s.first_receive_ns is None else min(s.first_receive_ns, receive_ns)
        s.last_receive_ns = receive_ns if s.last_receive_ns is None else max(s.last_receive_ns, receive_ns)

    def frame(self) -> pl.DataFrame:
        frames = []
        for symbol, rows in self.rows.items():
            exchange, receive, update, bid_px, bid_qty, ask_px, ask_qty = (np.asarray(column) for column in zip(*rows))
            frames.append(
                snapshot_frame(
                    exchange_ns=exchange,
                    receive_ns=receive,
                    symbol=symbol,
                    update_id=update,
                    bid_px=bid_px,
                    bid_qty=bid_qty,
                    ask_px=ask_px,
                    ask_qty=ask_qty,
                )
            )
        return pl.concat(frames) if frames else pl.DataFrame()


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


def replay_recordings(files: list[Path], market: str, levels: int) -> tuple[pl.DataFrame, ImportSummary]:
    """``bmlt import --format binance-ws`` as it was: every file through one builder, every update's book."""
    builder = BookBuilder(market, levels)
    for path in files:
        with contextlib.suppress(TruncatedRecording):
            builder.feed(read_recording(path))
    return builder.frame(), builder.summary
