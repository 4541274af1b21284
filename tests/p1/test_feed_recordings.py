"""Real recorded Coinbase Exchange messages (tests/fixtures/coinbase_exchange/) through the real P1.

A loopback venue answers the subscribe with the simulator's protocol (``exchange.protocol.Session``,
which rejects an unknown product the way Coinbase does) and then serves the recorded messages in
order; P1App forwards to a fake P2. Each forwarded event is checked field by field.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve

from mercurystream.exchange.exchange import ExchangeConfig, ExchangeServer
from mercurystream.exchange.protocol import Session
from mercurystream.p1.app import P1App, run
from mercurystream.p1.config import P1Settings
from mercurystream.p1.feed import FeedProtocol
from mercurystream.shared.config import build_settings
from mercurystream.shared.scrape import scrape

from .conftest import wait_until
from .recording_venue import RecordingVenue, recv_request, send_all
from .recording_venue import recorded as recorded_in

TAKER = {"buy": "sell", "sell": "buy"}


def recorded(name: str) -> list[dict[str, Any]]:
    return recorded_in("coinbase_exchange", name)


async def exchange_handshake(ws: ServerConnection, products: list[str], requests: list[dict[str, Any]]) -> None:
    """The simulator's Exchange session answers each subscribe (it rejects an unknown product as Coinbase does)."""
    session = Session(products)
    while not session.subscribed:
        await ws.send(session.handle(await recv_request(ws, requests)).text.decode())


def settings(url: str, p2_port: int, **extra: object) -> P1Settings:
    return build_settings(
        P1Settings,
        COINBASE_WS_URL=url,
        P2_HOST="127.0.0.1",
        P2_PORT=p2_port,
        P1_METRICS_PORT=0,
        BACKOFF_MAX=0.2,
        **extra,
    )


async def test_recorded_matches_reach_p2_exactly_across_a_reconnect(fake_p2):
    """200 consecutive BTC-USD messages recorded 2022-09-12 (first 60): last_match, then matches with cascades."""
    rec = recorded("matches_btc_usd_2022-09-12.jsonl")
    assert rec[0]["type"] == "last_match" and {m["type"] for m in rec[1:]} == {"match"}
    cut = 31
    # On the reconnect the venue repeats its latest trade as last_match, as it did on the first connection.
    repeat = {**rec[cut - 1], "type": "last_match"}

    async def script(ws, n):
        await send_all(ws, rec[:cut] if n == 0 else [repeat, *rec[cut:]])
        if n:
            await ws.wait_closed()

    venue = await RecordingVenue(["BTC-USD"], script, exchange_handshake).start()
    p2 = await fake_p2()
    app = P1App(settings(venue.url, p2.port, SYMBOLS="BTC-USD"))
    await app.start()
    try:
        await wait_until(lambda: app.sink.buffer.acked == len(rec) - 1, what="every recorded match acknowledged")
        s = scrape(f"http://127.0.0.1:{app.metrics_port}/metrics")
    finally:
        await app.stop()
        await venue.stop()
    events = p2.events
    fields = ("type", "product_id", "price", "last_size", "time", "trade_id", "sequence", "side")
    assert [{k: e[k] for k in fields} for e in events] == [
        {
            "type": "match",
            "product_id": "BTC-USD",
            "price": float(m["price"]),
            "last_size": float(m["size"]),
            "time": m["time"],
            "trade_id": m["trade_id"],
            "sequence": m["sequence"],
            "side": TAKER[m["side"]],
        }
        for m in rec[1:]
    ]
    assert events[0]["price"] == 22386.3 and events[0]["side"] == "sell" and events[0]["time"].endswith(".58496Z")
    ids = [e["trade_id"] for e in events]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "no duplicate, no gap: the last_match repeats were dropped"
    assert venue.connections == 2
    assert s.value("mercurystream_p1_messages_total", type="last_match") == 2
    assert s.value("mercurystream_p1_validation_failures_total") == 0


async def test_recorded_ticker_on_subscribe_is_not_forwarded_again_after_a_reconnect(fake_p2):
    """BTC-EUR 2021-09-21: right after ``subscriptions`` the venue sent a ticker, then the next trade's."""
    rec = recorded("ticker_btc_eur_2021-09-21.jsonl")
    subscriptions, on_subscribe, trade = rec
    assert subscriptions["type"] == "subscriptions"
    assert trade["trade_id"] == on_subscribe["trade_id"] + 1

    async def script(ws, n):
        # First connection: the subscribe ticker then a new trade. Second: the subscribe ticker repeats it.
        await send_all(ws, [on_subscribe, trade] if n == 0 else [trade])
        if n:
            await ws.wait_closed()

    venue = await RecordingVenue(["BTC-EUR"], script, exchange_handshake).start()
    p2 = await fake_p2()
    app = P1App(settings(venue.url, p2.port, SYMBOLS="BTC-EUR", FEED_CHANNEL="ticker"))
    await app.start()
    try:
        await wait_until(lambda: app.sink.buffer.acked == 1 and venue.connections == 2, what="a trade and a reconnect")
        await wait_until(lambda: app.feed.protocol.counts.get("subscribe_ticker") == 2, what="the 2nd subscribe ticker")
        s = scrape(f"http://127.0.0.1:{app.metrics_port}/metrics")
    finally:
        await app.stop()
        await venue.stop()
    assert len(p2.events) == 1
    event = p2.events[0]
    assert {k: event[k] for k in ("type", "product_id", "price", "last_size", "time", "trade_id", "sequence")} == {
        "type": "ticker",
        "product_id": "BTC-EUR",
        "price": 36941.55,
        "last_size": 0.01326788,
        "time": "2021-09-21T08:00:21.167335Z",
        "trade_id": 50228772,
        "sequence": 12764749180,
    }
    assert event["side"] == "buy", "a ticker's side is already the taker's"
    assert (event["best_bid"], event["best_ask"]) == (36933.09, 36941.55)
    assert s.value("mercurystream_p1_messages_total", type="subscribe_ticker") == 2
    assert s.value("mercurystream_p1_messages_total", type="ticker") == 1


