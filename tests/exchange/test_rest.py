"""The simulator's REST trades history: Coinbase's pages, cursors, headers and error shapes, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import orjson
import pytest

from mercurystream.exchange.exchange import ExchangeConfig, ExchangeServer
from mercurystream.exchange.market import MATCH, N_CHANNELS
from mercurystream.exchange.rest import TradeHistory


def history(last_ids: dict[int, int], n: int = 5, per_product: int = 100) -> TradeHistory:
    """Products BTC-USD (0) and ETH-USD (1) whose last ``n`` matches end at ``last_ids[p]``."""
    h = TradeHistory(["BTC-USD", "ETH-USD"], last_ids.__getitem__, per_product)
    for p, last in last_ids.items():
        msgs = [
            (
                p * N_CHANNELS,
                MATCH,
                orjson.dumps(
                    {
                        "type": "match",
                        "trade_id": tid,
                        "maker_order_id": "m",
                        "taker_order_id": "t",
                        "side": "sell",
                        "size": "0.5",
                        "price": "10.25",
                        "product_id": ["BTC-USD", "ETH-USD"][p],
                        "sequence": tid * 7,
                        "time": "2026-12-05T16:00:00.000001Z",
                    }
                ),
            )
            for tid in range(last - n + 1, last + 1)
        ]
        h.add(msgs)
    return h


def test_the_latest_page_is_newest_first_with_coinbase_s_fields_and_cursors() -> None:
    h = history({0: 50, 1: 9})
    status, body, headers = h.answer("/products/BTC-USD/trades", "limit=2")
    assert status == 200 and [t["trade_id"] for t in body] == [50, 49]
    assert body[0] == {
        "time": "2026-12-05T16:00:00.000001Z",
        "trade_id": 50,
        "price": "10.25",
        "size": "0.5",
        "side": "sell",
    }
    assert headers == {"CB-BEFORE": "50", "CB-AFTER": "49"}


def test_after_pages_older_and_before_pages_newer() -> None:
    h = history({0: 50, 1: 9})
    _, body, headers = h.answer("/products/BTC-USD/trades", "after=49&limit=2")
    assert [t["trade_id"] for t in body] == [48, 47] and headers["CB-AFTER"] == "47"
    _, body, _ = h.answer("/products/BTC-USD/trades", "after=47")
    assert [t["trade_id"] for t in body] == [46], "the history holds 46..50 only"
    _, body, _ = h.answer("/products/BTC-USD/trades", "after=46")
    assert body == []
    _, body, headers = h.answer("/products/BTC-USD/trades", "before=46&limit=2")
    assert [t["trade_id"] for t in body] == [48, 47] and headers == {"CB-BEFORE": "48", "CB-AFTER": "47"}
    _, body, _ = h.answer("/products/ETH-USD/trades", "")
    assert [t["trade_id"] for t in body] == [9, 8, 7, 6, 5]


@pytest.mark.parametrize(
    ("path", "query", "status", "message"),
    [
        ("/products/XYZ-USD/trades", "", 404, "NotFound"),
        ("/products/BTC-USD/trades", "limit=0", 400, "Invalid limit"),
        ("/products/BTC-USD/trades", "limit=1001", 400, "Invalid limit"),
        ("/products/BTC-USD/trades", "after=abc", 400, "Invalid after"),
    ],
)
def test_errors_are_coinbase_s_message_objects(path: str, query: str, status: int, message: str) -> None:
    got, body, _ = history({0: 50, 1: 9}).answer(path, query)
    assert got == status and set(body) == {"message"} and body["message"].startswith(message)


def test_the_history_is_bounded_per_product() -> None:
    h = history({0: 500, 1: 9}, n=300, per_product=100)
    assert h.held("BTC-USD") == 100
    _, body, _ = h.answer("/products/BTC-USD/trades", "after=402")
    assert [t["trade_id"] for t in body] == [401], "401..500 are held"
    _, body, _ = h.answer("/products/BTC-USD/trades", "after=401")
    assert body == []


async def test_the_server_serves_it_on_its_websocket_port() -> None:
    server = ExchangeServer(ExchangeConfig(port=0, seed=2, rate=300, products=("BTC-USD", "ETH-USD")))
    await server.start()
    try:
        deadline = time.monotonic() + 10
        while server.history.held("ETH-USD") < 5:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        base = f"http://127.0.0.1:{server.port}"

        def get(path: str) -> tuple[int, dict, object]:
            try:
                with urllib.request.urlopen(base + path, timeout=5) as r:
                    return r.status, dict(r.headers), json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, dict(e.headers), json.loads(e.read())

        status, headers, body = await asyncio.to_thread(get, "/products/ETH-USD/trades?limit=3")
        assert status == 200 and len(body) == 3 and headers["CB-AFTER"] == str(body[-1]["trade_id"])
        ids = [t["trade_id"] for t in body]
        assert ids == sorted(ids, reverse=True) and ids[0] - ids[-1] == 2
        status, _, body = await asyncio.to_thread(get, "/products/NOPE-USD/trades")
        assert status == 404 and body == {"message": "NotFound"}
    finally:
        await server.stop()
