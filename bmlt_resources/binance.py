"""Binance through ccxt: REST order-book snapshots with our own receive time.

* ``enableRateLimit`` keeps ccxt within Binance's request weights (depth: 5 up to limit 100,
  25 to 500, 50 to 1000, 250 to 5000, of 6,000 per minute per IP);
* network errors (``ccxt.NetworkError``: timeouts, exchange unavailable, HTTP 429 rate limits)
  are retried with exponential back-off and full jitter;
* HTTP 418 (``ccxt.DDoSProtection``: the IP is banned for ignoring 429s) stops at once, with
  what to do: retrying would extend the ban;
* an unknown symbol (``ccxt.BadSymbol``) is a config error that names the symbol.

The live path is ccxt.pro's ``watch_order_book`` (``stream_exchange``), which keeps each local
book in sync by Binance's rules; the recorder (``bmlt_assets.core.sources.binance.recorder``) drives it.

Public market data needs no key. Credentials, when a deployment needs them, come only from the
environment (``dg.EnvVar("BINANCE_API_KEY")`` / ``BINANCE_API_SECRET``) and are never logged.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any, Literal

import ccxt
import ccxt.pro
import dagster as dg
from pydantic import PrivateAttr

from bmlt_assets.core.config import EvaluationConfig
from bmlt_assets.core.sources.binance.errors import BinanceBanned

DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000, 5000)


def taker_fee_bps(market: Literal["spot", "usdm"]) -> float:
    """Binance's base-tier taker fee for a market type, from ccxt's fee schedule (the source of each
    market's ``taker`` field), in bps per side; no network needed."""
    if market == "spot":
        fee = ccxt.binance().fees["trading"]["taker"]
    else:
        fee = ccxt.binanceusdm().fees["linear"]["trading"]["taker"]
    return float(fee) * 1e4


def with_market_fee(evaluation: EvaluationConfig, market: Literal["spot", "usdm"]) -> EvaluationConfig:
    """The evaluation settings with ``fee_bps`` resolved: as configured, else the market's taker fee."""
    if evaluation.fee_bps is not None:
        return evaluation
    return evaluation.model_copy(update={"fee_bps": taker_fee_bps(market)})


def _with_status(cls: type[ccxt.Exchange]) -> type[ccxt.Exchange]:
    """The ccxt class, remembering each response's HTTP status: ccxt maps both 418 and 429 to
    subclasses of DDoSProtection (and Binance's body code -1003 to either), so the status is the
    reliable way to tell a ban from a rate limit."""

    class WithStatus(cls):
        last_status: int | None = None

        def on_rest_response(
            self, code, reason, url, method, response_headers, response_body, request_headers, request_body
        ):
            self.last_status = code
            return super().on_rest_response(
                code, reason, url, method, response_headers, response_body, request_headers, request_body
            )

    return WithStatus


def _with_stream_events(cls: type[ccxt.pro.Exchange]) -> type[ccxt.pro.Exchange]:
    """The ccxt.pro class with untrimmed books, counting what the recorder must report but ccxt
    does not surface: REST snapshots taken per symbol (every one after the first is a re-sync, so
    the updates in between were lost) and WebSocket connections opened (every one beyond the
    first per URL is a reconnect). A dropped connection is not always raised to the caller: ccxt rejects only the
    futures pending at that moment, then silently reconnects on the next watch call."""

    class WithStreamEvents(cls):
        def __init__(self, config: dict[str, Any]):
            super().__init__(config)
            self.book_syncs: Counter[str] = Counter()
            self.connections: Counter[str] = Counter()

        async def fetch_order_book_snapshot(self, client, message, subscription):
            self.book_syncs[subscription["symbol"]] += 1
            return await super().fetch_order_book_snapshot(client, message, subscription)

        def order_book(self, snapshot=None, depth=None):
            # ccxt.pro trims each stored book to its snapshot depth (watchOrderBookLimit, 1000) on
            # every watch call. Levels a price move pushes beyond that depth are forgotten and are
            # missing when the price returns: 3 of the shared recording's 3,449 books then differ
            # from Binance's in levels 16-20. Keep every level the snapshot and the diffs give.
            return super().order_book(snapshot or {}, None)

        def on_connected(self, client, message=None):
            self.connections[client.url] += 1
            return super().on_connected(client, message)

        @property
        def reconnects(self) -> int:
            return sum(count - 1 for count in self.connections.values())

    return WithStreamEvents


class BinanceResource(dg.ConfigurableResource):
    market: Literal["spot", "usdm"] = "spot"
    api_key: str | None = None
    api_secret: str | None = None
    max_retries: int = 5
    backoff_s: float = 1.0
    rest_url: str | None = None  # overrides ccxt's REST base URL of the market (see BinanceEndpoints)
    ws_url: str | None = None  # overrides ccxt's WebSocket base URL of the market

    _exchange: Any = PrivateAttr(default=None)

    @classmethod
    def for_config(cls, data: Any, **credentials: Any) -> BinanceResource:
        """The resource for a config's ``data`` section (market and endpoint overrides)."""
        return cls(market=data.market, rest_url=data.binance.rest_url, ws_url=data.binance.ws_url, **credentials)

    def _configure(self, cls: type) -> Any:
        options: dict[str, Any] = {
            "enableRateLimit": True,
            # Load only this market's instruments: one exchangeInfo request instead of three.
            "options": {"fetchMarkets": {"types": ["spot" if self.market == "spot" else "linear"]}},
        }
        if self.api_key and self.api_secret:
            options |= {"apiKey": self.api_key, "secret": self.api_secret}
        exchange = cls(options)
        api = exchange.urls["api"]
        if self.rest_url:
            api["public" if self.market == "spot" else "fapiPublic"] = self.rest_url.rstrip("/")
        if self.ws_url and "ws" in api:
            api["ws"]["spot" if self.market == "spot" else "linear"] = self.ws_url.rstrip("/")
        return exchange

    def exchange(self) -> ccxt.Exchange:
        """The synchronous REST client (one per resource)."""
        if self._exchange is None:
            self._exchange = self._configure(_with_status(ccxt.binance if self.market == "spot" else ccxt.binanceusdm))
        return self._exchange

    def stream_exchange(self) -> ccxt.pro.Exchange:
        """A fresh ccxt.pro client for live books; bound to the event loop that first uses it,
        so each recording session takes its own and closes it."""
        return self._configure(
            _with_stream_events(_with_status(ccxt.pro.binance if self.market == "spot" else ccxt.pro.binanceusdm))
        )

    def fetch_snapshot(self, symbol: str, limit: int = 100) -> dict[str, Any]:
        """One L2 snapshot: ccxt's order book plus ``receive_ns``, our clock when it arrived
        (spot books carry no exchange timestamp) and ``update_id`` (Binance's lastUpdateId)."""
        if limit not in DEPTH_LIMITS:
            raise ValueError(f"depth limit {limit} is not one Binance serves: {DEPTH_LIMITS}")
        exchange = self.exchange()
        for attempt in range(self.max_retries + 1):
            try:
                book = exchange.fetch_order_book(symbol, limit)
                return {**book, "receive_ns": time.time_ns(), "update_id": book["nonce"]}
            except ccxt.BadSymbol:
                raise ValueError(
                    f"data.symbols: {symbol!r} is not a Binance {self.market} market; "
                    "check the symbol (e.g. 'BTC/USDT')"
                ) from None
            except ccxt.NetworkError as error:
                if exchange.last_status == 418:
                    raise BinanceBanned(
                        f"Binance answered HTTP 418: this IP is banned for ignoring rate limits ({error}). "
                        "Stop all clients on this IP and wait for the ban to expire before retrying."
                    ) from None
                if attempt == self.max_retries:
                    raise
                # Exponential back-off with full jitter, so that parallel clients spread out.
                time.sleep(random.uniform(0, self.backoff_s * 2**attempt))
        raise AssertionError("unreachable")
