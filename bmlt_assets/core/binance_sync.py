"""Rebuilding Binance L2 books from raw depth streams, by Binance's documented rules.

Spot (``U``/``u``): buffer diff events, take a REST snapshot, drop events with
``u <= lastUpdateId``; the first applied event must straddle ``lastUpdateId + 1``; every later
event must start at ``U == previous u + 1``. USD-M futures chain by ``pu == previous u`` instead.
A break in the chain is a gap: the book is discarded until the next snapshot, and the gap's
interval (receive times) is recorded. After every applied event the top ``levels`` of each side
are emitted as one snapshot in the landing schema (``bmlt_assets.core.book``).

Recordings are ``<receive ns> <raw JSON>`` lines (gzip or plain): combined-stream messages
(``{"stream": ..., "data": ...}``) and REST depth snapshots (``{"lastUpdateId": ...}``).
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import polars as pl

from bmlt_assets.core.book import snapshot_frame

log = logging.getLogger(__name__)
QUOTES = ("USDT", "USDC", "FDUSD", "TUSD", "BUSD", "BTC", "ETH", "BNB", "EUR", "TRY")


def unified_symbol(raw: str) -> str:
    """'BTCUSDT' -> 'BTC/USDT' (ccxt's unified form)."""
    for quote in QUOTES:
        if raw.endswith(quote) and len(raw) > len(quote):
            return f"{raw[: -len(quote)]}/{quote}"
    raise ValueError(f"cannot split Binance symbol {raw!r} into base and quote")


def read_recording(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as lines:
        for number, line in enumerate(lines, 1):
            stamp, _, payload = line.partition(" ")
            try:
                yield int(stamp), json.loads(payload)
            except ValueError as error:
                raise ValueError(f"{path}:{number}: not a '<receive ns> <json>' line ({error})") from None


@dataclass
class BookState:
    bids: dict[float, float] = field(default_factory=dict)
    asks: dict[float, float] = field(default_factory=dict)
    last_update_id: int | None = None  # None: waiting for a snapshot
    first_after_snapshot: bool = False
    buffer: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    last_receive_ns: int = 0


@dataclass
class ImportSummary:
    snapshots: int = 0
    updates_applied: int = 0
    updates_dropped: int = 0
    crossed: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    first_receive_ns: int | None = None
    last_receive_ns: int | None = None

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
        }


class BookBuilder:
    """Feeds recorded messages through the sync rules and collects N-level snapshots."""

    def __init__(self, market: str, levels: int):
        if market not in ("spot", "usdm"):
            raise ValueError(f"market must be 'spot' or 'usdm', got {market!r}")
        self.market, self.levels = market, levels
        self.books: dict[str, BookState] = {}
        self.rows: dict[str, list[tuple]] = {}
        self.summary = ImportSummary()

    def feed(self, messages: Iterable[tuple[int, dict[str, Any]]], snapshot_symbol: str | None = None) -> None:
        for receive_ns, message in messages:
            if "lastUpdateId" in message:
                # A REST snapshot names no symbol: it belongs to the recording's (single) stream.
                symbol = snapshot_symbol or next(iter(self.books), None)
                if symbol is None:
                    raise ValueError("a REST snapshot arrived before any depth event: its symbol is unknown")
                self._snapshot(symbol, receive_ns, message)
            else:
                data = message.get("data", message)
                if data.get("e") == "depthUpdate":
                    self._event(unified_symbol(data["s"]), receive_ns, data)

    def _snapshot(self, symbol: str, receive_ns: int, message: dict[str, Any]) -> None:
        book = self.books.setdefault(symbol, BookState())
        book.bids = {float(p): float(q) for p, q in message["bids"] if float(q) > 0}
        book.asks = {float(p): float(q) for p, q in message["asks"] if float(q) > 0}
        book.last_update_id = int(message["lastUpdateId"])
        book.first_after_snapshot = True
        buffered, book.buffer = book.buffer, []
        for stamp, event in buffered:
            self._event(symbol, stamp, event)

    def _event(self, symbol: str, receive_ns: int, event: dict[str, Any]) -> None:
        book = self.books.setdefault(symbol, BookState())
        if book.last_update_id is None:
            book.buffer.append((receive_ns, event))
            return
        first, last = int(event["U"]), int(event["u"])
        if last <= book.last_update_id:
            self.summary.updates_dropped += 1
            return
        if book.first_after_snapshot:
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
            self.books[symbol] = BookState(buffer=[(receive_ns, event)])  # re-sync at the next snapshot
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


def tardis_book_snapshots(path: Path, levels: int) -> pl.DataFrame:
    """A tardis.dev ``book_snapshot_25`` CSV (gzip or plain) in the landing schema.

    Columns: ``exchange, symbol, timestamp, local_timestamp`` (microseconds), then
    ``asks[i].price, asks[i].amount, bids[i].price, bids[i].amount`` for i < 25. Tardis carries no
    exchange update id, so ``update_id`` is the row's position within its symbol (monotone, as
    the snapshot validation requires).
    """
    if not 1 <= levels <= 25:
        raise ValueError(f"--levels {levels}: book_snapshot_25 holds at most 25 levels per side")
    raw = pl.read_csv(path)
    missing = [
        c
        for c in ("symbol", "timestamp", "local_timestamp", f"asks[{levels - 1}].price", f"bids[{levels - 1}].amount")
        if c not in raw.columns
    ]
    if missing:
        raise ValueError(
            f"{path}: not a tardis book_snapshot_25 file, or fewer than {levels} levels (missing {missing})"
        )
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


IMPORT_FORMATS = ("binance-ws", "tardis-book-snapshot")


def import_recordings(files: list[Path], fmt: str, market: str, levels: int) -> tuple[pl.DataFrame, ImportSummary]:
    """Snapshots of ``levels`` levels from recordings in ``fmt``, and what the import saw."""
    if fmt not in IMPORT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(IMPORT_FORMATS)}")
    if fmt == "binance-ws":
        builder = BookBuilder(market, levels)
        for path in files:
            log.info("replaying %s", path)
            builder.feed(read_recording(path))
        log.info(
            "rebuilt %s books from %s depth updates, %s gap(s)",
            builder.summary.snapshots,
            builder.summary.updates_applied,
            len(builder.summary.gaps),
        )
        return builder.frame(), builder.summary
    frame = pl.concat([tardis_book_snapshots(path, levels) for path in files])
    crossed = int((frame["bid_px"].arr.first() >= frame["ask_px"].arr.first()).sum())
    summary = ImportSummary(
        snapshots=frame.height,
        crossed=crossed,
        # receive_ts is Int64 (snapshot schema): its min/max are ints, or None for no rows.
        first_receive_ns=cast("int | None", frame["receive_ts"].min()),
        last_receive_ns=cast("int | None", frame["receive_ts"].max()),
    )
    return frame, summary
