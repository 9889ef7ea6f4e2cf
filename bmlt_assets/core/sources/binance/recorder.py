"""The live recorder: ccxt.pro order books -> rotating, atomically published landing files.

One task per symbol awaits ``watch_order_book(symbol)``. It is called without a limit: ccxt
keeps the whole synced book (a small limit trims the stored book, which then drifts from
Binance's within minutes) and the top ``depth`` levels are sliced here. ccxt applies Binance's
sync rules; after a sequence gap or a dropped connection it re-subscribes and re-syncs from a
fresh REST snapshot, and the recorder records the interval in between as a gap.

Files. Rows go to ``<landing>/date=YYYY-MM-DD/rec-HHMMSS-<session>.parquet``, one file per
``rotate_s`` interval of receive time, in the snapshot schema of ``bmlt_assets.core.book``.
Every ``flush_s`` the current interval's file is rewritten whole under a temporary name and
renamed into place, so a killed recorder loses at most one flush interval and every published
file is complete. (Parquet cannot be appended to; rewriting keeps each file one readable unit,
at a cost bounded by the rotation size.) The writes run in a worker thread, so receiving goes on
meanwhile. Gap intervals go beside each file in ``<file>.gaps.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import ccxt
import numpy as np
import polars as pl

from bmlt_assets.core.book import snapshot_schema
from bmlt_assets.core.files import StoredPath, atomic_write, read_parquet, write_parquet
from bmlt_assets.core.sources.binance.errors import BinanceBanned

NS = 1_000_000_000


class RecorderError(RuntimeError):
    """The recorder cannot go on; the message says why and what to change."""


@dataclass(frozen=True)
class BookRow:
    symbol: str
    exchange_ns: int
    receive_ns: int
    update_id: int
    bids: np.ndarray  # (depth, 2): price, quantity, best first
    asks: np.ndarray


@dataclass(frozen=True)
class Gap:
    """Updates of ``symbol`` between these two books were lost (receive times, update ids)."""

    symbol: str
    from_ns: int
    to_ns: int
    after_update_id: int
    resumed_update_id: int
    reason: str


def book_row(symbol: str, book: dict[str, Any], depth: int, receive_ns: int) -> BookRow | None:
    """The top ``depth`` levels of a ccxt order book, or None while a side is thinner than that."""
    bids, asks = book["bids"][:depth], book["asks"][:depth]
    if len(bids) < depth or len(asks) < depth:
        return None
    # Right after a REST snapshot a spot book has no exchange time yet: use our receive time.
    exchange_ns = receive_ns if book.get("timestamp") is None else int(book["timestamp"]) * 1_000_000
    return BookRow(symbol, exchange_ns, receive_ns, int(book["nonce"]), _price_quantity(bids), _price_quantity(asks))


def _price_quantity(levels: list[list[float]]) -> np.ndarray:
    return np.array([level[:2] for level in levels], dtype=np.float64)


class CadenceSampler:
    """Keeps the last book of each ``cadence_ms`` interval of receive time (what the cadence grid
    of ``book_tensors`` reads), or passes every book through when ``cadence_ms`` is 0."""

    def __init__(self, cadence_ms: int):
        self.cadence_ns = cadence_ms * 1_000_000
        self.pending: dict[str, BookRow] = {}

    def _interval(self, ns: int) -> int:
        return ns // self.cadence_ns

    def offer(self, row: BookRow) -> list[BookRow]:
        if not self.cadence_ns:
            return [row]
        held = self.pending.get(row.symbol)
        self.pending[row.symbol] = row
        return [held] if held is not None and self._interval(held.receive_ns) < self._interval(row.receive_ns) else []

    def release(self, now_ns: int) -> list[BookRow]:
        """The held books whose interval has ended by ``now_ns``."""
        if not self.cadence_ns:
            return []
        done = [s for s, row in self.pending.items() if self._interval(row.receive_ns) < self._interval(now_ns)]
        return [self.pending.pop(symbol) for symbol in done]

    def drain(self) -> list[BookRow]:
        rows, self.pending = list(self.pending.values()), {}
        return rows


def rows_frame(rows: list[BookRow], depth: int) -> pl.DataFrame:
    bids = np.stack([row.bids for row in rows])
    asks = np.stack([row.asks for row in rows])
    return pl.DataFrame(
        {
            "exchange_ts": [row.exchange_ns for row in rows],
            "receive_ts": [row.receive_ns for row in rows],
            "symbol": [row.symbol for row in rows],
            "update_id": [row.update_id for row in rows],
            "bid_px": bids[:, :, 0],
            "bid_qty": bids[:, :, 1],
            "ask_px": asks[:, :, 0],
            "ask_qty": asks[:, :, 1],
        },
        schema=snapshot_schema(depth),
    )


@dataclass
class Publication:
    """One file's next content, taken on the event loop and written by a worker thread."""

    segment: int
    path: StoredPath  # local, or in the object store (storage.uri s3://)
    rows: list[BookRow]  # the rows this publication adds (given back if the write fails)
    frame: pl.DataFrame | None  # the whole file, when rows changed
    gaps: list[Gap]

    @property
    def gaps_path(self) -> StoredPath:
        return self.path.with_name(self.path.name.replace(".parquet", ".gaps.json"))

    def write(self) -> None:
        if self.frame is not None:
            write_parquet(self.frame, self.path)
        if self.gaps:
            payload = json.dumps([asdict(gap) for gap in self.gaps], indent=1)
            atomic_write(self.gaps_path, lambda tmp: tmp.write_text(payload))


