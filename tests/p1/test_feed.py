from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import orjson

from mercurystream.p1.feed import CoinbaseFeed, FeedProtocol
from mercurystream.p1.metrics import P1Metrics

from .conftest import FakeVenue, match, wait_until

# --- FeedProtocol: what each message means -------------------------------------------------


def test_subscribe_request_names_channel_heartbeat_and_symbols():
    proto = FeedProtocol(["BTC-USD", "ETH-USD"], "matches")
    assert orjson.loads(proto.subscribe_request()) == {
        "type": "subscribe",
        "product_ids": ["BTC-USD", "ETH-USD"],
        "channels": ["matches", "heartbeat"],
    }


def test_each_message_type_is_counted_and_only_trades_forwarded():
    proto = FeedProtocol(["BTC-USD"], "matches")
    ticker = {"type": "ticker", "product_id": "BTC-USD", "price": "1.0", "trade_id": 5}
    raws: list[bytes | str] = [
        orjson.dumps({"type": "subscriptions", "channels": [{"name": "matches", "product_ids": ["BTC-USD"]}]}),
        orjson.dumps({"type": "heartbeat", "product_id": "BTC-USD", "sequence": 1, "last_trade_id": 1}),
        orjson.dumps(match(1, type="last_match")),
        orjson.dumps(match(2)),
        orjson.dumps(ticker).decode(),
        orjson.dumps({"type": "error", "message": "Failed to subscribe", "reason": "bad product"}),
        orjson.dumps({"type": "l2update", "product_id": "BTC-USD"}),
        b"not json",
        b"[1, 2]",
        orjson.dumps({"type": 7}),
        orjson.dumps({"no_type": True}),
    ]
    assert not proto.subscribed
    trades, counts = proto.handle(raws)
    assert trades == [match(2), ticker]
    assert counts == {
        "subscriptions": 1,
        "heartbeat": 1,
        "last_match": 1,
        "match": 1,
        "ticker": 1,
        "error": 1,
        "l2update": 1,
        "malformed": 4,
    }
    assert proto.subscribed
    assert proto.messages == 11 and proto.trades == 2
    proto.on_connect()
    assert not proto.subscribed


def test_unknown_type_labels_are_capped():
    proto = FeedProtocol(["BTC-USD"], "matches", max_type_labels=2)
    _, counts = proto.handle([orjson.dumps({"type": f"new{i}"}) for i in range(5)] + [orjson.dumps({"type": "new0"})])
    assert counts == {"new0": 2, "new1": 1, "other": 3}
    _, counts = proto.handle([orjson.dumps({"type": "new1"}), orjson.dumps({"type": "new9"})])
    assert counts == {"new1": 1, "other": 1}
    assert proto.counts["other"] == 4


# --- CoinbaseFeed against an in-test venue -------------------------------------------------


class Collector:
    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []

    def __call__(self, trades: list[dict[str, Any]]) -> None:
        self.batches.append(trades)

    @property
    def trades(self) -> list[dict[str, Any]]:
        return [t for b in self.batches for t in b]


def make_feed(url: str, on: Collector, metrics: P1Metrics | None = None, **kw: Any) -> CoinbaseFeed:
    kw.setdefault("backoff_base_s", 0.02)
    return CoinbaseFeed(url, ["BTC-USD", "ETH-USD"], "matches", 0.1, on, metrics or P1Metrics(), **kw)


