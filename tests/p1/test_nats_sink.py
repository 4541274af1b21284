"""P1's JetStream sink: the batching protocol without a connection, then against a real nats-server."""

from __future__ import annotations

import asyncio
import time

import nats
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.p1.metrics import P1Metrics
from mercurystream.p1.nats_sink import UNKNOWN_PRODUCT, NatsBuffer, NatsSink, product_of
from mercurystream.shared.framing import FrameDecoder
from mercurystream.shared.jetstream import EVENTS_HEADER, MSG_ID_HEADER, StreamSettings

from .conftest import wait_until

PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD")


def ev(i: int, product: str = "BTC-USD") -> bytes:
    return orjson.dumps({"type": "match", "product_id": product, "trade_id": i})


def balanced(b: NatsBuffer) -> bool:
    return b.published == b.acked + b.dropped_total + b.held


def buf(capacity: int = 1000, capacity_bytes: int = 1 << 20, **kw) -> NatsBuffer:
    return NatsBuffer(capacity, capacity_bytes, 1 << 20, "coinbase", **kw)


# --- NatsBuffer: the protocol without a connection -------------------------------------------------------


def test_product_of_reads_the_id_without_parsing():
    assert product_of(ev(1, "ETH-USD")) == "ETH-USD"
    assert product_of(b'{"type":"match","price":1}') == UNKNOWN_PRODUCT
    assert product_of(b'{"product_id":"unterminated') == UNKNOWN_PRODUCT


def test_a_round_is_one_batch_per_product_in_order():
    b = buf()
    b.publish([ev(i, PRODUCTS[i % 3]) for i in range(9)])
    batches = b.next_round()
    assert sorted(x.product for x in batches) == sorted(PRODUCTS)
    for x in batches:
        assert x.subject == f"trades.coinbase.{x.product}"
        assert [orjson.loads(p)["trade_id"] % 3 for p in x.payloads] == [PRODUCTS.index(x.product)] * 3
        assert x.payloads == sorted(x.payloads, key=lambda p: orjson.loads(p)["trade_id"])
    assert len({x.id for x in batches}) == 3
    assert b.held == 9 and not b.pending and balanced(b)


def test_an_unacknowledged_batch_goes_again_first_with_its_id_and_nothing_newer_of_its_product_passes_it():
    b = buf(batch_max_events=2)
    b.publish([ev(i) for i in range(5)])
    first = b.next_round()
    assert [len(x) for x in first] == [2]
    for x in first:
        b.on_sent(x)
    again = b.next_round()
    assert [x.id for x in again] == [first[0].id]  # the same id: a resend the stream dedupes
    b.on_sent(again[0])
    assert b.resent == 2
    assert b.on_stored(again[0], duplicate=False) == 2
    nxt = b.next_round()
    assert [orjson.loads(p)["trade_id"] for p in nxt[0].payloads] == [2, 3]
    assert balanced(b)


def test_batches_are_bounded_in_bytes():
    b = buf(batch_max_bytes=200)
    b.publish([ev(i) for i in range(20)])
    x = b.next_round()[0]
    assert x.nbytes <= 200 and len(x) < 20
    assert balanced(b)


def test_drop_oldest_pending_when_full_in_events_or_bytes():
    b = buf(capacity=5)
    assert b.publish([ev(i) for i in range(8)]) == (3, 0)
    assert [orjson.loads(p)["trade_id"] for _, p in b.pending] == [3, 4, 5, 6, 7]
    b2 = buf(capacity_bytes=len(ev(0)) * 4)
    assert b2.publish([ev(i) for i in range(6)])[0] == 2
    assert balanced(b) and balanced(b2)


def test_batched_events_are_never_dropped_for_space():
    b = buf(capacity=4)
    b.publish([ev(i) for i in range(3)])
    made = b.next_round()
    b.publish([ev(i) for i in range(3, 9)])
    assert b.batch_events == 3 and len(b.pending) == 1
    assert made[0].id in b.batches and balanced(b)


def test_oversize_and_shutdown_are_counted():
    b = NatsBuffer(100, 1 << 20, 80, "coinbase")
    assert b.publish([b"x" * 90, ev(1)]) == (0, 1)
    b.next_round()
    b.publish([ev(2)])
    assert b.close() == 2
    b.publish([ev(3)])
    assert b.dropped == {"buffer_full": 0, "unacked_at_disconnect": 0, "shutdown": 3, "oversize": 1}
    assert balanced(b)


