"""Real-size recordings tiled from the real spot recording (tests/data), written streamed.

A tile is one copy of the recording: its REST snapshot (the tile's leading snapshot rows), then
every depth update after it. Copy ``k`` is shifted by ``k`` tile periods in receive and exchange
time, so a file of any length is the recording played again and again; the last tile is cut at
the requested length.

* **spot** is the recording itself: 1,000 levels a side at the snapshot, about 360 level changes a
  second (about 31 M tardis rows a day; a real spot BTC/USDT day is about 29 M).
* **usdm** interleaves four copies of it at quarter-tick price offsets (+0, +0.0025, +0.005,
  +0.0075), the last two 50 ms later, so the book holds 4,000 levels a side at each snapshot and
  grows to about 5,000 bids and 8,800 asks, and each update carries about 72 level changes at 20
  updates a second: about 1,430 changes a second, 124 M tardis rows a day (a real USD-M BTC/USDT
  day: about 1,280 a second in about 19 updates of 68, 106 M rows, books of 1,000 to 5,000+
  levels a side). Between a pair's update and the other pair's, 50 ms later, the two halves of
  the book stand at different moments, and about 4 % of the books are crossed; the engine neither
  needs nor fixes uncrossed books, and orderbook_snapshots quarantines those.

Two forms of each:

* ``tardis``: an ``incremental_book_L2`` gzip CSV as the archive writes it: snapshot rows stamped
  with the snapshot's exchange time, the updates received before the REST answer folded into them
  (zero amounts included), numbers without trailing zeros.
* ``binance-ws``: ``<receive ns> <raw JSON>`` lines as ``bmlt record`` captures them. Spot replays
  the recording's own lines (trades and book tickers included); USD-M is written from the tardis
  form's updates, with ``U``/``u``/``pu`` ids, its REST snapshot after the tile's first update.
  Each tile's ids jump ahead, so the chain breaks at the tile's start and the tile's snapshot
  re-syncs the book (one recorded gap per tile), as a reconnecting recorder would.

Files are written through gzip a tile at a time: memory holds one tile, never the day.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import math
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import polars as pl

from bmlt_assets.core.sources.binance.sync import read_recording
from tests.helpers import real_recording

TILE_PERIOD_S = 347  # the recording spans 346.06 s of receive time
ID_JUMP = 10**9  # each tile's update ids start this far after the previous tile's: the chain breaks
USDM_COPIES = ((0.0, 0), (0.0025, 0), (0.005, 50), (0.0075, 50))  # (price offset, delay in ms)
DAY = dt.date(2024, 8, 9)  # the tiled files start at this day's midnight (UTC), the recording's own day
ROWS = ["timestamp", "local_timestamp", "is_snapshot", "side", "price", "amount"]
FIELD = re.compile(r'"(E|T|U|u|pu|lastUpdateId)":(\d+)')
TIME_FIELDS, ID_FIELDS = {"E", "T"}, {"U", "u", "pu", "lastUpdateId"}


def day_start_us(day: dt.date = DAY) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 10**6


@cache
def spot_stream() -> pl.DataFrame:
    """The recording as tardis rows from receive time 0: the folded snapshot run, then every later update."""
    messages = list(read_recording(real_recording()))
    snapshot_at, snapshot = next((t, m) for t, m in messages if "lastUpdateId" in m)
    last_id = int(snapshot["lastUpdateId"])
    events = [(t, m["data"]) for t, m in messages if m.get("data", {}).get("e") == "depthUpdate"]
    exchange_ms = max(int(e["E"]) for t, e in events if t <= snapshot_at)
    folded = {side: {float(p): float(q) for p, q in snapshot[key]} for side, key in (("bid", "bids"), ("ask", "asks"))}
    later = []
    for receive_ns, event in events:
        if int(event["u"]) <= last_id:
            continue
        if receive_ns <= snapshot_at:  # buffered before the REST answer: folded in, zero amounts kept
            exchange_ms = int(event["E"])
            for side, key in (("bid", "b"), ("ask", "a")):
                folded[side] |= {float(p): float(q) for p, q in event[key]}
        else:
            later.append((receive_ns, event))
    start_ns = min(t for t, _ in messages)
    snapshot_us = (snapshot_at - start_ns) // 1000
    rows = [
        (exchange_ms * 1000, snapshot_us, True, side, p, q) for side in ("bid", "ask") for p, q in folded[side].items()
    ]
    for receive_ns, event in later:
        stamps = (int(event["E"]) * 1000, (receive_ns - start_ns) // 1000, False)
        rows += [
            (*stamps, side, float(p), float(q)) for side, key in (("bid", "b"), ("ask", "a")) for p, q in event[key]
        ]
    frame = pl.DataFrame(rows, schema=ROWS, orient="row")
    # Exchange times relative to the first receive time, like the receive times.
    return frame.with_columns(pl.col("timestamp") - start_ns // 1000)


@cache
def usdm_stream() -> pl.DataFrame:
    """Four spot copies interleaved at quarter-tick offsets: a book four times as deep and busy."""
    spot = spot_stream()
    copies = [
        spot.with_columns(
            (pl.col("price") + offset).round(4),
            pl.col("timestamp", "local_timestamp") + pl.when(pl.col("is_snapshot")).then(0).otherwise(delay_ms * 1000),
        )
        for offset, delay_ms in USDM_COPIES
    ]
    snapshot = pl.concat([c.filter(pl.col("is_snapshot")) for c in copies])
    updates = pl.concat([c.filter(~pl.col("is_snapshot")) for c in copies]).sort("local_timestamp", maintain_order=True)
    return pl.concat([snapshot, updates])


def stream(market: str) -> pl.DataFrame:
    return spot_stream() if market == "spot" else usdm_stream()


def tiles(seconds: float) -> int:
    return math.ceil(seconds / TILE_PERIOD_S)


@dataclass(frozen=True)
class Written:
    path: Path
    rows: int  # CSV rows, or recording lines
    tiles: int


def _publish(path: Path, write) -> None:
    """Write through ``write(stream)`` into a temporary file renamed into place when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with gzip.open(partial, "wb", compresslevel=1) as out:
        write(out)
    os.replace(partial, path)