async def test_reconnects_and_resubscribes_after_the_venue_drops():
    async def script(ws, n):
        for i in range(3):
            await ws.send(orjson.dumps(match(n * 3 + i)).decode())

    venue = await FakeVenue(script).start()
    metrics = P1Metrics()
    got = Collector()
    feed = make_feed(venue.url, got, metrics)
    await feed.start()
    try:
        await wait_until(lambda: len(got.trades) >= 9, what="three connections' trades")
    finally:
        await feed.stop()
        await venue.stop()
    assert venue.connections >= 3
    expected = {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channels": ["matches", "heartbeat"]}
    assert all(s == expected for s in venue.subscribes)
    assert [t["trade_id"] for t in got.trades[:9]] == list(range(9))
    assert metrics.reconnects_total.labels("websocket")._value.get() >= 2
    assert metrics.messages_total.labels("subscriptions")._value.get() >= 3
    assert metrics.messages_total.labels("match")._value.get() >= 9
    assert feed.backoff.attempt <= 1, "a subscribed connection resets the backoff"


async def test_last_match_is_counted_not_forwarded():
    async def script(ws, n):
        await ws.send(orjson.dumps(match(1, type="last_match")).decode())
        await ws.send(orjson.dumps(match(2)).decode())
        await ws.wait_closed()

    venue = await FakeVenue(script).start()
    metrics = P1Metrics()
    got = Collector()
    feed = make_feed(venue.url, got, metrics)
    await feed.start()
    try:
        await wait_until(lambda: len(got.trades) == 1, what="the match")
        assert metrics.connected.labels("websocket")._value.get() == 1
    finally:
        await feed.stop()
        await venue.stop()
    assert got.trades[0]["trade_id"] == 2
    assert metrics.messages_total.labels("last_match")._value.get() == 1
    assert metrics.connected.labels("websocket")._value.get() == 0


async def test_silence_is_a_dead_connection():
    """No heartbeat, no anything for idle_timeout_s: reconnect rather than wait forever."""

    async def script(ws, n):
        await ws.wait_closed()

    venue = await FakeVenue(script).start()
    feed = make_feed(venue.url, Collector(), idle_timeout_s=0.3)
    await feed.start()
    try:
        await wait_until(lambda: venue.connections >= 2, what="a reconnect after silence")
    finally:
        await feed.stop()
        await venue.stop()


async def test_heartbeats_keep_a_quiet_connection_alive():
    async def script(ws, n):
        for i in range(12):
            await ws.send(orjson.dumps({"type": "heartbeat", "product_id": "BTC-USD", "sequence": i}).decode())
            await asyncio.sleep(0.25)
        await ws.wait_closed()

    venue = await FakeVenue(script).start()
    metrics = P1Metrics()
    feed = make_feed(venue.url, Collector(), metrics, idle_timeout_s=1.0)
    await feed.start()
    try:
        await wait_until(lambda: metrics.messages_total.labels("heartbeat")._value.get() == 12, what="heartbeats")
        assert venue.connections == 1
    finally:
        await feed.stop()
        await venue.stop()


async def test_backoff_grows_while_the_venue_is_unreachable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    feed = make_feed(f"ws://127.0.0.1:{port}", Collector())
    await feed.start()
    try:
        await wait_until(lambda: feed.backoff.attempt >= 4, what="repeated failed attempts")
    finally:
        await feed.stop()
    assert feed.reconnects >= 3 and feed.connects == 0


async def test_messages_already_received_are_handed_on_in_batches():
    n_trades = 3000

    async def script(ws, n):
        for i in range(n_trades):
            await ws.send(orjson.dumps(match(i)).decode())
        await ws.wait_closed()

    venue = await FakeVenue(script).start()
    got = Collector()
    feed = make_feed(venue.url, got, max_batch=1000)
    await feed.start()
    try:
        await wait_until(lambda: len(got.trades) == n_trades, what="all trades")
    finally:
        await feed.stop()
        await venue.stop()
    assert [t["trade_id"] for t in got.trades] == list(range(n_trades))
    assert len(got.batches) < n_trades / 5, "one pipeline call per batch, not per message"
    assert max(len(b) for b in got.batches) <= 1000


async def test_stop_is_prompt_while_connected():
    async def script(ws, n):
        await ws.wait_closed()

    venue = await FakeVenue(script).start()
    feed = make_feed(venue.url, Collector())
    await feed.start()
    await wait_until(lambda: feed.connected, what="connected")
    started = time.monotonic()
    await feed.stop()
    assert time.monotonic() - started < 3.0
    await venue.stop()


async def test_a_failing_pipeline_does_not_stop_the_feed():
    async def script(ws, n):
        for i in range(3):
            await ws.send(orjson.dumps(match(i)).decode())
            await asyncio.sleep(0.05)
        await ws.wait_closed()

    calls: list[int] = []

    def boom(trades: list[dict[str, Any]]) -> None:
        calls.append(len(trades))
        raise RuntimeError("bug downstream")

    venue = await FakeVenue(script).start()
    feed = CoinbaseFeed(venue.url, ["BTC-USD"], "matches", 0.1, boom, P1Metrics())
    await feed.start()
    try:
        await wait_until(lambda: sum(calls) == 3, what="all batches offered")
        assert venue.connections == 1
    finally:
        await feed.stop()
        await venue.stop()