def test_recorded_venue_errors_without_a_named_product_are_counted_not_acted_on():
    proto = FeedProtocol(["BTC-USD"], "matches")
    raws = [orjson.dumps(m) for m in recorded("errors.jsonl") + recorded("matches_btc_usd_2026-08-25.jsonl")]
    raws += [orjson.dumps(m) for m in recorded("heartbeat_docs.jsonl")]
    trades, counts = proto.handle(raws)
    assert counts == {"error": 3, "subscriptions": 1, "last_match": 1, "match": 1, "heartbeat": 1}
    assert [t["trade_id"] for t in trades] == [1081862675]
    assert proto.invalid == {} and proto.outbox == [] and proto.fatal is None
    assert proto.subscribed and proto.subscribed_products == {"BTC-USD"}


def test_an_error_naming_a_product_resubscribes_without_it():
    proto = FeedProtocol(["BTC-USD", "XYZ-USD"], "matches")
    proto.subscribe_request()
    error = {"type": "error", "message": "Failed to subscribe", "reason": "XYZ-USD is not a valid product"}
    _, counts = proto.handle([orjson.dumps(error)])
    assert counts == {"error": 1}
    assert proto.invalid == {"XYZ-USD": "XYZ-USD is not a valid product"}
    assert [orjson.loads(r)["product_ids"] for r in proto.outbox] == [["BTC-USD"]]
    assert not proto.subscribed and proto.fatal is None
    proto.outbox.clear()
    proto.handle([orjson.dumps(error)])
    assert proto.outbox == [], "a product already dropped is not dropped twice"


async def test_a_bad_product_against_the_simulator_leaves_the_valid_ones_subscribed(fake_p2):
    exchange = ExchangeServer(ExchangeConfig(port=0, seed=3, products=("BTC-USD", "ETH-USD"), rate=200.0))
    await exchange.start()
    p2 = await fake_p2()
    url = f"ws://127.0.0.1:{exchange.port}"
    app = P1App(settings(url, p2.port, SYMBOLS="BTC-USD,XYZ-USD"))
    await app.start()
    try:
        await wait_until(lambda: app.sink.buffer.acked >= 20, what="trades of the valid product")
        s = scrape(f"http://127.0.0.1:{app.metrics_port}/metrics")
        status = app.status_line()
    finally:
        await app.stop()
        await exchange.stop()
    assert {e["product_id"] for e in p2.events} == {"BTC-USD"}
    assert s.value("mercurystream_p1_connected", target="websocket") == 1
    assert s.value("mercurystream_p1_subscribed", product_id="BTC-USD") == 1
    assert s.value("mercurystream_p1_subscribed", product_id="XYZ-USD") == 0
    assert s.value("mercurystream_p1_invalid_products", product_id="XYZ-USD") == 1
    assert s.value("mercurystream_p1_messages_total", type="error") == 1
    assert "subscribed=BTC-USD" in status and "invalid_products=XYZ-USD" in status
    assert app.feed.reconnects == 0, "the resubscribe goes on the same connection"


async def test_no_valid_product_left_exits_2_naming_them(fake_p2):
    exchange = ExchangeServer(ExchangeConfig(port=0, seed=3, products=("BTC-USD",), rate=50.0))
    await exchange.start()
    p2 = await fake_p2()
    s = settings(f"ws://127.0.0.1:{exchange.port}", p2.port, SYMBOLS="XYZ-USD,ABC-USD")
    try:
        code = await asyncio.wait_for(run(s), 10.0)
    finally:
        await exchange.stop()
    assert code == 2


async def test_connected_waits_for_the_venues_confirmation():
    """A venue that never answers the subscribe leaves ``connected`` at 0 (it used to read 1)."""
    from mercurystream.p1.feed import CoinbaseFeed
    from mercurystream.p1.metrics import P1Metrics

    got: list[dict[str, Any]] = []
    opened = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        opened.set()
        await ws.wait_closed()

    server = await serve(handler, "127.0.0.1", 0, compression=None)
    metrics = P1Metrics()
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    feed = CoinbaseFeed(url, ["BTC-USD"], "matches", 0.1, got.extend, metrics)
    await feed.start()
    try:
        await asyncio.wait_for(opened.wait(), 5.0)
        await asyncio.sleep(0.1)
        assert not feed.connected
        assert metrics.connected.labels("websocket")._value.get() == 0
        assert metrics.subscribed.values["BTC-USD"] == 0
    finally:
        await feed.stop()
        server.close()
        await server.wait_closed()
