"""A local Binance stand-in that replays a raw recording to ccxt.pro, with injectable faults.

It speaks the two endpoints the recorder uses, on 127.0.0.1:

* ``/stream/ws/{n}``: Binance's raw WebSocket stream. It answers ``SUBSCRIBE`` like Binance
  (``{"result": null, "id": ...}``) and then sends the recording's depth updates in order. The
  path keeps ``/stream`` because ccxt tells spot from futures connections by it.
* ``/api/v3/depth`` and ``/api/v3/exchangeInfo``: the REST snapshot, taken from the server's own
  book at the last update it sent (as Binance's would be), and a one-market exchange info.

The server's book is an independent rebuild (plain dicts, prices as strings) starting from the
recording's REST snapshot; ``truth[u]`` is its top of book after update ``u``, what every
recorded book must equal. Faults: ``depth_status`` answers the REST snapshot with that HTTP
status (418: an IP ban); ``skip`` drops updates from the stream (the server's book still
applies them, so the client sees a sequence gap) and ``disconnect_after`` closes the connection
after sending those updates; the next connection resumes where the stream left off.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

EXCHANGE_INFO = {
    "timezone": "UTC",
    "serverTime": 1723161600000,
    "rateLimits": [],
    "exchangeFilters": [],
    "symbols": [
        {
            "symbol": "BTCUSDT",
            "status": "TRADING",
            "baseAsset": "BTC",
            "baseAssetPrecision": 8,
            "quoteAsset": "USDT",
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "MARKET"],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": True,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": "0.01000000",
                    "maxPrice": "1000000.00000000",
                    "tickSize": "0.01000000",
                },
                {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
            ],
            "permissions": [],
            "permissionSets": [["SPOT", "MARGIN"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }
    ],
}


def _top(side: dict[str, str], levels: int, descending: bool) -> list[tuple[float, float]]:
    prices = sorted(side, key=float, reverse=descending)[:levels]
    return [(float(p), float(side[p])) for p in prices]


class ReplayServer:
    def __init__(
        self,
        recording: Path,
        *,
        levels: int = 20,
        rate: float | None = None,
        repeat: int = 1,
        skip: tuple[int, ...] = (),
        disconnect_after: tuple[int, ...] = (),
        keep_truth: bool = True,
        depth_status: int = 200,
    ):
        with gzip.open(recording, "rt") as lines:
            messages = [json.loads(line.split(" ", 1)[1]) for line in lines]
        snapshot = next(m for m in messages if "lastUpdateId" in m)
        self.bids = dict(snapshot["bids"])
        self.asks = dict(snapshot["asks"])
        self.position = snapshot["lastUpdateId"]
        once = [
            m["data"]
            for m in messages
            if m.get("data", {}).get("e") == "depthUpdate" and m["data"]["u"] > self.position
        ]
        # Longer streams for benchmarks: the same diffs again, ids and times shifted to chain on.
        ids, millis = once[-1]["u"] - self.position, once[-1]["E"] - once[0]["E"] + 100
        self.updates = [
            {**u, "U": u["U"] + k * ids, "u": u["u"] + k * ids, "E": u["E"] + k * millis}
            for k in range(repeat)
            for u in once
        ]
        for k in range(1, repeat):  # the first diff straddles the snapshot; in a repeat it must chain
            self.updates[k * len(once)]["U"] = self.updates[k * len(once) - 1]["u"] + 1
        self.levels, self.rate, self.keep_truth, self.depth_status = levels, rate, keep_truth, depth_status
        self.skip, self.disconnect_after = set(skip), set(disconnect_after)
        self.sent = 0  # index of the next update to stream
        self.connections = 0
        self.truth: dict[int, tuple[list, list]] = {}
        self.finished = asyncio.Event()
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    # --- the independent book ---------------------------------------------------------------
    def _apply(self, update: dict[str, Any]) -> None:
        for side, changes in ((self.bids, update["b"]), (self.asks, update["a"])):
            for price, quantity in changes:
                if float(quantity) == 0:
                    side.pop(price, None)
                else:
                    side[price] = quantity
        self.position = update["u"]
        if self.keep_truth:
            self.truth[self.position] = (_top(self.bids, self.levels, True), _top(self.asks, self.levels, False))

    # --- endpoints ---------------------------------------------------------------------------
    async def _depth(self, request: web.Request) -> web.Response:
        if self.depth_status != 200:  # e.g. 418: this IP is banned
            return web.json_response(
                {"code": -1003, "msg": "Way too many requests; IP banned"}, status=self.depth_status
            )
        limit = int(request.query.get("limit", 100))
        return web.json_response(
            {
                "lastUpdateId": self.position,
                "bids": [[p, self.bids[p]] for p in sorted(self.bids, key=float, reverse=True)[:limit]],
                "asks": [[p, self.asks[p]] for p in sorted(self.asks, key=float)[:limit]],
            }
        )

    async def _exchange_info(self, request: web.Request) -> web.Response:
        return web.json_response(EXCHANGE_INFO)

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self.connections += 1
        sender: asyncio.Task | None = None
        async for message in socket:
            if message.type != WSMsgType.TEXT:
                continue
            command = json.loads(message.data)
            await socket.send_json({"result": None, "id": command["id"]})
            if sender is None:
                sender = asyncio.create_task(self._send_updates(socket))
        if sender is not None:
            sender.cancel()
        return socket

    async def _send_updates(self, socket: web.WebSocketResponse) -> None:
        while self.sent < len(self.updates):
            index, update = self.sent, self.updates[self.sent]
            self.sent += 1
            self._apply(update)
            if index not in self.skip:
                await socket.send_str(json.dumps(update))
            if index in self.disconnect_after:
                await socket.close()
                return
            await asyncio.sleep(1 / self.rate if self.rate else 0)
        self.finished.set()

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> ReplayServer:
        app = web.Application()
        app.router.add_get("/stream/ws/{stream}", self._stream)
        app.router.add_get("/api/v3/depth", self._depth)
        app.router.add_get("/api/v3/exchangeInfo", self._exchange_info)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stream/ws"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v3"


class ThreadedReplayServer:
    """The server on its own event loop in a background thread, for a recorder in another process."""

    def __init__(self, recording: Path, **options: Any):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

        async def create() -> ReplayServer:
            return await ReplayServer(recording, **options).start()

        self.server = asyncio.run_coroutine_threadsafe(create(), self.loop).result(timeout=60)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
