"""BinanceResource on ccxt's real code path, offline: recorded raw Binance JSON is served to ccxt
through its HTTP session, so ccxt's own request building, status mapping and parsing all run."""

from __future__ import annotations

import gzip
import json

import pytest
import requests

from bmlt_assets.core.sources.binance.errors import BinanceBanned
from bmlt_resources.binance import BinanceResource
from tests.helpers import real_recording

MARKET = {
    "id": "BTCUSDT",
    "symbol": "BTC/USDT",
    "base": "BTC",
    "quote": "USDT",
    "baseId": "BTC",
    "quoteId": "USDT",
    "type": "spot",
    "spot": True,
    "margin": False,
    "swap": False,
    "future": False,
    "option": False,
    "contract": False,
    "linear": None,
    "inverse": None,
    "active": True,
    "precision": {"amount": 0.00001, "price": 0.01},
    "limits": {"amount": {"min": 0.00001, "max": 9000}, "price": {"min": 0.01, "max": 1000000}},
    "info": {},
}


class RecordedSession(requests.Session):
    """Answers each request with the next (status, body) and remembers the URLs asked for."""

    def __init__(self, answers: list[tuple[int, str]]):
        super().__init__()
        self.answers, self.urls = list(answers), []

    def request(self, method, url, **kwargs):
        self.urls.append(url)
        status, body = self.answers.pop(0)
        response = requests.Response()
        response.status_code, response._content, response.url = status, body.encode(), url
        response.reason = {200: "OK", 418: "I'm a teapot", 429: "Too Many Requests"}.get(status, "")
        return response


@pytest.fixture(scope="module")
def snapshot() -> str:
    """The recording's REST depth snapshot, byte for byte as Binance sent it."""
    return next(line.split(" ", 1)[1] for line in gzip.open(real_recording(), "rt") if "lastUpdateId" in line)


def _resource(answers: list[tuple[int, str]]) -> tuple[BinanceResource, RecordedSession]:
    resource = BinanceResource(backoff_s=0.001)
    exchange = resource.exchange()
    exchange.set_markets([MARKET])
    session = RecordedSession(answers)
    exchange.session = session
    exchange.enableRateLimit = False  # the recorded answers need no pacing
    return resource, session


def test_a_recorded_depth_snapshot_goes_through_ccxt_parsing(snapshot: str) -> None:
    resource, session = _resource([(200, snapshot)])
    book = resource.fetch_snapshot("BTC/USDT", limit=1000)
    raw = json.loads(snapshot)
    assert "api/v3/depth" in session.urls[0] and "symbol=BTCUSDT" in session.urls[0] and "limit=1000" in session.urls[0]
    assert book["update_id"] == raw["lastUpdateId"] and book["timestamp"] is None  # spot books carry no time
    assert book["bids"][0] == [float(raw["bids"][0][0]), float(raw["bids"][0][1])]
    assert len(book["asks"]) == 1000 and book["receive_ns"] > 0


def test_http_429_backs_off_and_retries(snapshot: str) -> None:
    resource, session = _resource([(429, '{"code":-1003,"msg":"Too many requests"}'), (429, "{}"), (200, snapshot)])
    book = resource.fetch_snapshot("BTC/USDT", limit=1000)
    assert len(session.urls) == 3 and book["update_id"] == json.loads(snapshot)["lastUpdateId"]


def test_http_418_stops_at_once_with_what_to_do(snapshot: str) -> None:
    resource, session = _resource([(418, '{"code":-1003,"msg":"Way too many requests; IP banned"}'), (200, snapshot)])
    with pytest.raises(BinanceBanned, match="HTTP 418.*wait for the ban to expire"):
        resource.fetch_snapshot("BTC/USDT")
    assert len(session.urls) == 1  # no retry into a ban


def test_an_unknown_symbol_is_a_config_error() -> None:
    resource, session = _resource([])
    with pytest.raises(ValueError, match="'DOGE/XYZ' is not a Binance spot market"):
        resource.fetch_snapshot("DOGE/XYZ")
    assert session.urls == []
