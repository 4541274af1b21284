"""Real recorded Advanced Trade messages (tests/fixtures/coinbase_advanced/) through the real P1 into the real P2.

A loopback venue answers the subscribes with the simulator's Advanced Trade protocol
(``exchange.advanced.AdvancedSession``) and then serves recorded messages; P1App (FEED_API=advanced-trade)
forwards to an in-process P2App with its detectors and recorder. The simulator itself stands in
for the venue where the test needs a market: a bad product, scheduled disconnects.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from mercurystream.exchange.advanced import AdvancedSession
from mercurystream.exchange.exchange import ExchangeConfig, ExchangeServer
from mercurystream.p1.app import P1App, run
from mercurystream.p1.config import P1Settings
from mercurystream.p2.app import P2App
from mercurystream.p2.config import P2Settings
from mercurystream.shared.config import build_settings
from mercurystream.shared.scrape import scrape

from ..conftest import wait_until
from ..recording_venue import RecordingVenue, recv_request, send_all
from ..recording_venue import recorded as recorded_in

FIELDS = ("type", "product_id", "price", "last_size", "time", "trade_id", "side", "venue", "feed")


def recorded(name: str) -> list[dict[str, Any]]:
    return recorded_in("coinbase_advanced", name)


async def advanced_handshake(ws: ServerConnection, products: list[str], requests: list[dict[str, Any]]) -> None:
    """The simulator's Advanced Trade session answers each subscribe (no snapshot)."""
    session = AdvancedSession(products)
    while not any(session.mask):
        session.handle(await recv_request(ws, requests))
        await ws.send(session.subscriptions("2026-09-30T01:41:25.000000000Z").decode())


def p1_settings(url: str, p2_port: int, **extra: object) -> P1Settings:
    return build_settings(
        P1Settings,
        FEED_API="advanced-trade",
        COINBASE_WS_URL=url,
        P2_HOST="127.0.0.1",
        P2_PORT=p2_port,
        P1_METRICS_PORT=0,
        BACKOFF_MAX=0.2,
        **extra,
    )


async def start_p2(tmp_path: Path) -> P2App:
    settings = P2Settings(
        HOST="127.0.0.1",
        PORT=0,
        METRICS_PORT=0,
        STATUS_INTERVAL_S=60,
        RECORD=True,
        RECORD_FILE=tmp_path / "rec.jsonl",
        INCIDENTS_DIR=tmp_path / "incidents",
        DRIFT_SAMPLE_FILE=tmp_path / "drift.jsonl",
        INCIDENT_CHARTS=False,
    )
    app = P2App(settings)
    await app.start()
    return app


