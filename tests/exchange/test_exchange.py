"""The real server on a free loopback port, driven by a websockets client and raw HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import types
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from mercurystream.exchange.exchange import (
    ExchangeConfig,
    ExchangeServer,
    build_parser,
    config_from_args,
    main,
    text_frame,
    text_frames,
)
from mercurystream.exchange.market import MAX_CASCADE
from mercurystream.shared.models import normalize_trade

PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]
SUBSCRIBE = orjson.dumps({"type": "subscribe", "product_ids": PRODUCTS, "channels": ["matches", "heartbeat"]})


async def wait_until(cond: Callable[[], bool], timeout: float = 8.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def exchange(**kw) -> AsyncIterator[ExchangeServer]:
    kw.setdefault("port", 0)
    kw.setdefault("seed", 5)
    server = ExchangeServer(ExchangeConfig(**kw))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def client(server: ExchangeServer, **kw) -> connect:
    kw.setdefault("max_queue", None)
    return connect(f"ws://127.0.0.1:{server.port}", compression=None, **kw)


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict:
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_until(ws: ClientConnection, pred: Callable[[dict], bool], timeout: float = 5.0) -> list[dict]:
    """Messages up to and including the first one ``pred`` accepts."""
    out: list[dict] = []
    async with asyncio.timeout(timeout):
        while True:
            msg = orjson.loads(await ws.recv())
            out.append(msg)
            if pred(msg):
                return out


async def http_request(
    server: ExchangeServer, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict, bytes]:
    """Status, JSON body and raw head of one plain HTTP request to the exchange's port."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5.0)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"application/json" in head
    return status, orjson.loads(body), head


async def http_get(server: ExchangeServer, path: str) -> tuple[int, dict]:
    status, body, _ = await http_request(server, "GET", path)
    return status, body


FAULTS_TOKEN = "test-token-0123456789abcdef"


async def post_fault(server: ExchangeServer, query: str, **headers: str) -> tuple[int, dict]:
    """``POST /faults`` as the exchange's operator sends it: with the token of its run."""
    headers = {"X-Faults-Token": server.faults_token or "", **headers}
    status, body, _ = await http_request(server, "POST", f"/faults?{query}", headers)
    return status, body


async def test_subscribe_handshake_last_match_then_contiguous_matches():
    async with exchange(rate=400.0) as server, client(server) as ws:
        await ws.send(SUBSCRIBE)
        sub = await recv_json(ws)
        assert sub == {
            "type": "subscriptions",
            "channels": [{"name": "matches", "product_ids": PRODUCTS}, {"name": "heartbeat", "product_ids": PRODUCTS}],
        }
        last = {}
        for _ in PRODUCTS:
            lm = await recv_json(ws)
            assert lm["type"] == "last_match"
            last[lm["product_id"]] = lm["trade_id"]
        assert set(last) == set(PRODUCTS)
        msgs = await recv_until(ws, lambda m: m["type"] == "match" and m["product_id"] == "SOL-USD")
        for m in msgs:
            if m["type"] != "match":
                continue
            assert m["trade_id"] == last[m["product_id"]] + 1
            last[m["product_id"]] = m["trade_id"]
            assert normalize_trade(m)[1] is None


async def test_two_clients_see_the_same_market():
    async with exchange(rate=300.0) as server, client(server) as a, client(server) as b:
        await a.send(SUBSCRIBE)
        await b.send(SUBSCRIBE)

        async def trades(ws):
            got = {}
            async with asyncio.timeout(5):
                while len(got) < 40:
                    m = orjson.loads(await ws.recv())
                    if m["type"] == "match":
                        got[(m["product_id"], m["trade_id"])] = m
            return got

        ta, tb = await asyncio.gather(trades(a), trades(b))
        common = ta.keys() & tb.keys()
        assert len(common) >= 20
        assert all(ta[k] == tb[k] for k in common)


