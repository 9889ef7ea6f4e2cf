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
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BOOK_SIDES = ("bid_px", "bid_qty", "ask_px", "ask_qty")
# Books validated at a time (validate_parts): a window of about this many bytes of levels, in order.
WINDOW_BYTES = 4 * 2**20
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
    window_bytes: int | None = None,
) -> ValidatedRows:
    """The rows of ``parts`` (those of ``symbols``, trimmed to ``depth`` levels; None: all of them)
    validated as one frame, in bounded memory: sorted by (symbol, receive_ts, update_id), rows that
    tie in the order of the parts and of their rows; clean rows handed to ``keep`` and quarantined
    ones (with their ``reason``) to ``quarantine``, a window at a time, both in that order.

    Rules, in order of severity: a row problem of the book itself (``_row_problems``); a repeated
    (symbol, update_id), every occurrence after the first in that order; an update id below one
    already seen among the symbol's sound rows ("goes backwards").

    Memory: the sort runs on the index columns alone (symbol, receive_ts, update_id: about 40
    bytes a row with the order); the books are gathered a window of ``window_bytes`` (default
    :data:`WINDOW_BYTES`) at a time,
    reading the Parquet row groups that hold them (cached up to ``ROW_GROUP_CACHE_BYTES``). Files
    sorted in time, and files that overlap in time (two recorder hosts), are each read about once."""
    index = _SortedIndex(parts, symbols, depth)
    rank, update_id, n = index.rank, index.update_id, len(index.rank)
    window = max(1, (window_bytes or WINDOW_BYTES) // index.row_bytes)
    rows = _RowGroups(parts, index, window, depth)
    kept = np.zeros(len(index.names), dtype=np.int64)
    quarantined, last_rank, last_max = 0, -1, np.iinfo(np.int64).min
    for number, start in enumerate(range(0, n, window)):
        end = min(start + window, n)
        books = rows.gather(number, start, end)
        reasons = _row_problems(books)
        reasons[(reasons == "") & index.repeated[start:end]] = "duplicate update id"
        sound = np.flatnonzero(reasons == "")
        ids, ranks = update_id[start:end][sound], rank[start:end][sound]
        previous_max = np.empty_like(ids)
        starts = np.flatnonzero(np.diff(ranks, prepend=-1))  # ranks are >= 0
        for lo, hi in zip(starts, np.r_[starts[1:], len(ids)]):  # a run per symbol, in order: the max carries on
            before = last_max if ranks[lo] == last_rank else np.iinfo(np.int64).min
            running = np.maximum.accumulate(np.r_[before, ids[lo:hi]])
            previous_max[lo:hi] = running[:-1]
            last_rank, last_max = int(ranks[lo]), int(running[-1])
        reasons[sound[ids < previous_max]] = "update id goes backwards"
        good = reasons == ""
        if good.any():
            keep(books.filter(pl.Series(good)))
            kept += np.bincount(rank[start:end][good], minlength=len(kept))
        if not good.all():
            bad = ~good
            quarantine(books.filter(pl.Series(bad)).with_columns(pl.Series("reason", reasons[bad], dtype=pl.String)))
            quarantined += int(bad.sum())
    per_symbol = {name: int(kept[r]) for r, name in enumerate(index.names) if kept[r]}
    return ValidatedRows(per_symbol, quarantined)


class _SortedIndex:
    """The kept rows of the parts in the validation's order, by their index columns alone. A row is
    numbered across the parts (part ``p``'s row ``r`` is ``offsets[p] + r``); ``row``, ``rank``
    (of the symbol, symbols sorted by name as polars sorts strings), ``update_id`` and
    ``repeated`` (a (symbol, update_id) seen before in this order) are given in sorted order.
    Rows of other symbols rank last and are cut off. About 21 bytes a row are kept, 50 while sorting."""

    COLUMNS = ("symbol", "receive_ts", "update_id")

    def __init__(self, parts: Sequence[SnapshotPart], symbols: Collection[str] | None, depth: int | None):
        sizes = [part.height if isinstance(part, pl.DataFrame) else pq.read_metadata(part).num_rows for part in parts]
        self.offsets = np.r_[0, np.cumsum(sizes, dtype=np.int64)]
        code = np.empty(self.offsets[-1], dtype=np.int32)
        receive_ns, update_id = (np.empty(self.offsets[-1], dtype=np.int64) for _ in range(2))
        codes: dict[str, int] = {}
        held = []  # levels per side of each part
        for number, part in enumerate(parts):
            if isinstance(part, pl.DataFrame):
                held.append(part.schema["bid_px"].size)  # type: ignore[attr-defined]
                batches = part.select(self.COLUMNS).to_arrow().to_batches()
            else:
                file = pq.ParquetFile(part, pre_buffer=False, read_dictionary=["symbol"])
                held.append(file.schema_arrow.field("bid_px").type.list_size)
                batches = file.iter_batches(batch_size=1 << 18, columns=list(self.COLUMNS))
            at = int(self.offsets[number])
            for batch in batches:
                symbol = batch.column("symbol")
                symbol = symbol if pa.types.is_dictionary(symbol.type) else pc.dictionary_encode(symbol)
                names = [str(name) for name in symbol.dictionary.to_pylist()]
                lookup = np.array(
                    [codes.setdefault(name, len(codes)) if symbols is None or name in symbols else -1 for name in names]
                )
                batch_code = lookup[symbol.indices.to_numpy(zero_copy_only=False)] if names else np.empty(0, np.int32)
                if depth is not None and held[-1] < depth and (batch_code >= 0).any():
                    raise ValueError(
                        f"the snapshots hold {held[-1]} levels per side but data.depth={depth}; lower data.depth"
                    )
                code[at : at + batch.num_rows] = batch_code
                receive_ns[at : at + batch.num_rows] = batch.column("receive_ts").to_numpy()
                update_id[at : at + batch.num_rows] = batch.column("update_id").to_numpy()
                at += batch.num_rows
        self.names = sorted(codes)
        rank_of_code = np.full(len(codes) + 1, len(codes), dtype=np.int32)  # code -1: other symbols, last
        rank_of_code[[codes[name] for name in self.names]] = np.arange(len(codes), dtype=np.int32)
        rank = rank_of_code[code]
        del code
        kept = int((rank < len(codes)).sum())
        order = np.lexsort((update_id, receive_ns, rank))[:kept]  # stable: ties keep the parts' order
        del receive_ns
        self.row, self.rank, self.update_id = order, rank[order], update_id[order]
        del rank, update_id
        by_id = np.lexsort((self.update_id, self.rank))  # stable: the first occurrence comes first
        same = (np.diff(self.rank[by_id]) == 0) & (np.diff(self.update_id[by_id]) == 0)
        self.repeated = np.zeros(kept, dtype=bool)
        self.repeated[by_id[1:][same]] = True
        levels = depth if depth is not None else max(held, default=0)
        self.row_bytes = 4 * 8 * max(levels, 1) + 48  # of a gathered book, its time, symbol and id columns


class _RowGroups:
    """The books of the sorted rows, a window at a time: a frame part is gathered from directly, a
    file part from its decoded row groups, each kept until the last window that needs it (within
    ``ROW_GROUP_CACHE_BYTES``; beyond, the least recently used go and are read again if needed).
    Each part's books are trimmed to ``depth`` levels (None: as they are)."""

    def __init__(self, parts: Sequence[SnapshotPart], index: _SortedIndex, window: int, depth: int | None):
        self.parts, self.index, self.depth = parts, index, depth
        self.files: dict[int, pq.ParquetFile] = {}
        groups = []  # (part, row group or -1 for a frame, its first row across the parts)
        for number, part in enumerate(parts):
            if isinstance(part, pl.DataFrame):
                groups.append((number, -1, int(index.offsets[number])))
                continue
            file = self.files[number] = pq.ParquetFile(part, pre_buffer=False)
            first = int(index.offsets[number])
            for group in range(file.num_row_groups):
                groups.append((number, group, first))
                first += file.metadata.row_group(group).num_rows
        self.groups = np.array(groups, dtype=np.int64).reshape(-1, 3)
        # Each sorted row's group: the last one starting at or before it (empty groups never hold one).
        self.group = (np.searchsorted(self.groups[:, 2], index.row, side="right") - 1).astype(np.int32)
        self.last_window = np.full(len(self.groups), -1, dtype=np.int64)
        np.maximum.at(self.last_window, self.group, np.arange(len(index.row)) // window)
        self.cache: OrderedDict[int, pl.DataFrame] = OrderedDict()
        self.cached_bytes = 0

    def gather(self, number: int, start: int, end: int) -> pl.DataFrame:
        """The books of sorted rows ``start:end`` (window ``number``), in that order."""
        group = self.group[start:end]
        pieces, places = [], []
        for key in np.unique(group):
            at = np.flatnonzero(group == key)
            local = self.index.row[start:end][at] - self.groups[key, 2]
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