@given(st.lists(st.tuples(st.sampled_from(["pub", "round", "ack", "fail"]), st.integers(0, 20)), max_size=60))
@settings(derandomize=True, deadline=None, max_examples=200)
def test_accounting_holds_under_any_sequence(ops):
    b = buf(capacity=30, batch_max_events=4)
    inflight: list = []
    n = 0
    for op, k in ops:
        if op == "pub":
            b.publish([ev(n + i, PRODUCTS[(n + i) % 3]) for i in range(k)])
            n += k
        elif op == "round":
            inflight = b.next_round()
        elif op == "ack" and inflight:
            b.on_stored(inflight.pop(0), duplicate=bool(k % 2))
        elif op == "fail" and inflight:
            inflight.pop(0)
        assert balanced(b)
        assert b.held <= 30 + 3 * 4


# --- NatsSink against a real nats-server --------------------------------------------------------------------


async def stream_messages(url: str, stream: str = "MERCURY_TRADES") -> list:
    """Every message in the stream, in order (an ephemeral ordered read)."""
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream(timeout=5)
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            out.append(await js.get_msg(stream, seq))
        return out
    finally:
        await nc.close()


def events_of(msgs) -> list[dict]:
    return [orjson.loads(p) for m in msgs for p in FrameDecoder().feed(m.data)]


def make_sink(url: str, **kw) -> NatsSink:
    opts = {"buffer_events": 10_000, "buffer_bytes": 1 << 24, "backoff_max": 0.5}
    opts.update(kw)
    return NatsSink(
        url,
        StreamSettings(max_age_s=600, max_bytes=1 << 26, duplicate_window_s=60),
        opts["buffer_events"],
        opts["buffer_bytes"],
        opts["backoff_max"],
        1 << 20,
        P1Metrics(),
        "coinbase",
        backoff_base_s=0.05,
        publish_timeout_s=2.0,
        round_s=opts.get("round_s", 0.0),
    )


async def test_publish_is_acknowledged_and_stored_one_message_per_product_per_round(nats_server):
    async def go():
        sink = make_sink(nats_server)
        await sink.start()
        try:
            await wait_until(lambda: sink.connected, 10, "the sink to connect")
            sink.publish([ev(i, PRODUCTS[i % 3]) for i in range(300)])
            await wait_until(lambda: sink.buffer.acked == 300, 10, "300 acks")
            b = sink.buffer
            assert b.held == 0 and b.dropped_total == 0 and balanced(b)
        finally:
            await sink.stop(5)
        msgs = await stream_messages(nats_server)
        assert len(msgs) == 3  # everything was pending when the first round was made
        assert {m.subject for m in msgs} == {f"trades.coinbase.{p}" for p in PRODUCTS}
        assert all(m.headers[MSG_ID_HEADER] and int(m.headers[EVENTS_HEADER]) == 100 for m in msgs)
        got = events_of(msgs)
        assert sorted(e["trade_id"] for e in got) == list(range(300))
        for p in PRODUCTS:
            ids = [e["trade_id"] for e in got if e["product_id"] == p]
            assert ids == sorted(ids)
        m = sink.metrics.registry
        assert m.get_sample_value("mercurystream_p1_acked_total") == 300
        assert m.get_sample_value("mercurystream_p1_nats_batches_total", {"result": "stored"}) == 3
        assert m.get_sample_value("mercurystream_p1_connected", {"target": "nats"}) == 0

    await asyncio.wait_for(go(), 30)


async def test_a_resent_batch_is_stored_once(nats_server):
    """The same Nats-Msg-Id published twice: the second PubAck says duplicate, the stream has one message."""

    async def go():
        sink = make_sink(nats_server)
        nc = await nats.connect(nats_server, connect_timeout=5, max_reconnect_attempts=0)
        try:
            js = nc.jetstream(timeout=5)
            from mercurystream.shared.jetstream import ensure_stream

            await ensure_stream(js, sink.stream)
            sink.buffer.publish([ev(i) for i in range(10)])
            (batch,) = sink.buffer.next_round()
            assert await sink._send(js, batch) is False
            assert await sink._send(js, batch) is True  # as after a lost PubAck: same id, stored once
            assert sink.buffer.on_stored(batch, duplicate=True) == 10
            assert sink.buffer.resent == 10 and balanced(sink.buffer)
        finally:
            await nc.close()
        msgs = await stream_messages(nats_server)
        assert len(msgs) == 1 and len(events_of(msgs)) == 10

    await asyncio.wait_for(go(), 30)


async def test_events_are_held_across_a_server_restart_and_delivered_once(nats_process):
    async def go():
        sink = make_sink(nats_process.url)
        await sink.start()
        try:
            await wait_until(lambda: sink.connected, 10, "the sink to connect")
            sink.publish([ev(i, PRODUCTS[i % 3]) for i in range(30)])
            await wait_until(lambda: sink.buffer.acked == 30, 10, "the first acks")
            await asyncio.to_thread(nats_process.stop)
            await wait_until(lambda: not sink.connected, 10, "the sink to see the server gone")
            sink.publish([ev(i, PRODUCTS[i % 3]) for i in range(30, 60)])
            await asyncio.sleep(0.3)
            assert sink.held == 30 and balanced(sink.buffer)
            await asyncio.to_thread(nats_process.start)
            await wait_until(lambda: sink.buffer.acked == 60, 20, "the held events after the restart")
            assert sink.reconnects >= 1 and sink.buffer.dropped_total == 0 and balanced(sink.buffer)
        finally:
            await sink.stop(5)
        got = events_of(await stream_messages(nats_process.url))
        assert sorted(e["trade_id"] for e in got) == list(range(60))

    await asyncio.wait_for(go(), 60)


