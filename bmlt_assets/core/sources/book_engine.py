"""The one book engine behind every L2 source: apply level changes, emit top-N books, compiled.

Every source turns its input into the same two arrays, in bounded batches: **level rows**
(``is_bid``, ``price``, ``quantity``) and **operations** over contiguous runs of them (a snapshot
that replaces the book, or an update that changes it, with its receive time, exchange time and
update id). ``bmlt import``'s binance-ws recordings get their operations from Binance's sync
rules (``binance.sync``); tardis ``incremental_book_L2`` files from their row groups
(``tardis``). :class:`BookEngine` applies them to one symbol's book in a numba loop
(``book_kernels``, imported when the first engine is made).

The book. Each side is a sorted list of blocks of at most :data:`BLOCK` levels (a B-tree of
one level, as ``sortedcontainers`` keeps its lists), keyed by price for bids and minus the price
for asks, so the best level of each side is the last of its last block. A change finds its block
by a binary search over the blocks' first keys, then its level by a binary search in the block;
a new or removed level shifts at most one block. A flat sorted array shifted on average about
1,000 levels a change on a USD-M book (changes reach far from the top: 78 % of them add or remove
a level, a median 440 levels from the best), which made the engine 8x parsing; the blocks make it
about one block. Nothing is sorted per update: a snapshot's levels are sorted once when it is
applied, and an update's top ``levels`` are read straight off the ends of the sides. Prices are
compared as the floats the input parses to, as the old engine's dict keys were: no tick size is
assumed.

Semantics, kept from the engine this replaced (``tests/reference_books.py``): an update's level
of quantity 0 removes the price, any other quantity sets it; the rows of a snapshot are applied
in order in the same way, from an empty book (so a snapshot row of quantity 0 after one of the
same price removes it, which the old engine, keeping only positive rows, did not); after each
update the book is emitted when both sides hold at least ``levels`` levels, and the deepest
side count of any shallower book is kept for the error message. With ``every_ns``, only the
last emitted book of each run of updates in the same ``receive_ns // every_ns`` interval is
kept, as the cadence grid samples it; 0 keeps every one.

Memory is the book (16 bytes a level, in blocks at least half full, grown by doubling) plus one
batch of input and the output held so far: one book a cadence step, or with a ``sink`` (``bmlt
import``) the books of one output batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from bmlt_assets.core.book import snapshot_frame, snapshot_schema
from bmlt_assets.core.sources.book_layout import (
    APPLIED,
    ASK,
    BID,
    BLOCK,
    CROSSED,
    DEEPEST,
    DONE,
    EMITTED,
    END,
    FIRST_NS,
    FREE,
    GROW_BOOK,
    LAST_NS,
    NO_TIME,
    OUT_ROWS,
    START,
    STATS,
)


@dataclass
class EngineStats:
    """What one book's engine saw: updates applied, books emitted (before cadence sampling) and
    crossed among them, the first and last emitted receive times, and the deepest book too
    shallow to emit (the shorter side's level count)."""

    applied: int
    emitted: int
    crossed: int
    first_receive_ns: int | None
    last_receive_ns: int | None
    deepest: int


BookSink = Callable[[pl.DataFrame], None]


class BookEngine:
    """One symbol's book, fed batches of level rows and operations; collects the emitted books, or
    hands them to ``sink`` a batch at a time (so that a caller writing them holds none)."""

    def __init__(self, symbol: str, levels: int, every_ms: int = 0, out_rows: int = 8192, sink: BookSink | None = None):
        if levels < 1:
            raise ValueError(f"levels must be at least 1 per side, got {levels}")
        # Imported here, not with this module: numba takes 0.15-0.25 s to import, which every load of
        # the code location would pay although most runs never rebuild a book.
        from bmlt_assets.core.sources.book_kernels import run

        self._kernel = run
        self.symbol, self.levels, self.every_ns = symbol, levels, every_ms * 1_000_000
        self._allocate(64)
        self.stats = np.zeros(STATS, dtype=np.int64)
        self.stats[FIRST_NS] = self.stats[LAST_NS] = NO_TIME
        self.out_books = np.empty((out_rows, 4, levels))
        self.out_meta = np.empty((out_rows, 3), dtype=np.int64)
        self.frames: list[pl.DataFrame] = []
        self.sink = sink

    def apply(self, is_bid: np.ndarray, prices: np.ndarray, quantities: np.ndarray, operations: np.ndarray) -> None:
        """Apply ``operations`` (rows of KIND, START, END, RECEIVE_NS, EXCHANGE_NS, UPDATE_ID) over
        the level rows; the snapshot and update rows of an operation are contiguous."""
        index = 0
        while True:
            status, index = self._kernel(
                self.keys,
                self.quantities,
                self.counts,
                self.order,
                self.firsts,
                self.free,
                self.meta,
                is_bid,
                prices,
                quantities,
                operations,
                index,
                self.levels,
                self.every_ns,
                self.out_books,
                self.out_meta,
                self.stats,
            )
            if status == DONE:
                return
            if status == GROW_BOOK:
                rows = int(operations[index, END] - operations[index, START])
                self._grow(max(2 * self.keys.shape[1], self.keys.shape[1] + rows, 2 * rows // BLOCK + 2))
            else:
                self._drain(keep_last=True)

    def _allocate(self, slots: int) -> None:
        self.keys = np.empty((2, slots, BLOCK))
        self.quantities = np.empty((2, slots, BLOCK))
        self.counts = np.zeros((2, slots), dtype=np.int64)
        self.order = np.zeros((2, slots), dtype=np.int64)
        self.firsts = np.empty((2, slots))
        self.free = np.empty((2, slots), dtype=np.int64)
        self.free[:] = np.arange(slots - 1, -1, -1)  # popped from the end: slot 0 first
        self.meta = np.zeros((2, 3), dtype=np.int64)
        self.meta[:, FREE] = slots

    def _grow(self, slots: int) -> None:
        """More block slots; the blocks in use keep theirs, the new ones join the free stacks."""
        old = (self.keys, self.quantities, self.counts, self.order, self.firsts, self.free, self.meta.copy())
        held = old[0].shape[1]
        self._allocate(slots)
        for new, kept in zip((self.keys, self.quantities, self.counts, self.order, self.firsts), old[:5]):
            new[:, :held] = kept
        for side in (BID, ASK):
            free = old[6][side, FREE]
            added = np.arange(slots - 1, held - 1, -1)
            self.free[side, : len(added)] = added
            self.free[side, len(added) : len(added) + free] = old[5][side, :free]
            self.meta[side] = old[6][side]
            self.meta[side, FREE] = len(added) + free

    def _drain(self, keep_last: bool) -> None:
        """Move the emitted books into a frame; with a cadence the last one stays, as a later book
        of its interval replaces it."""
        rows = int(self.stats[OUT_ROWS])
        keep = 1 if keep_last and self.every_ns > 0 and rows else 0
        taken = rows - keep
        if taken:
            books, meta = self.out_books[:taken], self.out_meta[:taken]
            (self.sink or self.frames.append)(
                snapshot_frame(
                    exchange_ns=meta[:, 0],
                    receive_ns=meta[:, 1],
                    symbol=self.symbol,
                    update_id=meta[:, 2],
                    bid_px=books[:, 0],
                    bid_qty=books[:, 1],
                    ask_px=books[:, 2],
                    ask_qty=books[:, 3],
                )
            )
        if keep:
            self.out_books[0], self.out_meta[0] = self.out_books[taken], self.out_meta[taken]
        self.stats[OUT_ROWS] = keep

    def frame(self) -> pl.DataFrame:
        """Every book kept so far (and no longer held here); with a sink, the last ones go to it and
        the frame is empty."""
        self._drain(keep_last=False)
        frames, self.frames = self.frames, []
        if not frames:
            return pl.DataFrame(schema=snapshot_schema(self.levels))
        return pl.concat(frames, rechunk=False) if len(frames) > 1 else frames[0]

    def summary(self) -> EngineStats:
        s = self.stats
        first, last = (None if s[i] == NO_TIME else int(s[i]) for i in (FIRST_NS, LAST_NS))
        return EngineStats(int(s[APPLIED]), int(s[EMITTED]), int(s[CROSSED]), first, last, int(s[DEEPEST]))


def operations_array(rows: list[tuple[int, int, int, int, int, int]]) -> np.ndarray:
    """Operation tuples as the (n, 6) int64 array the engine reads."""
    return np.array(rows, dtype=np.int64).reshape(-1, 6)


@dataclass
class TimeSteps:
    """Where a file's receive times step back (a recorder's clock stepped, or files were joined out
    of order). Such a file is imported in its own order and warned about, never refused: the sync
    rules follow update ids, not clocks, so its books are right, but orderbook_snapshots orders
    books by receive time and quarantines those whose update id then goes backwards."""

    path: Path
    steps: int = 0
    line: int = 0  # of the first step back
    largest_ns: int = 0
    last_ns: int | None = None

    def see(self, receive_ns: int, line: int) -> None:
        if self.last_ns is not None and receive_ns < self.last_ns:
            self._step(self.last_ns - receive_ns, line)
        self.last_ns = receive_ns

    def see_many(self, receive_ns: np.ndarray, first_line: int) -> None:
        """The same for consecutive rows, the first of them on ``first_line``."""
        if not len(receive_ns):
            return
        before = np.r_[receive_ns[0] if self.last_ns is None else self.last_ns, receive_ns[:-1]]
        back = np.flatnonzero(receive_ns < before)
        if len(back):
            sizes = before[back] - receive_ns[back]
            self._step(int(sizes.max()), first_line + int(back[0]), len(back))
        self.last_ns = int(receive_ns[-1])

    def _step(self, size_ns: int, line: int, count: int = 1) -> None:
        self.line = self.line or line
        self.steps += count
        self.largest_ns = max(self.largest_ns, size_ns)

    def as_dict(self) -> dict[str, Any]:
        return {"file": str(self.path), "line": self.line, "steps": self.steps, "largest_s": self.largest_ns / 1e9}


def time_steps_warning(step: dict[str, Any]) -> str:
    """One line for a file whose receive times step back (``TimeSteps.as_dict``)."""
    return (
        f"{step['file']}:{step['line']}: receive time steps back {step['largest_s']:.3f} s here "
        f"({step['steps']} step(s) back in the file); the books keep the file's order, and orderbook_snapshots "
        "quarantines those whose update id goes backwards in time: check the recorder's clock (NTP), or "
        "split the file where it steps back"
    )
