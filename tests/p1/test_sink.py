from __future__ import annotations

import asyncio
import socket
import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.p1.metrics import P1Metrics
from mercurystream.p1.sink import AckProtocolError, SendBuffer, TcpSink
from mercurystream.shared.framing import encode_frame, encode_frames

from .conftest import wait_until


def ev(i: int) -> bytes:
    return b'{"trade_id":%d}' % i


def evs(lo: int, hi: int) -> list[bytes]:
    return [ev(i) for i in range(lo, hi)]


def balanced(b: SendBuffer) -> bool:
    return b.published == b.acked + b.dropped_total + b.held


def ack(n: int, final: bool = False) -> bytes:
    return encode_frame(orjson.dumps({"ack": n, "final": True} if final else {"ack": n}))


# --- SendBuffer: the protocol without a socket ---------------------------------------------


def test_publish_within_capacity_holds_everything_in_order():
    b = SendBuffer(10, 1 << 20)
    assert b.publish(evs(0, 4)) == (0, 0)
    assert b.publish(evs(4, 7)) == (0, 0)
    assert list(b.pending) == evs(0, 7)
    assert b.held == 7 and balanced(b)


def test_drop_oldest_when_full():
    b = SendBuffer(5, 1 << 20)
    b.publish(evs(0, 3))
    assert b.publish(evs(3, 8)) == (3, 0)
    assert list(b.pending) == evs(3, 8)
    assert b.dropped["buffer_full"] == 3 and balanced(b)
    assert b.publish(evs(8, 20)) == (12, 0)
    assert list(b.pending) == evs(15, 20)
    assert b.dropped["buffer_full"] == 15 and balanced(b)


def test_drop_oldest_when_over_the_byte_bound():
    """A few large events fill the bytes long before the count: the oldest unsent go, the newest stay."""
    big = [b'{"trade_id":%d,"pad":"%s"}' % (i, b"x" * 1000) for i in range(10)]
    size = len(big[0])
    b = SendBuffer(1000, 1 << 20, capacity_bytes=3 * size)
    b.on_connect()
    b.publish(big[:2])
    assert b.take(1) == big[:1]
    assert b.publish(big[2:6]) == (3, 0)
    assert list(b.unacked) == big[:1] and list(b.pending) == big[4:6]
    assert b.held_bytes == 3 * size and balanced(b)
    b.on_ack(1)
    assert b.held_bytes == 2 * size
    assert b.publish([big[6], ev(1)]) == (1, 0)
    assert list(b.pending) == [big[5], big[6], ev(1)] and b.held_bytes == 2 * size + len(ev(1))
    assert balanced(b)


def test_unacked_counts_toward_capacity_and_is_never_dropped_for_space():
    b = SendBuffer(5, 1 << 20)
    b.on_connect()
    b.publish(evs(0, 3))
    assert b.take(100) == evs(0, 3)
    assert b.publish(evs(3, 7)) == (2, 0)
    assert list(b.unacked) == evs(0, 3)
    assert list(b.pending) == evs(5, 7)
    assert balanced(b)


def test_take_respects_max_and_connection():
    b = SendBuffer(100, 1 << 20)
    b.publish(evs(0, 10))
    assert b.take(4) == []
    b.on_connect()
    assert b.take(4) == evs(0, 4)
    assert b.take(100) == evs(4, 10)
    assert b.conn_sent == 10 and b.forwarded == 10 and len(b.unacked) == 10


def test_acks_release_in_order_and_are_cumulative():
    b = SendBuffer(100, 1 << 20)
    b.on_connect()
    b.publish(evs(0, 10))
    b.take(100)
    assert b.on_ack(3) == 3
    assert b.on_ack(3) == 0
    assert b.on_ack(10) == 7
    assert b.acked == 10 and b.held == 0 and balanced(b)


@pytest.mark.parametrize("n", [-1, 11])
def test_ack_outside_what_was_sent_is_a_protocol_error(n):
    b = SendBuffer(100, 1 << 20)
    b.on_connect()
    b.publish(evs(0, 10))
    b.take(100)
    b.on_ack(0)
    with pytest.raises(AckProtocolError):
        b.on_ack(n)


