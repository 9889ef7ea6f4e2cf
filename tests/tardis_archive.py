"""A loopback tardis.dev dataset archive, and fixture files built from the real spot recording.

Files are served at tardis's documented layout, ``/v1/{exchange}/{data_type}/{YYYY}/{MM}/{DD}/{SYMBOL}.csv.gz``
(gzip CSV). The fixtures convert the recording (tests/data/README.md) the way tardis normalizes
Binance: ``incremental_book_L2`` rows, its REST snapshot as ``is_snapshot`` rows followed by every
depth update after it, and ``book_snapshot_25`` rows of the books ``bmlt import`` rebuilds. A
second day is the same recording shifted by whole days. Faults: ``cut_next[path] = n`` sends the
next n answers for ``path`` cut at half their bytes, with no Content-Length (so the client cannot
tell); every request is recorded with its Authorization header.
"""

from __future__ import annotations

import gzip
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl

from bmlt_assets.core.sources.binance.sync import read_recording
from bmlt_assets.core.sources.importer import import_recordings
from bmlt_assets.core.sources.tardis import dataset_path

DAY_NS = 86_400 * 10**9
DAY_US = 86_400 * 10**6


def incremental_rows(recording: Path, shift_days: int = 0) -> pl.DataFrame:
    """The recording as tardis ``incremental_book_L2`` rows: snapshot rows, then every update after it."""
    messages = list(read_recording(recording))
    snapshot_at, snapshot = next((t, m) for t, m in messages if "lastUpdateId" in m)
    last_id = int(snapshot["lastUpdateId"])
    updates = [
        (t, m["data"])
        for t, m in messages
        if m.get("data", {}).get("e") == "depthUpdate" and int(m["data"]["u"]) > last_id
    ]
    shift = shift_days * DAY_US
    rows: list[tuple] = []
    start_us = min(snapshot_at, updates[0][0]) // 1000 + shift  # buffered updates come before the snapshot's receipt
    for side, levels in (("bid", snapshot["bids"]), ("ask", snapshot["asks"])):
        rows += [(start_us, start_us, True, side, float(p), float(q)) for p, q in levels]
    for receive_ns, event in updates:
        stamp, local = int(event["E"]) * 1000 + shift, receive_ns // 1000 + shift
        for side, key in (("bid", "b"), ("ask", "a")):
            rows += [(stamp, local, False, side, float(p), float(q)) for p, q in event[key]]
    frame = pl.DataFrame(
        rows, schema=["timestamp", "local_timestamp", "is_snapshot", "side", "price", "amount"], orient="row"
    )
    return frame.select(pl.lit("binance").alias("exchange"), pl.lit("BTCUSDT").alias("symbol"), pl.all())


def snapshot25_rows(recording: Path, shift_days: int = 0) -> pl.DataFrame:
    """The books ``bmlt import`` rebuilds at 25 levels, as tardis ``book_snapshot_25`` rows."""
    books, _ = import_recordings([recording], "binance-ws", "spot", 25)
    columns: dict[str, object] = {
        "exchange": "",
        "symbol": "",
        "timestamp": books["exchange_ts"].to_numpy() // 1000 + shift_days * DAY_US,
        "local_timestamp": books["receive_ts"].to_numpy() // 1000 + shift_days * DAY_US,
    }
    sides = {name: books[name].to_numpy() for name in ("bid_px", "bid_qty", "ask_px", "ask_qty")}
    for i in range(25):
        columns[f"asks[{i}].price"] = sides["ask_px"][:, i]
        columns[f"asks[{i}].amount"] = sides["ask_qty"][:, i]
        columns[f"bids[{i}].price"] = sides["bid_px"][:, i]
        columns[f"bids[{i}].amount"] = sides["bid_qty"][:, i]
    return pl.DataFrame(columns).with_columns(pl.lit("binance").alias("exchange"), pl.lit("BTCUSDT").alias("symbol"))


def gzip_csv(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_csv(buffer)
    return gzip.compress(buffer.getvalue())


class ArchiveServer:
    """Serves ``files`` (archive path -> bytes) under ``/v1/`` on 127.0.0.1."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_next: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization header)
        archive = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0].removeprefix("/v1/")
                archive.requests.append((path, self.headers.get("Authorization")))
                body = archive.files.get(path)
                if body is None:
                    self.send_error(404, "dataset not found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                if archive.cut_next.get(path):
                    archive.cut_next[path] -= 1
                    self.end_headers()  # no Content-Length: the closed connection ends the body
                    self.wfile.write(body[: len(body) // 2])
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, exchange: str, data_type: str, date, symbol_id: str, body: bytes) -> str:
        path = dataset_path(exchange, data_type, date, symbol_id)
        self.files[path] = body
        return path

    def fetched(self, path: str) -> int:
        return sum(1 for requested, _ in self.requests if requested == path)

    def __enter__(self) -> ArchiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