def write_tardis(path: Path, market: str, seconds: float) -> Written:
    """An ``incremental_book_L2`` file of ``seconds`` of tiles, starting at :data:`DAY`'s midnight."""
    base, limit_us = stream(market), round(seconds * 10**6)
    exchange = "binance" if market == "spot" else "binance-futures"
    count = 0

    def write(out: gzip.GzipFile) -> None:
        nonlocal count
        for k in range(tiles(seconds)):
            shift = k * TILE_PERIOD_S * 10**6
            tile = base.filter(pl.col("local_timestamp") + shift < limit_us).with_columns(
                pl.col("timestamp", "local_timestamp") + shift + day_start_us()
            )
            buffer = io.BytesIO()
            tile.select(pl.lit(exchange).alias("exchange"), pl.lit("BTCUSDT").alias("symbol"), pl.all()).write_csv(
                buffer, include_header=k == 0
            )
            out.write(buffer.getvalue())
            count += tile.height

    _publish(path, write)
    return Written(path, count, tiles(seconds))


def _template(line: str) -> tuple[str, list[tuple[str, int]]]:
    """A line as a format string with one slot per time or id field, and those fields' values."""
    fields: list[tuple[str, int]] = []

    def slot(match: re.Match) -> str:
        fields.append((match[1], int(match[2])))
        return f'"{match[1]}":{{}}'

    return FIELD.sub(slot, line.replace("{", "{{").replace("}", "}}")), fields


@cache
def _spot_lines() -> tuple[int, list[tuple[int, str, list[tuple[str, int]]]]]:
    """The recording's first receive time, and each line as (receive ns from it, template, fields)."""
    with gzip.open(real_recording(), "rt") as recording:
        lines = recording.read().splitlines()
    start = min(int(line.split(" ", 1)[0]) for line in lines)
    parsed = []
    for line in lines:
        stamp, payload = line.split(" ", 1)
        template, fields = _template(payload)
        parsed.append((int(stamp) - start, template, fields))
    return start, parsed


def _usdm_messages() -> list[tuple[int, int, str, str, int]]:
    """The USD-M stream's updates as (receive ns, exchange ms, bids JSON, asks JSON, changes)."""
    updates = usdm_stream().filter(~pl.col("is_snapshot"))
    grouped = updates.group_by(["local_timestamp", "timestamp"], maintain_order=True).agg(
        pl.col("price").filter(pl.col("side") == "bid").alias("bid_px"),
        pl.col("amount").filter(pl.col("side") == "bid").alias("bid_qty"),
        pl.col("price").filter(pl.col("side") == "ask").alias("ask_px"),
        pl.col("amount").filter(pl.col("side") == "ask").alias("ask_qty"),
    )

    def levels(prices: list[float], amounts: list[float]) -> str:
        return "[" + ",".join(f'["{p!r}","{q!r}"]' for p, q in zip(prices, amounts)) + "]"

    return [
        (
            r["local_timestamp"] * 1000,
            r["timestamp"] // 1000,
            levels(r["bid_px"], r["bid_qty"]),
            levels(r["ask_px"], r["ask_qty"]),
            len(r["bid_px"]) + len(r["ask_px"]),
        )
        for r in grouped.iter_rows(named=True)
    ]