def test_acks_count_per_connection():
    b = SendBuffer(100, 1 << 20)
    b.on_connect()
    b.publish(evs(0, 5))
    b.take(100)
    b.on_ack(5)
    b.on_disconnect()
    b.on_connect()
    b.publish(evs(5, 8))
    b.take(100)
    assert b.on_ack(2) == 2
    assert b.acked == 7


def test_final_ack_requeues_exactly_the_unread_events_first():
    b = SendBuffer(100, 1 << 20)
    b.on_connect()
    b.publish(evs(0, 10))
    b.take(100)
    b.publish(evs(10, 12))
    acked, final = b.on_bytes(ack(4, final=True))
    assert (acked, final) == (4, True)
    assert list(b.pending) == evs(4, 12)
    assert b.resent == 6 and not b.unacked and balanced(b)
    assert b.take(100) == [], "nothing more is sent on a connection P2 closed"


def test_abrupt_disconnect_counts_unacked_as_dropped():
    b = SendBuffer(100, 1 << 20)
    b.on_connect()
    b.publish(evs(0, 10))
    b.take(6)
    b.on_ack(2)
    assert b.on_disconnect() == 4
    assert b.dropped["unacked_at_disconnect"] == 4
    assert list(b.pending) == evs(6, 10)
    assert balanced(b)


def test_close_counts_everything_held_as_shutdown():
    b = SendBuffer(100, 1 << 20)
    b.on_connect()
    b.publish(evs(0, 10))
    b.take(3)
    assert b.close() == 10
    b.publish(evs(10, 12))
    assert b.dropped["shutdown"] == 12 and b.held == 0 and balanced(b)


def test_oversize_events_are_dropped_not_sent():
    b = SendBuffer(100, 20)
    big = b'{"x":"' + b"a" * 30 + b'"}'
    assert b.publish([ev(1), big, ev(2)]) == (0, 1)
    assert list(b.pending) == [ev(1), ev(2)]
    assert b.dropped["oversize"] == 1 and balanced(b)


def test_acks_survive_any_chunking_and_garbage_frames_are_skipped():
    b = SendBuffer(100, 1 << 20)
    b.on_connect()
    b.publish(evs(0, 10))
    b.take(100)
    stream = ack(2) + encode_frame(b"not json") + encode_frame(b"[1]") + ack(5) + ack(9)
    total = 0
    for i in range(len(stream)):
        total += b.on_bytes(stream[i : i + 1])[0]
    assert total == 9 and b.bad_acks == 2 and b.acked == 9


def test_oversize_ack_frame_is_a_protocol_error():
    b = SendBuffer(100, 1 << 20)
    b.on_connect()
    with pytest.raises(AckProtocolError):
        b.on_bytes((1 << 20).to_bytes(4, "big"))


ops = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(0, 30)),
        st.tuples(st.just("take"), st.integers(1, 20)),
        st.tuples(st.just("ack"), st.floats(0, 1)),
        st.tuples(st.just("final"), st.floats(0, 1)),
        st.tuples(st.just("disconnect"), st.just(0)),
        st.tuples(st.just("connect"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 25), capacity_bytes=st.integers(1, 400), script=ops)
def test_nothing_is_lost_uncounted_and_order_is_kept(capacity, capacity_bytes, script):
    """Under any interleaving: published == acked + dropped + held, both bounds hold, and P2 never sees a duplicate."""
    b = SendBuffer(capacity, 1 << 20, capacity_bytes=capacity_bytes)
    next_id = 0
    delivered: list[bytes] = []
    for op, arg in script:
        if op == "publish":
            b.publish(evs(next_id, next_id + arg))
            next_id += arg
        elif op == "take":
            b.take(arg)
        elif op in ("ack", "final") and b.connected:
            n = b.conn_acked + int(arg * (b.conn_sent - b.conn_acked))
            delivered.extend(list(b.unacked)[: n - b.conn_acked])
            b.on_ack(n)
            if op == "final":
                b.on_final()
        elif op == "disconnect" and b.connected:
            b.on_disconnect()
        elif op == "connect" and not b.connected:
            b.on_connect()
        assert b.held <= capacity
        assert b.held_bytes == sum(map(len, b.pending)) + sum(map(len, b.unacked)) <= capacity_bytes
        assert balanced(b)
    ids = [orjson.loads(p)["trade_id"] for p in delivered]
    assert ids == sorted(set(ids))


