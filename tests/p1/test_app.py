from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import orjson
import pytest

from mercurystream.p1.app import P1App
from mercurystream.p1.config import P1Settings
from mercurystream.shared.config import build_settings
from mercurystream.shared.scrape import scrape

from .conftest import FakeVenue, match, wait_until

P1_BIN = Path(sys.executable).with_name("mercury-p1")


def settings_for(venue: FakeVenue, p2_port: int, **extra: object) -> P1Settings:
    return build_settings(
        P1Settings,
        COINBASE_WS_URL=venue.url,
        SYMBOLS="BTC-USD,ETH-USD",
        P2_HOST="127.0.0.1",
        P2_PORT=p2_port,
        P1_METRICS_PORT=0,
        BACKOFF_MAX=0.2,
        **extra,
    )


async def test_venue_to_p2_with_invalid_trades_forwarded_as_received(fake_p2):
    bad = match(3, price="oops")

    async def script(ws, n):
        if n == 0:
            for msg in (
                {"type": "heartbeat", "product_id": "BTC-USD", "sequence": 1, "last_trade_id": 0},
                match(0, type="last_match"),
                match(1),
                match(2, product_id="ETH-USD"),
                bad,
            ):
                await ws.send(orjson.dumps(msg).decode())
        await ws.wait_closed()

    venue = await FakeVenue(script).start()
    p2 = await fake_p2()
    app = P1App(settings_for(venue, p2.port))
    await app.start()
    try:
        await wait_until(lambda: app.sink.buffer.acked == 3, what="three trades acknowledged")
        s = scrape(f"http://127.0.0.1:{app.metrics_port}/metrics")
        status = app.status_line()
    finally:
        await app.stop()
        await venue.stop()
    events = p2.events
    assert [e["trade_id"] for e in events] == [1, 2, 3]
    assert events[0]["price"] == 64388.01 and events[0]["last_size"] == 0.00512
    assert events[2] == {**bad, "ingest_ts_ms": events[2]["ingest_ts_ms"], "ingest_ts_us": events[2]["ingest_ts_us"]}
    assert all(type(e["ingest_ts_us"]) is int and e["ingest_ts_us"] // 1000 == e["ingest_ts_ms"] for e in events)
    assert s.value("mercurystream_p1_messages_total", type="match") == 3
    assert s.value("mercurystream_p1_messages_total", type="last_match") == 1
    assert s.value("mercurystream_p1_messages_total", type="heartbeat") == 1
    assert s.value("mercurystream_p1_validation_failures_total") == 1
    assert s.value("mercurystream_p1_forwarded_total") == 3
    assert s.value("mercurystream_p1_acked_total") == 3
    assert s.value("mercurystream_p1_connected", target="websocket") == 1
    assert s.value("mercurystream_p1_connected", target="p2") == 1
    assert status.startswith("P1 | msgs=6 valid=2 invalid=1 forwarded=3 acked=3 buffered=0 dropped=0")


async def test_keeps_reading_the_feed_while_p2_is_down(fake_p2):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def script(ws, n):
        for i in range(200):
            await ws.send(orjson.dumps(match(i)).decode())
        await ws.wait_closed()

    venue = await FakeVenue(script).start()
    app = P1App(settings_for(venue, port, P1_BUFFER_EVENTS=150))
    await app.start()
    try:
        await wait_until(lambda: app.feed.protocol.trades == 200, what="the feed read on")
        assert app.sink.held == 150
        assert app.sink.buffer.dropped["buffer_full"] == 50
        p2 = await fake_p2(port=port)
        await wait_until(lambda: app.sink.buffer.acked == 150, what="held events delivered")
    finally:
        await app.stop()
        await venue.stop()
    assert [e["trade_id"] for e in p2.events] == list(range(50, 200))


@pytest.mark.parametrize("sink", ["tcp", "nats"])
def test_either_sink_holds_at_most_p1_buffer_bytes(sink):
    settings = build_settings(P1Settings, P1_SINK=sink, P1_BUFFER_EVENTS=500, P1_BUFFER_BYTES=12345, P1_METRICS_PORT=0)
    app = P1App(settings)
    assert app.sink.buffer.capacity == 500
    assert app.sink.buffer.capacity_bytes == 12345


# --- the console script --------------------------------------------------------------------


def p1_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in P1Settings.model_fields}
    env.update(extra)
    return env


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("P1_METRICS_PORT", "abc"),
        ("FEED_CHANNEL", "level2"),
        ("P1_BUFFER_EVENTS", "-5"),
        ("SYMBOLS", "BTC-USD,,"),
        ("P2_HOST", "foo..bar"),
        ("P1_METRICS_HOST", "foo..bar"),
        ("SYMBOLS", "BTC-USD,BTC USD"),
        ("COINBASE_WS_URL", "ws://[::1"),
        ("COINBASE_REST_URL", "http://127.0.0.1:99999"),
    ],
)
async def test_bad_config_exits_2_with_one_line(var, value):
    proc = await asyncio.create_subprocess_exec(
        str(P1_BIN),
        env=p1_env(**{var: value}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2
    assert len(lines) == 1, lines
    assert var in lines[0] and "Traceback" not in lines[0]
    assert out == b""


async def test_an_endpoint_that_cannot_be_bound_is_one_line_and_exit_1(capsys):
    """Past validation, a metrics host the resolver refuses raises UnicodeError, not OSError: still one line."""
    from mercurystream.p1.app import run

    settings = build_settings(P1Settings, P1_METRICS_PORT=0, P2_PORT=1, COINBASE_WS_URL="ws://127.0.0.1:1")
    settings.P1_METRICS_HOST = "foo..bar"  # as if validation had let it through
    assert await run(settings) == 1


async def test_sigterm_flushes_to_p2_and_exits_0(fake_p2):
    async def script(ws, n):
        for i in range(100):
            await ws.send(orjson.dumps(match(i)).decode())
        await ws.wait_closed()

    venue = await FakeVenue(script).start()
    p2 = await fake_p2()
    proc = await asyncio.create_subprocess_exec(
        str(P1_BIN),
        env=p1_env(
            COINBASE_WS_URL=venue.url,
            P2_HOST="127.0.0.1",
            P2_PORT=str(p2.port),
            P1_METRICS_PORT="0",
            STATUS_INTERVAL_S="0.2",
            LOG_LEVEL="INFO",
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_until(lambda: len(p2.payloads) == 100, timeout=60, what="P1 forwarding")
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await venue.stop()
    log = err.decode()
    assert proc.returncode == 0, log
    assert "Traceback" not in log
    assert "P1 | msgs=101 valid=100 invalid=0 forwarded=100 acked=100 buffered=0 dropped=0" in log


def test_gap_max_ids_bounds_the_gap_tracker_and_implausible_jumps_are_exported():
    app = P1App(build_settings(P1Settings, SYMBOLS="BTC-USD", GAP_MAX_IDS=10, P1_METRICS_PORT=0))
    assert app.gaps is not None and app.gaps.max_jump == 10
    app.gaps.on_control({"type": "last_match", "product_id": "BTC-USD", "trade_id": 100})
    for tid in (1000, 1001, 1002):
        app.gaps.on_trades([match(tid)])
    m = app.metrics
    assert m.bad_trade_ids_total.labels("implausible_jump")._value.get() == 3
    assert m.gap_rebaselines_total._value.get() == 1
    assert m.gap_ids_total.labels("trade_id")._value.get() == 0


def test_the_status_line_is_bounded_however_many_products_are_configured():
    from mercurystream.p1.app import SUBSCRIBED_MAX

    symbols = ",".join(f"P{i:05d}-{'Z' * 50}" for i in range(3000))
    app = P1App(build_settings(P1Settings, SYMBOLS=symbols, P1_METRICS_PORT=0))
    proto = app.feed.protocol
    proto.subscribed_products = frozenset(proto.symbols)
    proto.invalid = {s: "rejected" for s in proto.symbols[:2000]}
    line = app.status_line()
    assert len(line) < 300 + 2 * SUBSCRIBED_MAX and line.count("more") == 2
