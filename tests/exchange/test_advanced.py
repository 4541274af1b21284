"""``--api advanced-trade``: the sans-I/O session, then the real server on a free loopback port."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import ClientConnection

from mercurystream.exchange.advanced import FAILURE, AdvancedSession, go_time, iso_ns, trade_object
from mercurystream.exchange.exchange import build_parser, config_from_args
from mercurystream.exchange.market import ERROR, MATCH, N_CHANNELS, SUBSCRIPTIONS

from .test_exchange import client, exchange, http_get, post_fault

PRODUCTS = ["BTC-USD", "ETH-USD"]
RECORDED = Path(__file__).parents[1] / "fixtures" / "coinbase_advanced"


def sub(channel: str, products: list[str] | None = None, **extra: object) -> bytes:
    request: dict[str, object] = {"type": "subscribe", "channel": channel, **extra}
    if products is not None:
        request["product_ids"] = products
    return orjson.dumps(request)


# --- the session, sans I/O ---------------------------------------------------------------------------


def test_subscribes_and_the_envelope_sequence():
    s = AdvancedSession(PRODUCTS)
    reply = s.handle(sub("heartbeats", jwt="header.claims.signature"))
    assert reply.kind == SUBSCRIPTIONS and reply.new_products == () and s.heartbeats
    reply = s.handle(sub("market_trades", ["ETH-USD"]))
    assert reply.new_products == (1,) and s.mask[1 * N_CHANNELS + MATCH] == 1 and s.subscribed
    assert s.handle(sub("market_trades", ["ETH-USD"])).new_products == (), "no second snapshot for a product"
    first = orjson.loads(s.subscriptions("2026-09-30T01:41:25.000000000Z"))
    assert first == {
        "channel": "subscriptions",
        "client_id": "",
        "timestamp": "2026-09-30T01:41:25.000000000Z",
        "sequence_num": 0,
        "events": [{"subscriptions": {"market_trades": ["ETH-USD"], "heartbeats": ["heartbeats"]}}],
    }
    assert orjson.loads(s.heartbeat("t", "c", 7))["sequence_num"] == 1
    assert orjson.loads(s.market_trades([b'{"trade_id":"1"}'], "t"))["sequence_num"] == 2
    s.handle(orjson.dumps({"type": "unsubscribe", "channel": "market_trades"}))
    s.handle(orjson.dumps({"type": "unsubscribe", "channel": "heartbeats"}))
    assert not s.active


@pytest.mark.parametrize(
    ("request_", "key"),
    [
        (b"{nope", "malformed_json"),
        (b"[1]", "malformed_json"),
        (orjson.dumps({"type": "hello", "channel": "heartbeats"}), "bad_type"),
        (sub("level2", ["BTC-USD"]), "unknown_channel"),
        (sub("market_trades"), "no_products"),
        (sub("market_trades", []), "bad_products"),
        (sub("market_trades", ["BTC-USD", "XYZ-USD"]), "unknown_product"),
        (sub("heartbeats", jwt=5), "bad_jwt"),
    ],
)
def test_a_bad_request_is_rejected_whole_with_coinbases_error_and_changes_nothing(request_, key):
    s = AdvancedSession(PRODUCTS)
    reply = s.handle(request_)
    assert (reply.kind, reply.error) == (ERROR, key)
    assert not s.active and not s.subscribed and s.seq == 0
    assert orjson.loads(FAILURE) == {"type": "error", "message": "failure to subscribe"}


def test_recorded_error_shape_is_the_simulators():
    recorded = [orjson.loads(line) for line in (RECORDED / "docs_examples.jsonl").read_bytes().splitlines()]
    assert orjson.loads(FAILURE) == recorded[1]


def test_trade_object_keeps_the_recorded_key_order_and_the_takers_side():
    match = (
        b'{"type":"match","trade_id":846149798,"maker_order_id":"a","taker_order_id":"b","side":"buy",'
        b'"size":"0.03710506","price":"2668.35","product_id":"ETH-USD","sequence":1,"time":"2026-09-30T01:41:25.375232Z"}'
    )
    recorded = orjson.loads((RECORDED / "market_trades_eth_usd_2026-09-30.jsonl").read_bytes())
    assert orjson.loads(trade_object(match)) == recorded["events"][0]["trades"][0]
    assert list(orjson.loads(trade_object(match))) == list(recorded["events"][0]["trades"][0])
    assert trade_object(match[:40]) is None


def test_time_formats_follow_the_recordings():
    us = 1_759_196_235_057_778
    assert iso_ns(us) == "2025-09-30T01:37:15.057778000Z"
    assert re.fullmatch(r"2025-09-30 01:37:15\.057778000 \+0000 UTC m=\+21697\.195984854", go_time(us, 21697.195984854))


# --- the server --------------------------------------------------------------------------------------


async def read_until(ws: ClientConnection, pred, timeout: float = 5.0) -> list[dict]:
    out: list[dict] = []
    async with asyncio.timeout(timeout):
        while True:
            out.append(orjson.loads(await ws.recv()))
            if pred(out[-1]):
                return out


async def test_snapshot_then_subscriptions_then_batched_updates_and_heartbeats():
    async with exchange(api="advanced-trade", rate=200.0, products=tuple(PRODUCTS)) as server, client(server) as ws:
        await ws.send(sub("heartbeats"))
        await ws.send(sub("market_trades", PRODUCTS))
        msgs = await read_until(ws, lambda m: m["channel"] == "heartbeats", timeout=5)
        msgs += await read_until(ws, lambda m: m["channel"] == "heartbeats", timeout=5)
        times = []
        while len(times) < 6:
            m = orjson.loads(await asyncio.wait_for(ws.recv(), 3))
            msgs.append(m)
            if m["channel"] == "market_trades":
                times.append(time.monotonic())
    assert [m["sequence_num"] for m in msgs] == list(range(len(msgs))), "one counter per connection"
    assert [m["channel"] for m in msgs[:3]] == ["subscriptions", "market_trades", "subscriptions"]
    snapshot = msgs[1]["events"]
    assert len(snapshot) == 1 and snapshot[0]["type"] == "snapshot" and snapshot[0]["trades"]
    assert msgs[2]["events"][0]["subscriptions"] == {"market_trades": PRODUCTS, "heartbeats": ["heartbeats"]}
    beats = [m for m in msgs if m["channel"] == "heartbeats"]
    counters = [b["events"][0]["heartbeat_counter"] for b in beats]
    assert counters == list(range(1, len(counters) + 1)) and len(counters) >= 2, "one a second"
    assert (
        beats[0]["events"][0]["current_time"].endswith(tuple("0123456789"))
        and " +0000 UTC m=+" in beats[0]["events"][0]["current_time"]
    )
    updates = [m for m in msgs if m["channel"] == "market_trades" and m["events"][0]["type"] == "update"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.15 < sorted(gaps)[len(gaps) // 2] < 0.4, f"batched every 250 ms: {gaps}"
    trades = [t for m in updates for t in m["events"][0]["trades"]]
    assert sum(len(m["events"][0]["trades"]) > 1 for m in updates) > 0, "several fills in one update"
    by_product: dict[str, list[int]] = {}
    for t in trades:
        assert list(t) == ["product_id", "trade_id", "price", "size", "time", "side"]
        assert type(t["trade_id"]) is str and t["side"] in ("BUY", "SELL")
        assert re.fullmatch(r"\d+(\.\d?[1-9])?", t["price"]), "trimmed to the 0.01 tick, no trailing zero"
        datetime.fromisoformat(t["time"].replace("Z", "+00:00"))
        by_product.setdefault(t["product_id"], []).append(int(t["trade_id"]))
    snap_ids = {p: max(int(t["trade_id"]) for t in snapshot[0]["trades"] if t["product_id"] == p) for p in PRODUCTS}
    for p, ids in by_product.items():
        assert ids == list(range(ids[0], ids[0] + len(ids))), "one trade per fill, in order"
        assert ids[0] == snap_ids[p] + 1, "updates go on from the snapshot"
    assert server.stats["messages_sent"]["market_trades"] >= len(updates) + 1
    assert server.stats["api"] == "advanced-trade"


async def test_a_bad_product_gets_the_error_and_no_trades():
    async with exchange(api="advanced-trade", rate=200.0, products=tuple(PRODUCTS)) as server, client(server) as ws:
        await ws.send(sub("market_trades", ["BTC-USD", "XYZ-USD"]))
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 3)) == {
            "type": "error",
            "message": "failure to subscribe",
        }
        await ws.send(sub("market_trades", ["BTC-USD"]))
        msgs = await read_until(ws, lambda m: m.get("channel") == "subscriptions")
        assert msgs[0]["events"][0]["type"] == "snapshot"
        assert {t["product_id"] for t in msgs[0]["events"][0]["trades"]} == {"BTC-USD"}
        msgs = await read_until(ws, lambda m: m["events"][0].get("type") == "update")
        assert {t["product_id"] for t in msgs[-1]["events"][0]["trades"]} == {"BTC-USD"}
        assert server.stats["request_errors"] == {"unknown_product": 1}


async def test_faults_apply_to_the_trades_before_batching():
    async with (
        exchange(api="advanced-trade", rate=400.0, products=tuple(PRODUCTS), allow_faults=True) as server,
        client(server) as ws,
    ):
        await ws.send(sub("market_trades", PRODUCTS))
        await read_until(ws, lambda m: m.get("channel") == "subscriptions")
        status, body = await post_fault(server, "kind=duplicate&count=3")
        assert status == 200 and body["clients"] == 1
        seen: dict[tuple[str, str], int] = {}
        async with asyncio.timeout(8):
            while sum(n - 1 for n in seen.values()) < 3:
                m = orjson.loads(await ws.recv())
                for t in m["events"][0].get("trades", []) if m.get("channel") == "market_trades" else []:
                    k = (t["product_id"], t["trade_id"])
                    seen[k] = seen.get(k, 0) + 1
        assert sorted(seen.values())[-3:] == [2, 2, 2]
        status, _ = await post_fault(server, "kind=disconnect")
        assert status == 200
        with pytest.raises(Exception):  # noqa: B017 - the closed connection's exception type varies
            while True:
                await asyncio.wait_for(ws.recv(), 5.0)
        _, stats = await http_get(server, "/stats")
        assert stats["faults_injected"]["duplicate"] == 3 and stats["disconnects"]["on_demand"] == 1


async def test_an_invalid_json_fault_goes_out_as_a_message_of_its_own():
    async with (
        exchange(api="advanced-trade", rate=500.0, products=("BTC-USD",), malformed_rate=0.5, seed=9) as server,
        client(server) as ws,
    ):
        await ws.send(sub("market_trades", ["BTC-USD"]))
        broken = 0
        async with asyncio.timeout(8):
            while broken == 0:
                try:
                    orjson.loads(await ws.recv())
                except orjson.JSONDecodeError:
                    broken += 1
        assert server.stats["faults_injected"]["malformed"] > 0


def test_cli_takes_the_api():
    args = build_parser().parse_args(["--api", "advanced-trade", "--port", "0"])
    assert config_from_args(args).api == "advanced-trade"
    assert config_from_args(build_parser().parse_args([])).api == "exchange"


def test_cli_rejects_an_unknown_api(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--api", "fix"])
    assert info.value.code == 2
    assert "invalid choice: 'fix'" in capsys.readouterr().err