# --- TcpSink against an in-test P2 ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_sink(port: int, buffer_events: int = 10_000, metrics: P1Metrics | None = None) -> TcpSink:
    return TcpSink("127.0.0.1", port, buffer_events, 0.2, 1 << 20, metrics or P1Metrics(), backoff_base_s=0.02)


def ids(payloads: list[bytes]) -> list[int]:
    return [orjson.loads(p)["trade_id"] for p in payloads]


async def test_delivers_in_batches_and_counts_acks(fake_p2):
    p2 = await fake_p2()
    metrics = P1Metrics()
    sink = make_sink(p2.port, metrics=metrics)
    await sink.start()
    for lo in range(0, 1000, 100):
        sink.publish(evs(lo, lo + 100))
        await asyncio.sleep(0)
    await wait_until(lambda: sink.buffer.acked == 1000, what="1000 acks")
    assert ids(p2.payloads) == list(range(1000))
    assert metrics.acked_total._value.get() == 1000
    assert metrics.forwarded_total._value.get() == 1000
    assert metrics.connected.labels("p2")._value.get() == 1
    await sink.stop(2.0)
    assert balanced(sink.buffer) and sink.buffer.dropped_total == 0


async def test_holds_while_p2_is_down_then_sends_in_order(fake_p2):
    port = free_port()
    metrics = P1Metrics()
    sink = make_sink(port, metrics=metrics)
    await sink.start()
    sink.publish(evs(0, 50))
    await wait_until(lambda: sink.reconnects >= 2, what="reconnect attempts")
    sink.publish(evs(50, 80))
    assert sink.buffer.held == 80
    assert metrics.buffered._value.get() == 80
    p2 = await fake_p2(port=port)
    await wait_until(lambda: sink.buffer.acked == 80, what="held events delivered")
    assert ids(p2.payloads) == list(range(80))
    assert metrics.reconnects_total.labels("p2")._value.get() >= 2
    await sink.stop(2.0)


async def test_drop_oldest_while_p2_is_down(fake_p2):
    port = free_port()
    metrics = P1Metrics()
    sink = make_sink(port, buffer_events=10, metrics=metrics)
    await sink.start()
    sink.publish(evs(0, 7))
    sink.publish(evs(7, 25))
    assert metrics.dropped_total.labels("buffer_full")._value.get() == 15
    p2 = await fake_p2(port=port)
    await wait_until(lambda: sink.buffer.acked == 10, what="the 10 newest delivered")
    assert ids(p2.payloads) == list(range(15, 25))
    await sink.stop(2.0)
    assert balanced(sink.buffer)


async def test_final_ack_resends_exactly_what_p2_never_read(fake_p2):
    p2a = await fake_p2(ack=False)
    metrics = P1Metrics()
    sink = make_sink(p2a.port, metrics=metrics)
    await sink.start()
    sink.publish(evs(0, 100))
    await wait_until(lambda: len(p2a.payloads) == 100, what="first P2 read everything")
    await p2a.stop_graceful(keep=40)
    await wait_until(lambda: sink.buffer.resent == 60, what="final ack processed")
    sink.publish(evs(100, 110))
    p2b = await fake_p2(port=p2a.port)
    await wait_until(lambda: sink.buffer.acked == 110, what="resend acknowledged")
    delivered = ids(p2a.payloads) + ids(p2b.payloads)
    assert delivered == list(range(110)), "no loss, no duplicate, in order"
    assert metrics.resent_total._value.get() == 60
    assert metrics.forwarded_total._value.get() == 170
    assert sink.buffer.dropped_total == 0
    await sink.stop(2.0)