async def test_a_deleted_stream_is_recreated_and_nothing_is_lost(nats_server):
    async def go():
        sink = make_sink(nats_server)
        await sink.start()
        nc = await nats.connect(nats_server, connect_timeout=5, max_reconnect_attempts=0)
        try:
            await wait_until(lambda: sink.connected, 10, "the sink to connect")
            sink.publish([ev(i) for i in range(10)])
            await wait_until(lambda: sink.buffer.acked == 10, 10, "the first acks")
            await nc.jetstream(timeout=5).delete_stream("MERCURY_TRADES")
            sink.publish([ev(i) for i in range(10, 20)])
            await wait_until(lambda: sink.buffer.acked == 20, 20, "the acks after the stream came back")
            assert sink.reconnects >= 1 and balanced(sink.buffer)
            failed = sink.metrics.registry.get_sample_value("mercurystream_p1_nats_batches_total", {"result": "failed"})
            assert 1 <= failed <= 10  # retried with backoff, not in a tight loop
        finally:
            await nc.close()
            await sink.stop(5)
        got = events_of(await stream_messages(nats_server))
        assert sorted(e["trade_id"] for e in got) == list(range(10, 20))

    await asyncio.wait_for(go(), 40)


async def test_stop_without_a_server_counts_what_is_held_as_shutdown():
    async def go():
        from mercurystream.processes import free_port

        sink = make_sink(f"nats://127.0.0.1:{free_port()}")
        await sink.start()
        sink.publish([ev(i) for i in range(5)])
        await sink.stop(0.3)
        b = sink.buffer
        assert b.dropped["shutdown"] == 5 and b.held == 0 and balanced(b)
        assert sink.metrics.registry.get_sample_value("mercurystream_p1_dropped_total", {"reason": "shutdown"}) == 5

    await asyncio.wait_for(go(), 20)


@pytest.mark.parametrize("n", [5000])
async def test_many_events_many_rounds_all_acknowledged(nats_server, n):
    async def go():
        sink = make_sink(nats_server)
        await sink.start()
        try:
            for i in range(0, n, 100):
                sink.publish([ev(j, PRODUCTS[j % 3]) for j in range(i, i + 100)])
                await asyncio.sleep(0)
            await wait_until(lambda: sink.buffer.acked == n, 20, "every ack")
        finally:
            await sink.stop(5)
        got = events_of(await stream_messages(nats_server))
        assert sorted(e["trade_id"] for e in got) == list(range(n))

    await asyncio.wait_for(go(), 40)


async def test_rounds_start_at_most_every_round_s_while_trades_keep_coming_and_a_lone_trade_goes_at_once(nats_server):
    async def go():
        sink = make_sink(nats_server, round_s=0.05)
        await sink.start()
        try:
            await wait_until(lambda: sink.connected, 10, "the sink to connect")
            t0 = time.monotonic()
            sink.publish([ev(0)])
            await wait_until(lambda: sink.buffer.acked == 1, 10, "the first ack")
            assert time.monotonic() - t0 < 0.05  # after a quiet spell: no wait for the round
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            n = 1
            while time.monotonic() - t0 < 0.5:  # a trade every millisecond for half a second
                sink.publish([ev(n)])
                n += 1
                await asyncio.sleep(0.001)
            await wait_until(lambda: sink.buffer.acked == n, 10, "every ack")
        finally:
            await sink.stop(5)
        msgs = await stream_messages(nats_server)
        assert 1 + 5 <= len(msgs) <= 1 + 0.5 / 0.05 + 2  # one message a round, a round every 50 ms
        assert sorted(e["trade_id"] for e in events_of(msgs)) == list(range(n))

    await asyncio.wait_for(go(), 30)


@pytest.mark.parametrize(
    ("var", "value"), [("P1_SINK", "kafka"), ("NATS_STREAM", "a.b"), ("P1_BUFFER_BYTES", "0"), ("NATS_ROUND_MS", "-1")]
)
def test_mercury_p1_exits_2_with_one_line_on_a_bad_nats_setting(var, value):
    import os
    import subprocess
    import sys

    from mercurystream.processes import child_env

    env = child_env({var: value})
    got = subprocess.run([os.path.join(os.path.dirname(sys.executable), "mercury-p1")], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert got.returncode == 2
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1 and var in lines[0], got.stderr
