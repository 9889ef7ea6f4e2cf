"""L2 snapshot schema and validation: the contract between data sources and the pipeline.

One row is one order-book snapshot of one symbol: exchange time and our receive time (ns since
the epoch, UTC), the exchange's update id, and ``depth`` levels per side as fixed-size arrays
(bids best-first descending, asks best-first ascending).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.compute as pc
import pyarrow.parquet as pq

BOOK_SIDES = ("bid_px", "bid_qty", "ask_px", "ask_qty")
# Books validated at a time (validate_parts): a window of about this many bytes of levels, in order.
WINDOW_BYTES = 16 * 2**20
# Decoded Parquet row groups kept for the windows still to come; beyond it the least recently used
# go, and are read again if a later window needs them.
ROW_GROUP_CACHE_BYTES = 256 * 2**20
SnapshotPart = Path | pl.DataFrame  # a local Parquet file in the snapshot schema, or snapshots in memory


def snapshot_schema(depth: int) -> dict[str, pl.DataType]:
    levels = pl.Array(pl.Float64, depth)
    return {
        "exchange_ts": pl.Int64(),
        "receive_ts": pl.Int64(),
        "symbol": pl.String(),
        "update_id": pl.Int64(),
        **dict.fromkeys(BOOK_SIDES, levels),
    }


def snapshot_frame(
    *,
    exchange_ns: np.ndarray,
    receive_ns: np.ndarray,
    symbol: str,
    update_id: np.ndarray,
    bid_px: np.ndarray,
    bid_qty: np.ndarray,
    ask_px: np.ndarray,
    ask_qty: np.ndarray,
) -> pl.DataFrame:
    depth = bid_px.shape[1]
    schema = snapshot_schema(depth)
    return pl.DataFrame(
        {
            "exchange_ts": exchange_ns.astype(np.int64),
            "receive_ts": receive_ns.astype(np.int64),
            "symbol": np.full(len(receive_ns), symbol),
            "update_id": update_id.astype(np.int64),
            "bid_px": bid_px.astype(np.float64),
            "bid_qty": bid_qty.astype(np.float64),
            "ask_px": ask_px.astype(np.float64),
            "ask_qty": ask_qty.astype(np.float64),
        },
        schema=schema,
    )


def book_arrays(frame: pl.DataFrame) -> dict[str, np.ndarray]:
    """The four level columns as (rows, depth) float64 arrays."""
    return {side: frame[side].to_numpy() for side in BOOK_SIDES}


def trim_depth(frame: pl.DataFrame, depth: int) -> pl.DataFrame:
    """Keep the best ``depth`` levels of each side."""
    books = book_arrays(frame)
    held = books["bid_px"].shape[1] if frame.height else depth
    if held < depth:
        raise ValueError(f"the snapshots hold {held} levels per side but data.depth={depth}; lower data.depth")
    levels = pl.Array(pl.Float64, depth)
    return frame.with_columns([pl.Series(side, books[side][:, :depth], dtype=levels) for side in BOOK_SIDES])


def _row_problems(frame: pl.DataFrame) -> np.ndarray:
    """A reason per row ('' when the row is sound), checked in order of severity."""
    books = book_arrays(frame)
    bid_px, bid_qty, ask_px, ask_qty = (books[s] for s in BOOK_SIDES)
    reasons = np.full(frame.height, "", dtype=object)

    def flag(mask: np.ndarray | np.bool, reason: str) -> None:
        reasons[(reasons == "") & mask] = reason

    stacked = np.stack([bid_px, bid_qty, ask_px, ask_qty])
    flag(~np.isfinite(stacked).all(axis=(0, 2)), "non-finite price or quantity")
    flag((stacked <= 0).any(axis=(0, 2)), "non-positive price or quantity")
    flag((np.diff(bid_px, axis=1) >= 0).any(axis=1), "bid levels not strictly descending")
    flag((np.diff(ask_px, axis=1) <= 0).any(axis=1), "ask levels not strictly ascending")
    flag(bid_px[:, 0] >= ask_px[:, 0], "crossed or locked book (best bid >= best ask)")
    return reasons


def validate_snapshots(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split raw snapshots into clean rows and quarantined rows (with a ``reason`` column).

    Clean rows are sorted by (symbol, receive_ts) and de-duplicated on (symbol, update_id);
    a snapshot whose update id goes backwards in time is quarantined, never silently used.
    (``validate_parts`` in memory.)
    """
    clean: list[pl.DataFrame] = []
    quarantined: list[pl.DataFrame] = []
    validate_parts([frame], clean.append, quarantined.append)
    empty = frame.clear()
    return (
        pl.concat(clean) if clean else empty,
        pl.concat(quarantined) if quarantined else empty.with_columns(pl.lit("").alias("reason")),
    )


@dataclass(frozen=True)
class ValidatedRows:
    """What ``validate_parts`` kept (per symbol) and quarantined."""

    rows_per_symbol: dict[str, int]
    quarantined: int

    @property
    def rows(self) -> int:
        return sum(self.rows_per_symbol.values())