async def test_abrupt_disconnect_counts_unacked_and_goes_on(fake_p2):
    p2a = await fake_p2(ack=False)
    metrics = P1Metrics()
    sink = make_sink(p2a.port, metrics=metrics)
    await sink.start()
    sink.publish(evs(0, 50))
    await wait_until(lambda: len(p2a.payloads) == 50, what="first P2 read everything")
    await p2a.crash()
    await wait_until(lambda: sink.buffer.dropped["unacked_at_disconnect"] == 50, what="unacked counted")
    assert metrics.dropped_total.labels("unacked_at_disconnect")._value.get() == 50
    sink.publish(evs(50, 70))
    p2b = await fake_p2(port=p2a.port)
    await wait_until(lambda: sink.buffer.acked == 20, what="later events delivered")
    assert ids(p2b.payloads) == list(range(50, 70))
    assert balanced(sink.buffer)
    await sink.stop(2.0)


async def test_stop_flushes_what_is_held_and_waits_for_acks(fake_p2):
    port = free_port()
    sink = make_sink(port)
    await sink.start()
    sink.publish(evs(0, 500))
    p2 = await fake_p2(port=port)
    await sink.stop(10.0)
    assert ids(p2.payloads) == list(range(500))
    assert sink.buffer.acked == 500 and sink.buffer.dropped_total == 0


async def test_stop_is_bounded_and_counts_the_rest_as_shutdown():
    metrics = P1Metrics()
    sink = make_sink(free_port(), metrics=metrics)
    await sink.start()
    sink.publish(evs(0, 30))
    started = time.monotonic()
    await sink.stop(0.3)
    assert time.monotonic() - started < 3.0
    assert metrics.dropped_total.labels("shutdown")._value.get() == 30
    assert metrics.buffered._value.get() == 0
    assert balanced(sink.buffer)


async def test_stop_with_nothing_held_returns_at_once():
    sink = make_sink(free_port())
    await sink.start()
    started = time.monotonic()
    await sink.stop(5.0)
    assert time.monotonic() - started < 1.0


async def test_bogus_ack_closes_the_connection_and_counts_unacked(fake_p2):
    """A peer acking more than was sent is not P2: drop the connection, count, reconnect."""
    got: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.read(65536))
        writer.write(encode_frames([orjson.dumps({"ack": 10_000})]))
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    sink = make_sink(server.sockets[0].getsockname()[1])
    await sink.start()
    sink.publish(evs(0, 5))
    await wait_until(lambda: sink.buffer.dropped["unacked_at_disconnect"] == 5, what="bogus ack handled")
    server.close()
    await sink.stop(0.2)
    assert balanced(sink.buffer)


@pytest.mark.parametrize("host", ["foo..bar", "a" * 64 + ".example"])
async def test_a_host_the_resolver_refuses_is_retried_never_a_dead_task(host):
    """The resolver raises UnicodeError (not OSError) for these names: a counted retry like any failed connect."""
    metrics = P1Metrics()
    sink = TcpSink(host, 9, 100, 0.05, 1 << 20, metrics, backoff_base_s=0.01)
    await sink.start()
    sink.publish(evs(0, 5))
    await wait_until(lambda: sink.reconnects >= 3, what="retries")
    assert sink._task is not None and not sink._task.done()
    assert metrics.reconnects_total.labels("p2")._value.get() >= 3
    assert sink.buffer.held == 5 and sink.buffer.dropped_total == 0
    await sink.stop(0.1)  # used to re-raise the dead task's UnicodeError
    assert sink.buffer.dropped["shutdown"] == 5 and balanced(sink.buffer)


async def test_publish_after_stop_is_counted_as_shutdown():
    metrics = P1Metrics()
    sink = make_sink(free_port(), metrics=metrics)
    await sink.start()
    await sink.stop(0.1)
    sink.publish(evs(0, 4))
    assert metrics.dropped_total.labels("shutdown")._value.get() == 4
    assert balanced(sink.buffer)