async def test_client_that_never_subscribes_is_disconnected():
    async with exchange(subscribe_timeout_s=0.3) as server, client(server) as ws:
        t0 = time.monotonic()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5.0)
        assert 0.25 < time.monotonic() - t0 < 4.0
        assert ws.close_code == 1008
        await wait_until(lambda: server.stats["disconnects"]["subscribe_timeout"] == 1)


async def test_bad_requests_get_errors_and_the_connection_stays_open():
    async with exchange(rate=200.0, subscribe_timeout_s=3.0) as server, client(server) as ws:
        await ws.send("this is not json")
        err = await recv_json(ws)
        assert err["type"] == "error" and err["message"] == "Malformed JSON" and err["reason"]
        await ws.send(orjson.dumps({"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["level3"]}))
        err = await recv_json(ws)
        assert err == {"type": "error", "message": "Failed to subscribe", "reason": "level3 is not a valid channel"}
        await ws.send(orjson.dumps({"type": "subscribe", "product_ids": ["XRP-USD"], "channels": ["matches"]}))
        assert (await recv_json(ws))["reason"] == "XRP-USD is not a valid product"
        await ws.send(orjson.dumps({"product_ids": ["BTC-USD"], "channels": ["matches"]}))
        assert (await recv_json(ws))["type"] == "error"
        await ws.send(
            orjson.dumps({"type": "subscribe", "channels": [{"name": "matches", "product_ids": ["ETH-USD"]}]})
        )
        assert (await recv_json(ws))["type"] == "subscriptions"
        assert (await recv_json(ws))["type"] == "last_match"
        m = await recv_json(ws)
        assert m["type"] == "match" and m["product_id"] == "ETH-USD"
        errors = server.stats["request_errors"]
        assert errors == {"malformed_json": 1, "unknown_channel": 1, "unknown_product": 1, "bad_type": 1}
        assert server.stats["messages_sent"]["error"] == 4


async def test_heartbeats_ticker_and_unsubscribe():
    async with exchange(rate=300.0) as server, client(server) as ws:
        await ws.send(
            orjson.dumps(
                {
                    "type": "subscribe",
                    "channels": [
                        {"name": "heartbeat", "product_ids": ["BTC-USD"]},
                        {"name": "ticker", "product_ids": ["ETH-USD"]},
                    ],
                }
            )
        )
        assert (await recv_json(ws))["type"] == "subscriptions"
        msgs = await recv_until(ws, lambda m: m["type"] == "heartbeat", timeout=4.0)
        hb = msgs[-1]
        assert list(hb) == ["type", "sequence", "last_trade_id", "product_id", "time"]
        assert hb["product_id"] == "BTC-USD"
        tickers = [m for m in msgs if m["type"] == "ticker"]
        assert tickers and all(m["product_id"] == "ETH-USD" and normalize_trade(m)[1] is None for m in tickers)
        await ws.send(orjson.dumps({"type": "unsubscribe", "channels": ["ticker"]}))
        rest = await recv_until(ws, lambda m: m["type"] == "subscriptions")
        assert rest[-1]["channels"] == [{"name": "heartbeat", "product_ids": ["BTC-USD"]}]
        after = await recv_until(ws, lambda m: m["type"] == "heartbeat", timeout=4.0)
        assert [m["type"] for m in after] == ["heartbeat"]
        assert server.stats["messages_sent"]["ticker"] >= len(tickers)


async def test_a_ticker_subscriber_first_gets_each_products_latest_trade_as_a_ticker():
    async with exchange(rate=300.0) as server, client(server) as ws:
        await asyncio.sleep(0.3)
        request = {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channels": ["ticker"]}
        await ws.send(orjson.dumps(request))
        assert (await recv_json(ws))["type"] == "subscriptions"
        first = [await recv_json(ws), await recv_json(ws)]
        assert [m["product_id"] for m in first] == ["BTC-USD", "ETH-USD"]
        for i, m in enumerate(first):
            assert m["type"] == "ticker" and normalize_trade(m)[1] is None
            assert m["trade_id"] <= server.market.last_trade_id(i)


async def test_a_subscribe_naming_an_unknown_product_is_rejected_whole_as_coinbase_does():
    async with exchange(rate=300.0) as server, client(server) as ws:
        request = {"type": "subscribe", "product_ids": ["BTC-USD", "XYZ-USD"], "channels": ["matches"]}
        await ws.send(orjson.dumps(request))
        assert await recv_json(ws) == {
            "type": "error",
            "message": "Failed to subscribe",
            "reason": "XYZ-USD is not a valid product",
        }
        await ws.send(orjson.dumps({"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["matches"]}))
        assert (await recv_json(ws))["type"] == "subscriptions"
        assert (await recv_json(ws))["type"] == "last_match"


async def test_disconnect_every_closes_each_connection_after_its_lifetime():
    async with exchange(rate=200.0, disconnect_every_s=0.4) as server:
        for _ in range(2):
            async with client(server) as ws:
                await ws.send(SUBSCRIBE)
                t0 = time.monotonic()
                with pytest.raises(ConnectionClosed):
                    while True:
                        await asyncio.wait_for(ws.recv(), 5.0)
                assert 0.3 < time.monotonic() - t0 < 4.0
                assert ws.close_code == 1001
        await wait_until(lambda: server.stats["disconnects"]["scheduled"] == 2)
        assert server.stats["connections"]["total"] == 2


async def test_stats_healthz_and_on_demand_faults():
    async with exchange(rate=300.0, allow_faults=True) as server:
        status, body = await http_get(server, "/healthz")
        assert status == 200 and body["status"] == "ok"
        status, body = await post_fault(server, "kind=duplicate&count=3")
        assert status == 409
        async with client(server) as ws:
            await ws.send(SUBSCRIBE)
            await recv_until(ws, lambda m: m["type"] == "match")
            status, body = await post_fault(server, "kind=duplicate&count=3")
            assert (status, body) == (200, {"kind": "duplicate", "count": 3, "clients": 1})
            seen: dict[tuple[str, int], int] = {}
            async with asyncio.timeout(5):
                while sum(n - 1 for n in seen.values()) < 3:
                    m = orjson.loads(await ws.recv())
                    if m["type"] == "match":
                        k = (m["product_id"], m["trade_id"])
                        seen[k] = seen.get(k, 0) + 1
            assert sorted(seen.values())[-3:] == [2, 2, 2]
            for bad in ("kind=explode", "kind=gap&count=0", "kind=gap&count=x"):
                assert (await post_fault(server, bad))[0] == 400
            status, stats = await http_get(server, "/stats")
        assert status == 200
        assert stats["faults_injected"]["duplicate"] == 3
        assert stats["trades_generated"] > 0
        assert stats["messages_sent"]["match"] >= len(seen) + 3
        assert stats["messages_sent"]["subscriptions"] == 1 and stats["messages_sent"]["last_match"] == 3
        assert stats["connections"] == {"current": 1, "subscribed": 1, "total": 1}
        assert set(stats["products"]) == set(PRODUCTS)
        await wait_until(lambda: server.stats["disconnects"]["client_closed"] == 1)
        assert server.stats["faults_injected"]["duplicate"] == 3


async def test_configured_fault_rates_reach_the_client():
    async with (
        exchange(rate=1000.0, duplicate_rate=0.1, gap_rate=0.1, malformed_rate=0.1) as server,
        client(server) as ws,
    ):
        await ws.send(SUBSCRIBE)
        seen: set[tuple[str, int]] = set()
        duplicates = invalid = 0
        async with asyncio.timeout(8):
            while len(seen) < 400:
                raw = await ws.recv()
                try:
                    m = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    invalid += 1
                    continue
                if m["type"] != "match":
                    continue
                if normalize_trade(m)[1] is not None:
                    invalid += 1
                    continue
                k = (m["product_id"], m["trade_id"])
                duplicates += k in seen
                seen.add(k)
        faults = server.stats["faults_injected"]
        assert duplicates > 0 and invalid > 0
        assert faults["duplicate"] >= duplicates and faults["malformed"] >= invalid and faults["gap"] > 0


async def test_on_demand_disconnect():
    async with exchange(rate=100.0, allow_faults=True) as server, client(server) as ws:
        await ws.send(SUBSCRIBE)
        await recv_json(ws)
        status, body = await post_fault(server, "kind=disconnect")
        assert status == 200 and body["clients"] == 1
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5.0)
        assert server.stats["disconnects"]["on_demand"] == 1


async def test_max_trades_then_heartbeats_only():
    async with exchange(rate=100.0, max_trades=50) as server, client(server) as ws:
        await ws.send(SUBSCRIBE)
        await wait_until(lambda: server.stats["max_trades_reached"], what="max trades")
        msgs = await recv_until(ws, lambda m: m["type"] == "heartbeat" and server.stats["max_trades_reached"])
        after = await recv_until(ws, lambda m: m["type"] == "heartbeat")
        assert {m["type"] for m in after} == {"heartbeat"}
        matches = [m for m in msgs if m["type"] == "match"]
        stats = server.stats
        assert stats["trades_generated"] == 50
        assert len(matches) == stats["messages_sent"]["match"] <= 50
        per_product: dict[str, list[int]] = {}
        for m in matches:
            per_product.setdefault(m["product_id"], []).append(m["trade_id"])
        for pid, tids in per_product.items():
            assert tids == list(range(tids[0], tids[0] + len(tids)))
            assert stats["products"][pid]["last_trade_id"] == tids[-1]


async def test_a_slow_client_is_dropped_without_holding_back_the_others():
    async with exchange(rate=20_000.0, max_queue=2_000) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        async with client(server, sock=sock, close_timeout=1) as slow, client(server) as fast:
            await slow.send(SUBSCRIBE)
            await fast.send(SUBSCRIBE)
            slow.transport.pause_reading()
            received = 0

            async def drain_fast():
                nonlocal received
                while True:
                    await fast.recv()
                    received += 1

            reader = asyncio.create_task(drain_fast())
            try:
                await wait_until(lambda: server.stats["disconnects"]["slow_consumer"] == 1, 10.0, "slow consumer drop")
                before = received
                await wait_until(lambda: received > before + 1000, 5.0, "fast client keeps receiving")
            finally:
                slow.transport.resume_reading()
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await reader
            assert server.stats["connections"]["subscribed"] == 1


def test_cli_rejects_bad_arguments_with_one_line(capsys):
    for argv in (["--rate", "-1"], ["--products", "BTC-USD,,ETH"], ["--gap-rate", "0.7", "--duplicate-rate", "0.7"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mercury-exchange: ") and "\n" not in err, err
    with pytest.raises(SystemExit) as exc:
        main(["--port", "abc"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--port" in err


async def test_cli_serves_and_exits_0_on_sigterm(tmp_path):
    port_file = tmp_path / "port"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mercurystream.exchange.exchange",
        "--port",
        "0",
        "--rate",
        "100",
        "--port-file",
        str(port_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LOG_LEVEL": "WARNING"},
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 15.0)).decode()
        assert line.startswith("mercury-exchange listening on ws://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        assert int(port_file.read_text()) == port
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            await ws.send(SUBSCRIBE)
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 5.0))["type"] == "subscriptions"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10.0) == 0
        assert b"Traceback" not in await proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_faults_are_off_unless_allowed():
    async with exchange(rate=100.0) as server, client(server) as ws:
        await ws.send(SUBSCRIBE)
        await recv_json(ws)
        assert server.faults_token is None
        status, body = await post_fault(server, "kind=disconnect", **{"X-Faults-Token": "anything"})
        assert status == 403 and "--allow-faults" in body["error"]
        assert (await http_get(server, "/faults?kind=disconnect"))[0] == 405
        assert server.stats["disconnects"]["on_demand"] == 0


async def test_faults_need_post_the_token_and_no_foreign_origin():
    async with exchange(rate=100.0, allow_faults=True, faults_token=FAULTS_TOKEN) as server, client(server) as ws:
        await ws.send(SUBSCRIBE)
        await recv_json(ws)
        status, _, head = await http_request(server, "GET", "/faults?kind=disconnect")
        assert status == 405 and b"Allow: POST" in head
        for method in ("PUT", "DELETE", "OPTIONS"):
            assert (await http_request(server, method, "/faults?kind=disconnect"))[0] == 405
        assert (await http_request(server, "POST", "/faults?kind=disconnect"))[0] == 403
        for wrong in ("", "x", FAULTS_TOKEN[:-1], FAULTS_TOKEN + "x"):
            status, body = await post_fault(server, "kind=disconnect", **{"X-Faults-Token": wrong})
            assert status == 403 and "token" in body["error"]
        for origin in ("http://evil.example", "null", "http://127.0.0.1:1", f"https://127.0.0.1:{server.port}"):
            status, body = await post_fault(server, "kind=disconnect", Origin=origin)
            assert status == 403 and "origin" in body["error"], origin
        assert server.stats["disconnects"]["on_demand"] == 0
        status, body = await post_fault(server, "kind=duplicate&count=1", Origin=f"http://127.0.0.1:{server.port}")
        assert status == 200 and body["clients"] == 1


async def test_a_generated_token_is_per_run():
    async with exchange(allow_faults=True) as a, exchange(allow_faults=True) as b:
        assert a.faults_token and b.faults_token and a.faults_token != b.faults_token
        assert len(a.faults_token) >= 32


async def test_stats_and_healthz_answer_get_only():
    async with exchange() as server:
        for path in ("/stats", "/healthz"):
            status, _, head = await http_request(server, "POST", path)
            assert status == 405 and b"Allow: GET" in head


def test_cli_fault_control_options_are_checked(capsys, monkeypatch):
    monkeypatch.delenv("MERCURY_FAULTS_TOKEN", raising=False)
    for argv in (["--faults-token", FAULTS_TOKEN], ["--allow-faults", "--faults-token", "short"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mercury-exchange: ") and "\n" not in err, err
    monkeypatch.setenv("MERCURY_FAULTS_TOKEN", "bad token with spaces")
    assert main(["--allow-faults"]) == 2
    assert "MERCURY_FAULTS_TOKEN" in capsys.readouterr().err


async def _start_cli(*argv: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mercurystream.exchange.exchange",
        "--port",
        "0",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LOG_LEVEL": "WARNING", **(env or {})},
    )


async def _stop_cli(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_cli_prints_the_generated_token_once_and_it_works():
    proc = await _start_cli("--allow-faults", env={"MERCURY_FAULTS_TOKEN": ""})
    try:
        listening = (await asyncio.wait_for(proc.stdout.readline(), 15.0)).decode()
        port = int(listening.rsplit(":", 1)[1])
        faults = (await asyncio.wait_for(proc.stdout.readline(), 5.0)).decode().strip()
        assert faults.startswith("mercury-exchange faults: POST /faults with X-Faults-Token: ")
        token = faults.rsplit(" ", 1)[1]
        server = types.SimpleNamespace(port=port, faults_token=token)
        assert (await post_fault(server, "kind=gap"))[0] == 409
        server.faults_token = "wrong-" + token
        assert (await post_fault(server, "kind=gap"))[0] == 403
    finally:
        await _stop_cli(proc)
    rest = await proc.stdout.read()
    assert token.encode() not in rest and token.encode() not in await proc.stderr.read()


async def test_cli_takes_the_token_from_the_environment_and_does_not_print_it():
    proc = await _start_cli("--allow-faults", env={"MERCURY_FAULTS_TOKEN": FAULTS_TOKEN})
    try:
        port = int((await asyncio.wait_for(proc.stdout.readline(), 15.0)).decode().rsplit(":", 1)[1])
        faults = (await asyncio.wait_for(proc.stdout.readline(), 5.0)).decode()
        assert "MERCURY_FAULTS_TOKEN" in faults and FAULTS_TOKEN not in faults
        assert (await post_fault(types.SimpleNamespace(port=port, faults_token=FAULTS_TOKEN), "kind=gap"))[0] == 409
    finally:
        await _stop_cli(proc)


# --- flood mode: the slowest subscriber paces the market -------------------------------------


def ahead(server: ExchangeServer) -> int:
    """Trades generated but not yet written to the client's socket."""
    stats = server.stats
    return stats["trades_generated"] - stats["messages_sent"]["match"]


async def test_flood_paces_the_market_by_a_slow_reader_without_gaps():
    chunk = 200
    # Queued: under the low-water mark (one chunk) plus the chunk just made (cut between arrivals, so up
    # to a cascade more); and at most as much again in the batch its writer is still draining.
    bound = 2 * (2 * chunk + MAX_CASCADE)
    async with exchange(rate=1_000.0, flood=True, flood_chunk=chunk, max_queue=1_000) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        async with client(server, sock=sock, max_queue=32) as ws:
            await ws.send(SUBSCRIBE)
            last: dict[str, int] = {}
            times: list[str] = []
            worst = 0
            while len(times) < 3_000:
                m = await recv_json(ws)
                if m["type"] in ("last_match", "match"):
                    pid = m["product_id"]
                    if m["type"] == "match":
                        assert m["trade_id"] == last[pid] + 1, "no gap, no reorder"
                        times.append(m["time"])
                    last[pid] = m["trade_id"]
                if len(times) % 100 == 99:
                    worst = max(worst, ahead(server))
                    await asyncio.sleep(0.005)  # a slow reader
            assert times == sorted(times)
            assert worst <= bound, f"the exchange ran {worst} trades ahead of what it sent"
            # The reader stops: the exchange stops too, a bounded amount ahead of the socket.
            ws.transport.pause_reading()
            await asyncio.sleep(0.3)
            generated = server.trades
            await asyncio.sleep(0.5)
            assert server.trades == generated, "nothing generated while nobody reads"
            assert ahead(server) <= bound
            assert server.stats["disconnects"]["slow_consumer"] == 0
            ws.transport.resume_reading()


async def test_flood_trade_times_follow_the_market_clock_not_the_wall_clock():
    async with exchange(rate=100.0, flood=True) as server, client(server, max_queue=1024, close_timeout=1) as ws:
        await ws.send(SUBSCRIBE)
        started = time.monotonic()
        times = []
        while len(times) < 3_000:
            m = await recv_json(ws)
            if m["type"] == "match":
                times.append(m["time"])
        wall_s = time.monotonic() - started
    first, last = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (times[0], times[-1]))
    span_s = (last - first).total_seconds()
    assert 15.0 < span_s < 60.0, f"3000 trades at 100/s should span ~30 s of exchange time, not {span_s:.1f}"
    assert wall_s < span_s, "trades came as fast as they were read, not at 100/s"


async def test_flood_generates_nothing_without_a_subscriber():
    async with exchange(rate=10_000.0, flood=True) as server:
        await asyncio.sleep(0.3)
        assert server.trades == 0


def test_cli_flood_flag_is_documented_and_parsed():
    parser = build_parser()
    assert "--flood" in parser.format_help()
    assert config_from_args(parser.parse_args(["--flood"])).flood
    assert not config_from_args(parser.parse_args([])).flood


def test_text_frames_match_websockets_framing_for_every_header_size():
    payloads = [b"", b"x" * 125, b"y" * 126, b"z" * 4095, b"w" * 4096, b"v" * 65535, b"u" * 65536]
    msgs = [(0, 0, p) for p in payloads]
    expected = []
    for p in payloads:
        frame = Frame(Opcode.TEXT, p).serialize(mask=False, extensions=[])
        assert text_frame(p) == frame
        expected.append(frame)
    assert text_frames(msgs) == b"".join(expected)
    assert text_frames([]) == b""