@cache
def _usdm_snapshot_levels() -> str:
    """The USD-M stream's snapshot as a REST answer's ``bids`` and ``asks`` (best first, no zero amounts)."""
    snapshot = usdm_stream().filter(pl.col("is_snapshot") & (pl.col("amount") > 0))
    sides = {}
    for side, key in (("bid", "bids"), ("ask", "asks")):
        rows = snapshot.filter(pl.col("side") == side).sort("price", descending=side == "bid")
        sides[key] = ",".join(f'["{p!r}","{q!r}"]' for p, q in zip(rows["price"], rows["amount"]))
    return f'"bids":[{sides["bids"]}],"asks":[{sides["asks"]}]'


def write_binance_ws(path: Path, market: str, seconds: float) -> Written:
    """A ``<receive ns> <raw JSON>`` recording of ``seconds`` of tiles, starting at :data:`DAY`'s midnight."""
    limit_ns, start_ns = round(seconds * 10**9), day_start_us() * 1000
    count = 0

    def write_spot(out: gzip.GzipFile) -> None:
        nonlocal count
        _, lines = _spot_lines()
        recorded_start = _spot_lines()[0]
        for k in range(tiles(seconds)):
            shift_ns = k * TILE_PERIOD_S * 10**9
            # Exchange times keep their lead over receive times; ids jump by ID_JUMP per tile.
            time_ms = (start_ns - recorded_start + shift_ns) // 10**6
            chunk = []
            for offset_ns, template, fields in lines:
                if offset_ns + shift_ns >= limit_ns:
                    break
                values = [v + (time_ms if name in TIME_FIELDS else k * ID_JUMP) for name, v in fields]
                chunk.append(f"{start_ns + offset_ns + shift_ns} {template.format(*values)}\n")
            out.write("".join(chunk).encode())
            count += len(chunk)

    def write_usdm(out: gzip.GzipFile) -> None:
        nonlocal count
        messages = _usdm_messages()
        base = 10**9  # ids of the first tile: U of an update is the previous u + 1, u = U + changes - 1
        for k in range(tiles(seconds)):
            shift_ns = k * TILE_PERIOD_S * 10**9
            next_id, previous = base + k * ID_JUMP, base + k * ID_JUMP - 7  # pu of the tile's first update: no chain
            chunk = []
            for index, (receive_ns, exchange_ms, bids, asks, changes) in enumerate(messages):
                if receive_ns + shift_ns >= limit_ns:
                    break
                first, last = next_id, next_id + changes - 1
                stamp, e = start_ns + receive_ns + shift_ns, exchange_ms + (start_ns + shift_ns) // 10**6
                chunk.append(
                    f'{stamp} {{"stream":"btcusdt@depth@100ms","data":{{"e":"depthUpdate","E":{e},"T":{e},'
                    f'"s":"BTCUSDT","U":{first},"u":{last},"pu":{previous},"b":{bids},"a":{asks}}}}}\n'
                )
                if index == 0:  # the REST answer comes after the first buffered update: U <= lastUpdateId <= u
                    chunk.append(f'{stamp + 1} {{"lastUpdateId":{first},{_usdm_snapshot_levels()}}}\n')
                next_id, previous = last + 1, last
            out.write("".join(chunk).encode())
            count += len(chunk)

    _publish(path, write_spot if market == "spot" else write_usdm)
    return Written(path, count, tiles(seconds))


LENGTHS = {"warmup": 20, "1h": 3600, "2h": 7200, "24h": 86_400}


def tiled_file(folder: Path, form: str, market: str, length: str) -> Path:
    """The tiled file of ``form`` (tardis | binance-ws), ``market`` and ``length`` (1h | 2h | 24h, or
    '<n>tiles'), written when missing."""
    seconds = TILE_PERIOD_S * int(length.removesuffix("tiles")) if length.endswith("tiles") else LENGTHS[length]
    path = folder / f"{form}-{market}-{length}.{'csv.gz' if form == 'tardis' else 'gz'}"
    if not path.exists():
        (write_tardis if form == "tardis" else write_binance_ws)(path, market, seconds)
    return path