def p2_events(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "rec.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()] if path.exists() else []


async def test_recorded_trades_reach_p2_exactly_and_snapshots_are_not_repeated_across_a_reconnect(tmp_path):
    """ETH-USD 2026-09-30 (an update of two fills) and BTC-USD 2025-10-27 (a subscribe snapshot)."""
    (update,) = recorded("market_trades_eth_usd_2026-09-30.jsonl")
    (snapshot,) = recorded("market_trades_btc_usd_2025-10-27.jsonl")
    heartbeat = recorded("session_2026-09-30.jsonl")[1]
    eth = update["events"][0]["trades"]
    # On the reconnect the venue's snapshot repeats what was already sent, newest first.
    resnapshot = {**update, "events": [{"type": "snapshot", "trades": eth[::-1]}]}

    async def script(ws, n):
        await send_all(ws, [snapshot, update, heartbeat] if n == 0 else [snapshot, resnapshot, heartbeat])
        if n:
            await ws.wait_closed()

    venue = await RecordingVenue(["BTC-USD", "ETH-USD"], script, advanced_handshake).start()
    p2 = await start_p2(tmp_path)
    app = P1App(p1_settings(venue.url, p2.port, SYMBOLS="BTC-USD,ETH-USD"))
    await app.start()
    try:
        await wait_until(lambda: app.sink.buffer.acked == 2, what="the two recorded fills acknowledged")
        await wait_until(lambda: app.feed.protocol.counts.get("snapshot_trade") == 4, what="the second snapshot")
        assert await p2.wait_drained(10)
        s = scrape(f"http://127.0.0.1:{app.metrics_port}/metrics")
        p2s = scrape(f"http://127.0.0.1:{p2.metrics_port}/metrics")
    finally:
        await app.stop()
        await venue.stop()
        await p2.stop()
    events = p2_events(tmp_path)
    assert [{k: e[k] for k in FIELDS} for e in events] == [
        {
            "type": "match",
            "product_id": "ETH-USD",
            "price": 2668.35,
            "last_size": 0.03710506,
            "time": "2026-09-30T01:41:25.375232Z",
            "trade_id": 846149798,
            "side": "sell",
            "venue": "coinbase",
            "feed": "advanced-trade",
        },
        {
            "type": "match",
            "product_id": "ETH-USD",
            "price": 2668.36,
            "last_size": 1.0,
            "time": "2026-09-30T01:41:25.375232Z",
            "trade_id": 846149799,
            "side": "buy",
            "venue": "coinbase",
            "feed": "advanced-trade",
        },
    ]
    assert venue.connections == 2
    assert [r["channel"] for r in venue.requests] == ["heartbeats", "market_trades"] * 2
    assert all("jwt" not in r for r in venue.requests), "no credentials: public channels, unauthenticated"
    assert s.value("mercurystream_p1_messages_total", type="snapshot_trade") == 4
    assert s.value("mercurystream_p1_messages_total", type="heartbeats") == 2
    assert s.value("mercurystream_p1_validation_failures_total") == 0
    assert p2s.value("mercurystream_events_total") == 2
    assert p2s.total("mercurystream_anomalies_total") == 0, "no false duplicate from the repeated snapshot"


async def test_a_recorded_venue_error_on_the_only_product_exits_2(fake_p2):
    error = recorded("docs_examples.jsonl")[1]
    assert error == {"type": "error", "message": "failure to subscribe"}

    async def handler(ws: ServerConnection) -> None:
        for _ in range(2):
            await ws.recv()
        await ws.send(orjson.dumps(error).decode())
        await ws.send(orjson.dumps(error).decode())
        await ws.wait_closed()

    server = await serve(handler, "127.0.0.1", 0, compression=None)
    p2 = await fake_p2()
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        code = await asyncio.wait_for(run(p1_settings(url, p2.port, SYMBOLS="XYZ-USD")), 10.0)
    finally:
        server.close()
        await server.wait_closed()
    assert code == 2


async def test_a_bad_product_against_the_simulator_leaves_the_valid_ones_subscribed(fake_p2):
    exchange = ExchangeServer(
        ExchangeConfig(port=0, api="advanced-trade", seed=3, products=("BTC-USD", "ETH-USD"), rate=200.0)
    )
    await exchange.start()
    p2 = await fake_p2()
    app = P1App(p1_settings(f"ws://127.0.0.1:{exchange.port}", p2.port, SYMBOLS="BTC-USD,XYZ-USD,ETH-USD"))
    await app.start()
    try:
        await wait_until(lambda: app.sink.buffer.acked >= 20, what="trades of the valid products")
        s = scrape(f"http://127.0.0.1:{app.metrics_port}/metrics")
        status = app.status_line()
    finally:
        await app.stop()
        await exchange.stop()
    assert {e["product_id"] for e in p2.events} == {"BTC-USD", "ETH-USD"}
    assert {e["feed"] for e in p2.events} == {"advanced-trade"}
    assert s.value("mercurystream_p1_connected", target="websocket") == 1
    assert s.value("mercurystream_p1_subscribed", product_id="BTC-USD") == 1
    assert s.value("mercurystream_p1_subscribed", product_id="XYZ-USD") == 0
    assert s.value("mercurystream_p1_invalid_products", product_id="XYZ-USD") == 1
    assert s.value("mercurystream_p1_messages_total", type="error") == 2, "the whole subscribe, then XYZ-USD alone"
    assert "subscribed=BTC-USD,ETH-USD" in status and "invalid_products=XYZ-USD" in status
    assert app.feed.reconnects == 0, "the per-product subscribes go on the same connection"


async def test_no_valid_product_against_the_simulator_exits_2(fake_p2):
    exchange = ExchangeServer(ExchangeConfig(port=0, api="advanced-trade", seed=3, products=("BTC-USD",), rate=50.0))
    await exchange.start()
    p2 = await fake_p2()
    try:
        code = await asyncio.wait_for(
            run(p1_settings(f"ws://127.0.0.1:{exchange.port}", p2.port, SYMBOLS="XYZ-USD,ABC-USD")), 10.0
        )
    finally:
        await exchange.stop()
    assert code == 2


@pytest.mark.slow
async def test_reconnects_lose_nothing_and_repeat_nothing(tmp_path):
    """Scheduled disconnects: each new snapshot repeats forwarded trades (dropped) and brings the missed ones."""
    exchange = ExchangeServer(
        ExchangeConfig(
            port=0, api="advanced-trade", seed=5, products=("BTC-USD", "ETH-USD"), rate=40.0, disconnect_every_s=1.0
        )
    )
    await exchange.start()
    p2 = await start_p2(tmp_path)
    app = P1App(p1_settings(f"ws://127.0.0.1:{exchange.port}", p2.port, SYMBOLS="BTC-USD,ETH-USD"))
    await app.start()
    try:
        await wait_until(lambda: app.feed.reconnects >= 3, timeout=20, what="three reconnects")
        await wait_until(lambda: app.feed.connected, what="subscribed again")
        await asyncio.sleep(0.6)
        assert await p2.wait_drained(10)
        s = scrape(f"http://127.0.0.1:{app.metrics_port}/metrics")
        p2s = scrape(f"http://127.0.0.1:{p2.metrics_port}/metrics")
    finally:
        await app.stop()
        await exchange.stop()
        await p2.stop()
    events = p2_events(tmp_path)
    assert len(events) > 50
    for pid in ("BTC-USD", "ETH-USD"):
        ids = [e["trade_id"] for e in events if e["product_id"] == pid]
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"{pid}: no duplicate, no gap across reconnects"
    assert s.value("mercurystream_p1_messages_total", type="snapshot_trade") > 0
    assert s.value("mercurystream_p1_sequence_gaps_total") == 0
    assert p2s.total("mercurystream_anomalies_total") == 0, p2s.by_label("mercurystream_anomalies_total", "type")