def validate_parts(
    parts: Sequence[SnapshotPart],
    keep: Callable[[pl.DataFrame], None],
    quarantine: Callable[[pl.DataFrame], None],
    symbols: Collection[str] | None = None,
    depth: int | None = None,
    window_bytes: int = WINDOW_BYTES,
) -> ValidatedRows:
    """The rows of ``parts`` (those of ``symbols``, trimmed to ``depth`` levels; None: all of them)
    validated as one frame, in bounded memory: sorted by (symbol, receive_ts, update_id), rows that
    tie in the order of the parts and of their rows; clean rows handed to ``keep`` and quarantined
    ones (with their ``reason``) to ``quarantine``, a window at a time, both in that order.

    Rules, in order of severity: a row problem of the book itself (``_row_problems``); a repeated
    (symbol, update_id), every occurrence after the first in that order; an update id below one
    already seen among the symbol's sound rows ("goes backwards").

    Memory: the sort runs on the index columns alone (symbol, receive_ts, update_id: about 40
    bytes a row with the order); the books are gathered a window of ``window_bytes`` at a time,
    reading the Parquet row groups that hold them (cached up to ``ROW_GROUP_CACHE_BYTES``). Files
    sorted in time, and files that overlap in time (two recorder hosts), are each read about once."""
    index = _SnapshotIndex(parts, symbols, depth)
    n = len(index.receive_ns)
    order = np.argsort(index.update_id, kind="stable")
    order = order[np.argsort(index.receive_ns[order], kind="stable")]
    order = order[np.argsort(index.rank[order], kind="stable")]
    rank, update_id = index.rank[order], index.update_id[order]
    # Every (symbol, update_id) after its first occurrence in the sorted order.
    by_id = np.argsort(update_id, kind="stable")
    by_id = by_id[np.argsort(rank[by_id], kind="stable")]
    same = (rank[by_id][1:] == rank[by_id][:-1]) & (update_id[by_id][1:] == update_id[by_id][:-1])
    repeated = np.zeros(n, dtype=bool)
    repeated[by_id[1:][same]] = True
    del by_id, same

    window = max(1, window_bytes // index.row_bytes)
    rows = _RowGroups(parts, index, order, window, depth)
    kept = np.zeros(len(index.names), dtype=np.int64)
    quarantined, last_rank, last_max = 0, -1, np.iinfo(np.int64).min
    for number, start in enumerate(range(0, n, window)):
        books = rows.gather(number, start, min(start + window, n))
        reasons = _row_problems(books)
        reasons[(reasons == "") & repeated[start : start + window]] = "duplicate update id"
        sound = np.flatnonzero(reasons == "")
        ids, ranks = update_id[start : start + window][sound], rank[start : start + window][sound]
        previous_max = np.empty_like(ids)
        runs = np.r_[0, np.flatnonzero(np.diff(ranks)) + 1, len(ids)]
        for lo, hi in zip(runs[:-1], runs[1:]):  # one run per symbol, in order: the running max carries on
            before = last_max if ranks[lo] == last_rank else np.iinfo(np.int64).min
            running = np.maximum.accumulate(np.r_[before, ids[lo:hi]])
            previous_max[lo:hi] = running[:-1]
            last_rank, last_max = int(ranks[lo]), int(running[-1])
        reasons[sound[ids < previous_max]] = "update id goes backwards"
        good = reasons == ""
        if good.any():
            keep(books.filter(pl.Series(good)))
            kept += np.bincount(rank[start : start + window][good], minlength=len(kept))
        if not good.all():
            bad = ~good
            quarantine(books.filter(pl.Series(bad)).with_columns(pl.Series("reason", reasons[bad], dtype=pl.String)))
            quarantined += int(bad.sum())
    per_symbol = {name: int(kept[r]) for r, name in enumerate(index.names) if kept[r]}
    return ValidatedRows(per_symbol, quarantined)


class _SnapshotIndex:
    """The sort keys of every row of the parts that is kept: part, row within it, the symbol's
    rank (symbols sorted by name, as polars sorts strings), receive_ts and update_id."""

    COLUMNS = ("symbol", "receive_ts", "update_id")

    def __init__(self, parts: Sequence[SnapshotPart], symbols: Collection[str] | None, depth: int | None):
        codes: dict[str, int] = {}
        blocks: list[tuple[np.ndarray, ...]] = []  # per batch: part, row, symbol code, receive_ts, update_id
        self.held: list[int] = []  # levels per side of each part
        for number, part in enumerate(parts):
            if isinstance(part, pl.DataFrame):
                held = part.schema["bid_px"].size  # type: ignore[attr-defined]
                batches = part.select(self.COLUMNS).to_arrow().to_batches()
            else:
                file = pq.ParquetFile(part, pre_buffer=False)
                held = file.schema_arrow.field("bid_px").type.list_size
                batches = file.iter_batches(batch_size=1 << 20, columns=list(self.COLUMNS))
            self.held.append(held)
            first = 0
            for batch in batches:
                symbol = pc.dictionary_encode(batch.column("symbol"))
                names = [str(name) for name in symbol.dictionary.to_pylist()]
                wanted = np.array([symbols is None or name in symbols for name in names], dtype=bool)
                lookup = np.array([codes.setdefault(name, len(codes)) if ok else -1 for name, ok in zip(names, wanted)])
                code = lookup[symbol.indices.to_numpy(zero_copy_only=False)] if len(names) else np.empty(0, int)
                rows = np.flatnonzero(code >= 0)
                if len(rows) and depth is not None and held < depth:
                    raise ValueError(
                        f"the snapshots hold {held} levels per side but data.depth={depth}; lower data.depth"
                    )
                blocks.append(
                    (
                        np.full(len(rows), number, dtype=np.int32),
                        first + rows,
                        code[rows].astype(np.int32),
                        batch.column("receive_ts").to_numpy()[rows],
                        batch.column("update_id").to_numpy()[rows],
                    )
                )
                first += batch.num_rows
        self.names = sorted(codes)
        rank_of_code = np.empty(len(codes), dtype=np.int32)
        rank_of_code[[codes[name] for name in self.names]] = np.arange(len(codes), dtype=np.int32)
        columns: list[np.ndarray] = (
            [np.concatenate(column) for column in zip(*blocks, strict=True)] if blocks else [np.empty(0, np.int64)] * 5
        )
        self.part, self.row, code, self.receive_ns, self.update_id = columns
        self.rank: np.ndarray = rank_of_code[code]
        levels = depth if depth is not None else max(self.held, default=0)
        self.row_bytes = 4 * 8 * max(levels, 1) + 48


class _RowGroups:
    """The books of the sorted rows, a window at a time: a frame part is gathered from directly, a
    file part from its decoded row groups, each kept until the last window that needs it (within
    ``ROW_GROUP_CACHE_BYTES``; beyond, the least recently used go and are read again if needed).
    Each part's books are trimmed to ``depth`` levels (None: as they are)."""

    def __init__(
        self, parts: Sequence[SnapshotPart], index: _SnapshotIndex, order: np.ndarray, window: int, depth: int | None
    ):
        self.parts, self.order, self.index, self.depth = parts, order, index, depth
        self.files: dict[int, pq.ParquetFile] = {}
        firsts = []  # per group: (part, row group, first row of the part in it)
        for number, part in enumerate(parts):
            if isinstance(part, pl.DataFrame):
                firsts.append((number, -1, 0))
                continue
            file = self.files[number] = pq.ParquetFile(part, pre_buffer=False)
            first = 0
            for group in range(file.num_row_groups):
                firsts.append((number, group, first))
                first += file.metadata.row_group(group).num_rows
        self.groups = np.array(firsts, dtype=np.int64).reshape(-1, 3)
        # Each row's group: the last group of its part that starts at or before it.
        key = self.groups[:, 0] * (1 << 40) + self.groups[:, 2]
        self.group = np.searchsorted(key, index.part.astype(np.int64) * (1 << 40) + index.row, side="right") - 1
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        self.last_window = np.full(len(self.groups), -1, dtype=np.int64)
        np.maximum.at(self.last_window, self.group, position // window)
        self.cache: OrderedDict[int, pl.DataFrame] = OrderedDict()
        self.cached_bytes = 0

    def gather(self, number: int, start: int, end: int) -> pl.DataFrame:
        """The books of sorted rows ``start:end`` (window ``number``), in that order."""
        rows = self.order[start:end]
        group = self.group[rows]
        pieces, places = [], []
        for key in np.unique(group):
            at = np.flatnonzero(group == key)
            local = self.index.row[rows[at]] - self.groups[key, 2]
            books = self._group(int(key))[local]
            pieces.append(books if self.depth is None else trim_depth(books, self.depth))
            places.append(at)
        books = pl.concat(pieces) if len(pieces) > 1 else pieces[0]
        books = books[np.argsort(np.concatenate(places), kind="stable")] if len(pieces) > 1 else books
        for key in [key for key in self.cache if self.last_window[key] <= number]:
            self.cached_bytes -= int(self.cache.pop(key).estimated_size())
        return books

    def _group(self, key: int) -> pl.DataFrame:
        number, group, _ = (int(v) for v in self.groups[key])
        part = self.parts[number]
        if isinstance(part, pl.DataFrame):
            return part.select(list(snapshot_schema(1)))
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        table = self.files[number].read_row_group(group, columns=list(snapshot_schema(1)))
        books = pl.from_arrow(table)
        assert isinstance(books, pl.DataFrame)
        self.cache[key] = books
        self.cached_bytes += int(books.estimated_size())
        while self.cached_bytes > ROW_GROUP_CACHE_BYTES and len(self.cache) > 1:
            self.cached_bytes -= int(self.cache.popitem(last=False)[1].estimated_size())
        return books