class LandingWriter:
    """Rotating landing files of one recording session (see the module docstring).

    ``flush`` = ``take`` (the merged content of every changed file) + writing it + ``commit``;
    the recorder writes in a worker thread between the two, and a failed write ``restore``s the
    rows so the next flush publishes them again.
    """

    def __init__(self, landing: StoredPath, depth: int, rotate_s: int, session: str | None = None):
        self.landing, self.depth, self.rotate_ns = landing, depth, rotate_s * NS
        self.session = session or uuid.uuid4().hex[:8]
        self.rows: dict[int, list[BookRow]] = {}  # not yet in a published file
        self.frames: dict[int, pl.DataFrame] = {}  # what the interval's published file holds
        self.gaps: dict[int, list[Gap]] = {}
        self.dirty: set[int] = set()
        self.sizes: dict[StoredPath, int] = {}  # published files and their current size

    def path(self, segment: int) -> StoredPath:
        start = dt.datetime.fromtimestamp(segment * self.rotate_ns // NS, dt.UTC)
        return self.landing / f"date={start:%Y-%m-%d}" / f"rec-{start:%H%M%S}-{self.session}.parquet"

    def add(self, rows: list[BookRow]) -> None:
        for row in rows:
            segment = row.receive_ns // self.rotate_ns
            self.rows.setdefault(segment, []).append(row)
            self.dirty.add(segment)

    def add_gap(self, gap: Gap) -> None:
        segment = gap.to_ns // self.rotate_ns
        self.gaps.setdefault(segment, []).append(gap)
        self.dirty.add(segment)

    def take(self) -> list[Publication]:
        batch = []
        for segment in sorted(self.dirty):
            path, rows = self.path(segment), self.rows.pop(segment, [])
            frame = None
            if rows:
                frame = self.frames.get(segment)
                if frame is None and path in self.sizes:  # the clock stepped back into a closed interval
                    frame = read_parquet(path)
                added = rows_frame(rows, self.depth)
                frame = added if frame is None else pl.concat([frame, added])
            batch.append(Publication(segment, path, rows, frame, list(self.gaps.get(segment, []))))
        self.dirty.clear()
        return batch

    def commit(self, batch: list[Publication], now_ns: int) -> None:
        for publication in batch:
            if publication.frame is not None:
                self.frames[publication.segment] = publication.frame
                self.sizes[publication.path] = publication.path.stat().st_size
        # Forget closed intervals (rows arrive at most one cadence late, and cadence divides rotate_s).
        current = now_ns // self.rotate_ns
        for segment in [s for s in self.frames.keys() | self.gaps.keys() if s < current and s not in self.dirty]:
            self.frames.pop(segment, None)
            self.gaps.pop(segment, None)

    def restore(self, batch: list[Publication]) -> None:
        for publication in batch:
            if publication.rows:
                self.rows[publication.segment] = publication.rows + self.rows.get(publication.segment, [])
            self.dirty.add(publication.segment)

    def flush(self, now_ns: int) -> None:
        """Publish every changed file now, in this thread."""
        batch = self.take()
        try:
            for publication in batch:
                publication.write()
        except BaseException:
            self.restore(batch)
            raise
        self.commit(batch, now_ns)

    @property
    def bytes_published(self) -> int:
        return sum(self.sizes.values())


@dataclass
class SymbolState:
    syncs_seen: int | None = None  # the exchange's snapshot count for this symbol at the last book
    last_update_id: int | None = None
    last_receive_ns: int | None = None
    lost_because: str | None = None  # why the book was lost since the last one, if we were told


@dataclass
class RecorderStats:
    books: Counter[str] = field(default_factory=Counter)  # books written, per symbol
    gaps: list[Gap] = field(default_factory=list)
    reconnects: int = 0
    bytes_published: int = 0
    files: int = 0
    started: float = field(default_factory=time.monotonic)
    cpu_started: float = field(default_factory=time.process_time)
    _previous: tuple[float, float, Counter[str]] | None = field(default=None, repr=False)

    def status_line(self) -> str:
        """Rates and CPU over the time since the previous status line; totals since the start."""
        now, cpu_now = time.monotonic(), time.process_time()
        since, cpu_since, counts_since = self._previous or (self.started, self.cpu_started, Counter())
        self._previous = (now, cpu_now, self.books.copy())
        window = max(now - since, 1e-9)
        rates = {symbol: (count - counts_since[symbol]) / window for symbol, count in sorted(self.books.items())}
        shown = ", ".join(f"{symbol} {rate:.1f}" for symbol, rate in rates.items()) or "waiting for the first book"
        minutes, seconds = divmod(int(now - self.started), 60)
        clock = f"{minutes // 60:02d}:{minutes % 60:02d}:{seconds:02d}"
        return (
            f"[{clock}] {sum(rates.values()):.1f} books/s ({shown}) | gaps {len(self.gaps)} | "
            f"reconnects {self.reconnects} | {self.bytes_published / 2**20:.2f} MiB in {self.files} file(s) | "
            f"cpu {100 * (cpu_now - cpu_since) / window:.0f}%"
        )

    def as_dict(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        return {
            "books": dict(self.books),
            "seconds": round(elapsed, 3),
            "gaps": [asdict(gap) for gap in self.gaps],
            "reconnects": self.reconnects,
            "bytes": self.bytes_published,
            "files": self.files,
            "cpu_seconds": round(time.process_time() - self.cpu_started, 3),
        }


class Recorder:
    """Records ``symbols`` from a ccxt.pro exchange (see ``BinanceResource.stream_exchange``)."""

    def __init__(
        self,
        exchange: Any,
        symbols: list[str],
        depth: int,
        writer: LandingWriter,
        *,
        cadence_ms: int,
        flush_s: float,
        backoff_s: float,
        max_backoff_s: float,
        status_every_s: float = 1.0,
        report: Callable[[str], None] | None = None,
    ):
        self.exchange, self.symbols, self.depth, self.writer = exchange, symbols, depth, writer
        self.sampler = CadenceSampler(cadence_ms)
        self.flush_s, self.backoff_s, self.max_backoff_s = flush_s, backoff_s, max_backoff_s
        self.status_every_s, self.report = status_every_s, report
        self.states = {symbol: SymbolState() for symbol in symbols}
        self.stats = RecorderStats()
        self._writing: asyncio.Future | None = None  # the background flush in progress, if any

    async def run(self, stop: asyncio.Event | None = None, duration_s: float | None = None) -> RecorderStats:
        """Record until ``stop`` is set or ``duration_s`` has passed; always flushes on the way out
        (also when cancelled), then closes the exchange."""
        stop = stop or asyncio.Event()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        watchers: list[asyncio.Task] = []
        try:
            if not await self._load_markets(stop, deadline):
                return self.stats
            watchers = [
                asyncio.create_task(self._watch(symbol, stop), name=f"watch {symbol}") for symbol in self.symbols
            ]
            next_flush, next_status = time.monotonic() + self.flush_s, time.monotonic() + self.status_every_s
            while not stop.is_set():
                wake = min(next_flush, next_status) if deadline is None else min(next_flush, next_status, deadline)
                await self._sleep(stop, wake - time.monotonic())
                for task in watchers:  # a watcher only ends early on an error it cannot retry: surface it
                    failure = task.exception() if task.done() else None
                    if failure is not None:
                        raise failure
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    stop.set()
                if now >= next_flush:
                    await self._flush_in_background()
                    next_flush = now + self.flush_s
                if now >= next_status:
                    self._status()
                    next_status = now + self.status_every_s
        finally:
            stop.set()
            try:
                for task in watchers:
                    task.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
                if self._writing is not None:  # the final flush must be the file's last writer
                    await asyncio.wait([self._writing])
                self._write(self.sampler.drain())
                self._flush_here()
                self._status()
            finally:
                await self.exchange.close()
        return self.stats

    async def _load_markets(self, stop: asyncio.Event, deadline: float | None) -> bool:
        """Load the exchange's markets, retrying network errors until ``stop`` or the deadline;
        False when stopped first."""
        delay = self.backoff_s
        while not stop.is_set():
            try:
                await self.exchange.load_markets()
                break
            except ccxt.NetworkError as error:
                self._stop_if_banned(error)
                problem = f"cannot reach Binance ({type(error).__name__}: {error})"
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise RecorderError(f"{problem}; check the network and data.binance.rest_url") from None
                if self.report is not None:
                    self.report(f"{problem}; retrying in {delay:.1f} s")
                await self._sleep(stop, delay)
                delay = min(delay * 2, self.max_backoff_s)
            except ccxt.BaseError as error:
                raise RecorderError(
                    f"Binance refused the markets request ({type(error).__name__}: {error}); "
                    "check data.binance.rest_url"
                ) from None
        else:
            return False
        unknown = [symbol for symbol in self.symbols if symbol not in self.exchange.markets]
        if unknown:
            raise RecorderError(
                f"data.symbols: {unknown} not listed by Binance {self.exchange.id}; check the symbols (e.g. 'BTC/USDT')"
            )
        return True

    async def _watch(self, symbol: str, stop: asyncio.Event) -> None:
        state, failures = self.states[symbol], 0
        while not stop.is_set():
            try:
                book = await self.exchange.watch_order_book(symbol)
            except ccxt.NetworkError as error:
                self._stop_if_banned(error)
                # A sequence gap (InvalidNonce) or a dropped connection: ccxt re-subscribes and
                # re-syncs from a fresh snapshot on the next call. The first retry is immediate;
                # repeated failures back off (ccxt can hand back the same rejected future until
                # its re-sync completes, and a dead endpoint should not be hammered).
                state.lost_because = state.lost_because or (
                    "sequence gap" if isinstance(error, ccxt.InvalidNonce) else f"{type(error).__name__}: {error}"[:200]
                )
                failures += 1
                if failures > 1:
                    delay = min(self.backoff_s * 2 ** (failures - 2), self.max_backoff_s)
                    await self._sleep(stop, random.uniform(0.5, 1.0) * delay)
            except ccxt.BaseError as error:  # not a transient failure: retrying would not help
                raise RecorderError(
                    f"{symbol}: Binance refused the order-book stream ({type(error).__name__}: {error})"
                ) from None
            else:
                failures = 0
                self._on_book(symbol, book, time.time_ns())

    def _stop_if_banned(self, error: Exception) -> None:
        if getattr(self.exchange, "last_status", None) == 418:
            raise BinanceBanned(
                f"Binance answered HTTP 418: this IP is banned for ignoring rate limits ({error}). "
                "Stop all clients on this IP and wait for the ban to expire before recording again."
            ) from None

    def _on_book(self, symbol: str, book: dict[str, Any], receive_ns: int) -> None:
        state = self.states[symbol]
        if state.last_update_id is not None and int(book["nonce"]) <= state.last_update_id:
            return  # nothing new (a re-sync's snapshot can lag the last streamed update)
        row = book_row(symbol, book, self.depth, receive_ns)
        if row is None:
            return  # a side thinner than depth: wait for a full book
        syncs = self.exchange.book_syncs[symbol]
        # last_update_id and last_receive_ns are set together (below), so both or neither are None.
        if state.last_receive_ns is not None and state.last_update_id is not None and syncs != state.syncs_seen:
            gap = Gap(
                symbol,
                state.last_receive_ns,
                receive_ns,
                state.last_update_id,
                row.update_id,
                state.lost_because or "connection lost",
            )
            self.stats.gaps.append(gap)
            self.writer.add_gap(gap)
        state.syncs_seen, state.lost_because = syncs, None
        state.last_update_id, state.last_receive_ns = row.update_id, receive_ns
        self._write(self.sampler.offer(row))

    def _write(self, rows: list[BookRow]) -> None:
        self.writer.add(rows)
        self.stats.books.update(row.symbol for row in rows)

    async def _flush_in_background(self) -> None:
        """Publish in a worker thread: the event loop goes on receiving (and time-stamping) books."""
        now_ns = time.time_ns()
        self._write(self.sampler.release(now_ns))
        batch = self.writer.take()

        def write_batch() -> None:
            for publication in batch:
                publication.write()

        self._writing = asyncio.ensure_future(asyncio.to_thread(write_batch))
        try:
            await asyncio.shield(self._writing)  # a cancelled flush still lets its thread finish
        except BaseException:
            self.writer.restore(batch)
            raise
        self.writer.commit(batch, now_ns)
        self._update_stats()

    def _flush_here(self) -> None:
        now_ns = time.time_ns()
        self._write(self.sampler.release(now_ns))
        self.writer.flush(now_ns)
        self._update_stats()

    def _update_stats(self) -> None:
        self.stats.bytes_published, self.stats.files = self.writer.bytes_published, len(self.writer.sizes)
        self.stats.reconnects = self.exchange.reconnects

    def _status(self) -> None:
        if self.report is not None:
            self.report(self.stats.status_line())

    @staticmethod
    async def _sleep(stop: asyncio.Event, seconds: float) -> None:
        """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0.001))
