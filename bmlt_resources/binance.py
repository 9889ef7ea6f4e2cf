"""Binance through ccxt: REST order-book snapshots with our own receive time.

* ``enableRateLimit`` keeps ccxt within Binance's request weights (depth: 5 up to limit 100,
  25 to 500, 50 to 1000, 250 to 5000, of 6,000 per minute per IP);
* network errors (``ccxt.NetworkError``: timeouts, exchange unavailable, HTTP 429 rate limits)
  are retried with exponential back-off and full jitter;
* HTTP 418 (``ccxt.DDoSProtection``: the IP is banned for ignoring 429s) stops at once, with
  what to do: retrying would extend the ban;
* an unknown symbol (``ccxt.BadSymbol``) is a config error that names the symbol.

Public market data needs no key. Credentials, when a deployment needs them, come only from the
environment (``dg.EnvVar("BINANCE_API_KEY")`` / ``BINANCE_API_SECRET``) and are never logged.
"""

from __future__ import annotations

import random
import time
from typing import Any, Literal

import ccxt
import dagster as dg
from pydantic import PrivateAttr

DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000, 5000)


class BinanceBanned(RuntimeError):
    """HTTP 418: Binance banned this IP for ignoring rate limits."""


def _with_status(cls: type[ccxt.Exchange]) -> type[ccxt.Exchange]:
    """The ccxt class, remembering each response's HTTP status: ccxt maps both 418 and 429 to
    subclasses of DDoSProtection (and Binance's body code -1003 to either), so the status is the
    reliable way to tell a ban from a rate limit."""

    class WithStatus(cls):
        last_status: int | None = None

        def on_rest_response(self, code, reason, url, method, response_headers, response_body, request_headers, request_body):
            self.last_status = code
            return super().on_rest_response(code, reason, url, method, response_headers, response_body, request_headers, request_body)

    return WithStatus


class BinanceResource(dg.ConfigurableResource):
    market: Literal["spot", "usdm"] = "spot"
    api_key: str | None = None
    api_secret: str | None = None
    max_retries: int = 5
    backoff_s: float = 1.0

    _exchange: Any = PrivateAttr(default=None)

    def exchange(self) -> ccxt.Exchange:
        if self._exchange is None:
            cls = _with_status(ccxt.binance if self.market == "spot" else ccxt.binanceusdm)
            options: dict[str, Any] = {"enableRateLimit": True}
            if self.api_key and self.api_secret:
                options |= {"apiKey": self.api_key, "secret": self.api_secret}
            self._exchange = cls(options)
        return self._exchange

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
                raise ValueError(f"data.symbols: {symbol!r} is not a Binance {self.market} market; check the symbol (e.g. 'BTC/USDT')") from None
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
