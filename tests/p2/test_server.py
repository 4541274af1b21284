"""TCP ingest: the sans-I/O receive path byte for byte, then the real server over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from itertools import pairwise

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.p2.bus import Bus, Subscription
from mercurystream.p2.metrics import P2Metrics
from mercurystream.p2.server import ACK_HIGH_WATER, IngestDecoder, TcpSource, _Connection, ack_frame
from mercurystream.shared.event import latency_ms
from mercurystream.shared.framing import HEADER, FrameDecoder, decode_object, encode_frame, encode_frames
from tests.p2.support import counted, eventually

RECV_US = 1_700_000_000_123_456
SUFFIX = b',"recv_ts_ms":1700000000123,"recv_ts_us":1700000000123456}'
STAMPS = {"recv_ts_ms": RECV_US // 1000, "recv_ts_us": RECV_US}


class FixedClock:
    def __init__(self, us: int = RECV_US) -> None:
        self.us = us
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.us


def received(batch) -> list[dict]:
    """The batch's events as received: its recorded lines without the stamps P2 spliced in."""
    out = []
    for line in batch.lines:
        obj = orjson.loads(line)
        if obj.get("recv_ts_us") == RECV_US:
            del obj["recv_ts_ms"], obj["recv_ts_us"]
        out.append(obj)
    return out


def trade(i: int, **extra: object) -> dict:
    return {"type": "match", "product_id": "BTC-USD", "price": 100.5, "last_size": 0.25, "trade_id": i, **extra}


# ---------------------------------------------------------------- the receive path, no sockets


def test_one_read_is_one_batch_with_one_clock_read() -> None:
    clock = FixedClock()
    ingest = IngestDecoder(clock_us=clock)
    payloads = [orjson.dumps(trade(i)) for i in range(3)]
    got = ingest.feed(encode_frames(payloads))
    assert clock.calls == 1
    assert got.errors == [] and got.oversize is None
    batch = got.batch
    assert len(batch) == 3
    assert batch.recv_ts_us == RECV_US
    assert batch.lines == [p[:-1] + SUFFIX for p in payloads]
    assert received(batch) == [trade(i) for i in range(3)]
    assert [orjson.loads(line) for line in batch.lines] == [{**trade(i), **STAMPS} for i in range(3)]
    assert ingest.frames == 3


def test_a_read_without_a_whole_frame_reads_no_clock() -> None:
    clock = FixedClock()
    ingest = IngestDecoder(clock_us=clock)
    frame = encode_frame(b'{"a":1}')
    got = ingest.feed(frame[:5])
    assert got.batch is None and clock.calls == 0
    assert ingest.feed(frame[5:]).batch.lines == [b'{"a":1' + SUFFIX]


@pytest.mark.parametrize(
    ("payload", "line"),
    [
        (b'{"a":1}', b'{"a":1' + SUFFIX),
        (b'{"a":1}  \n\t\r', b'{"a":1' + SUFFIX),
        (b'{"a":1 }\n', b'{"a":1 ' + SUFFIX),
        (b' \n{"a":{"b":{}}}', b'  {"a":{"b":{}}' + SUFFIX),  # a raw line break is blanked
        (b"{}", b"{" + SUFFIX[1:]),
        (b" { } \n", b"{" + SUFFIX[1:]),
    ],
)
def test_recorded_line_splices_the_stamps_before_the_closing_brace(payload: bytes, line: bytes) -> None:
    got = IngestDecoder(clock_us=FixedClock()).feed(encode_frame(payload))
    assert got.batch.lines == [line]
    assert orjson.loads(line) == {**received(got.batch)[0], **STAMPS}


def test_existing_recv_stamps_are_kept_with_the_payload_unchanged() -> None:
    payload = orjson.dumps(trade(1, ingest_ts_us=5_000, recv_ts_ms=9, recv_ts_us=9_500))
    got = IngestDecoder(clock_us=FixedClock()).feed(encode_frame(payload))
    assert got.batch.lines == [payload]
    assert received(got.batch) == [orjson.loads(payload)]
    assert got.latencies == [4.5]


@settings(max_examples=200, deadline=None)
@given(
    obj=st.dictionaries(
        st.text(max_size=6).filter(lambda k: not k.startswith("recv_ts")),
        st.integers(-(2**53), 2**53) | st.text(max_size=6) | st.booleans() | st.none(),
        max_size=6,
    ),
    pad=st.sampled_from([b"", b" ", b"\n", b" \r\n\t"]),
    ingest=st.sampled_from(["none", "ms", "us", "both", "bad"]),
)
def test_every_line_parses_to_its_event_and_latency_matches_the_definition(obj: dict, pad: bytes, ingest: str) -> None:
    if ingest in ("ms", "both"):
        obj["ingest_ts_ms"] = RECV_US // 1000 - 3
    if ingest in ("us", "both"):
        obj["ingest_ts_us"] = RECV_US - 2_345
    if ingest == "bad":
        obj["ingest_ts_us"] = "soon"
    payload = orjson.dumps(obj) + pad
    got = IngestDecoder(clock_us=FixedClock()).feed(encode_frame(payload))
    recorded = orjson.loads(got.batch.lines[0])
    assert recorded == {**obj, **STAMPS}
    expected = latency_ms(recorded)
    assert list(got.latencies) == ([] if expected is None else [expected])
    assert list(got.batch.latency_at) == ([0] if expected is not None else [])


def test_frame_errors_are_classified_and_counted_in_frames() -> None:
    ingest = IngestDecoder(clock_us=FixedClock())
    stream = encode_frames([b"{nope", b"[1]", orjson.dumps(trade(1)), b"", b"7"])
    got = ingest.feed(stream)
    assert got.errors == [
        ("invalid_json", b"{nope"),
        ("not_object", b"[1]"),
        ("invalid_json", b""),
        ("not_object", b"7"),
    ]
    assert [e["trade_id"] for e in received(got.batch)] == [1]
    assert ingest.frames == 5


def test_only_errors_publish_nothing() -> None:
    got = IngestDecoder(clock_us=FixedClock()).feed(encode_frame(b"null"))
    assert got.batch is None
    assert got.errors == [("not_object", b"null")]


def test_oversize_keeps_the_frames_before_it() -> None:
    ingest = IngestDecoder(max_frame_bytes=64, clock_us=FixedClock())
    got = ingest.feed(encode_frame(b'{"a":1}') + HEADER.pack(65) + b"x" * 65)
    assert got.oversize is not None and got.oversize.length == 65
    assert got.batch.lines == [b'{"a":1' + SUFFIX]
    assert ingest.frames == 1


def test_ack_frames() -> None:
    assert decode_object(FrameDecoder().feed(ack_frame(7))[0])[0] == {"ack": 7}
    assert decode_object(FrameDecoder().feed(ack_frame(0, final=True))[0])[0] == {"ack": 0, "final": True}


# ---------------------------------------------------------------- the protocol shell with a fake transport


class FakeTransport:
    def __init__(self, buffered: int = 0) -> None:
        self.buffered = buffered
        self.written: list[bytes] = []
        self.closing = False
        self.paused = False

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 5555) if name == "peername" else None

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.paused = True

    def close(self) -> None:
        self.closing = True

    def acks(self) -> list[dict]:
        return [decode_object(p)[0] for p in FrameDecoder().feed(b"".join(self.written))]


def make_source(**kw: object) -> tuple[TcpSource, Bus, Subscription, P2Metrics]:
    bus = Bus()
    sub = bus.subscribe("test", 1_000_000)
    metrics = P2Metrics()
    source = TcpSource("127.0.0.1", 0, bus, metrics, clock_us=FixedClock(), **kw)
    return source, bus, sub, metrics


async def test_no_acks_to_a_peer_that_does_not_read_them() -> None:
    source, _, sub, _ = make_source()
    conn = _Connection(source)
    transport = FakeTransport(buffered=ACK_HIGH_WATER + 1)
    conn.connection_made(transport)
    conn.data_received(encode_frames([b'{"a":1}'] * 3))
    assert transport.written == []
    assert sub.depth == 3
    transport.buffered = 0
    conn.data_received(encode_frame(b'{"a":1}'))
    assert transport.acks() == [{"ack": 4}]
    conn.data_received(encode_frame(b'{"a":1}')[:3])  # no new frame: no new ack
    assert transport.acks() == [{"ack": 4}]
    conn.finish()
    assert transport.paused and transport.closing
    assert transport.acks() == [{"ack": 4}, {"ack": 4, "final": True}]
    conn.connection_lost(None)
    assert source.frame_errors["truncated"] == 0  # we stopped reading: the partial frame will be resent


# ---------------------------------------------------------------- the real server over loopback


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.acks: list[dict] = []

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_acks(self, timeout: float = 10.0) -> bool:
        """Read until at least one more ack arrives; ``False`` at EOF."""
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return False
            payloads = self.decoder.feed(data)
            if payloads:
                self.acks.extend(decode_object(p)[0] for p in payloads)
                return True

    async def wait_ack(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.acks or self.acks[-1]["ack"] < n:
            assert time.monotonic() < deadline, f"no ack {n}, got {self.acks}"
            assert await self.read_acks(timeout), f"EOF before ack {n}, got {self.acks}"

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def events_of(sub: Subscription) -> tuple[list[dict], list[bytes]]:
    events: list[dict] = []
    lines: list[bytes] = []
    for b in sub.take_nowait():
        events.extend(received(b))
        lines.extend(b.lines)
    return events, lines


@pytest.fixture
async def server():
    source, _, sub, metrics = make_source(max_frame_bytes=4096)
    await source.start()
    try:
        yield source, sub, metrics
    finally:
        await source.stop(timeout_s=5)


async def test_chunked_frames_arrive_stamped_in_order_and_acked(server) -> None:
    source, sub, metrics = server
    assert source.port > 0
    payloads = [orjson.dumps(trade(i, ingest_ts_ms=RECV_US // 1000 - 1, ingest_ts_us=RECV_US - 700)) for i in range(20)]
    stream = encode_frames(payloads)
    client = await Client.connect(source.port)
    for i in range(0, len(stream), 7):
        await client.send(stream[i : i + 7])
    await client.wait_ack(20)
    events, lines = events_of(sub)
    assert [e["trade_id"] for e in events] == list(range(20))
    assert lines == [p[:-1] + SUFFIX for p in payloads]
    assert [orjson.loads(line) for line in lines] == [{**e, **STAMPS} for e in events]
    assert counted(metrics, "mercurystream_events_total") == 20
    assert metrics.latency_ms.count == 20
    assert metrics.latency_ms.sum == pytest.approx(20 * 0.7)
    acks = [a["ack"] for a in client.acks]
    assert acks == sorted(acks) and acks[-1] == 20
    await client.close()


async def test_present_recv_stamps_are_kept(server) -> None:
    source, sub, _ = server
    payload = orjson.dumps(trade(1, recv_ts_ms=42, recv_ts_us=42_000))
    client = await Client.connect(source.port)
    await client.send(encode_frame(payload))
    await client.wait_ack(1)
    events, lines = events_of(sub)
    assert lines == [payload]
    assert events[0]["recv_ts_ms"] == 42 and events[0]["recv_ts_us"] == 42_000
    await client.close()


async def test_bad_frames_are_counted_and_the_connection_goes_on(server) -> None:
    source, sub, metrics = server
    client = await Client.connect(source.port)
    await client.send(encode_frames([b"not json", orjson.dumps(trade(1)), b"[1,2]", b'"s"']))
    await client.wait_ack(4)
    await client.send(encode_frame(orjson.dumps(trade(2))))
    await client.wait_ack(5)
    events, _ = events_of(sub)
    assert [e["trade_id"] for e in events] == [1, 2]
    assert counted(metrics, "mercurystream_frame_errors_total", reason="invalid_json") == 1
    assert counted(metrics, "mercurystream_frame_errors_total", reason="not_object") == 2
    assert counted(metrics, "mercurystream_events_total") == 2
    assert source.connections == 1
    await client.close()


async def test_oversize_header_closes_only_that_connection(server) -> None:
    source, sub, metrics = server
    other = await Client.connect(source.port)
    client = await Client.connect(source.port)
    await client.send(encode_frame(orjson.dumps(trade(1))) + HEADER.pack(4097) + b"x" * 100)
    while await client.read_acks():
        pass
    assert client.acks[-1] == {"ack": 1}
    assert counted(metrics, "mercurystream_frame_errors_total", reason="oversize") == 1
    await other.send(encode_frame(orjson.dumps(trade(2))))
    await other.wait_ack(1)
    events, _ = events_of(sub)
    assert [e["trade_id"] for e in events] == [1, 2]
    await eventually(lambda: source.connections == 1)
    await other.close()
    await client.close()


async def test_several_connections_at_once(server) -> None:
    source, sub, metrics = server
    clients = [await Client.connect(source.port) for _ in range(4)]
    await eventually(lambda: counted(metrics, "mercurystream_connections") == 4)

    async def run(k: int, client: Client) -> None:
        for j in range(10):
            await client.send(encode_frames([orjson.dumps(trade(k * 1000 + j * 10 + m)) for m in range(10)]))
        await client.wait_ack(100)

    await asyncio.gather(*(run(k, c) for k, c in enumerate(clients)))
    events, _ = events_of(sub)
    assert len(events) == 400
    for k in range(4):
        mine = [e["trade_id"] for e in events if e["trade_id"] // 1000 == k]
        assert mine == [k * 1000 + i for i in range(100)]
    for c in clients:
        await c.close()
    await eventually(lambda: counted(metrics, "mercurystream_connections") == 0)
    assert counted(metrics, "mercurystream_connections_accepted_total") == 4
    assert source.connections == 0


async def test_disconnect_mid_frame_counts_truncated(server) -> None:
    source, sub, metrics = server
    client = await Client.connect(source.port)
    frame = encode_frame(orjson.dumps(trade(1)))
    await client.send(frame + frame[:6])
    await client.wait_ack(1)
    await client.close()
    await eventually(lambda: counted(metrics, "mercurystream_frame_errors_total", reason="truncated") == 1)
    assert len(events_of(sub)[0]) == 1


async def test_stop_sends_a_final_ack_for_what_was_read_and_closes() -> None:
    source, _, sub, metrics = make_source()
    await source.start()
    client = await Client.connect(source.port)
    frame = encode_frame(orjson.dumps(trade(1)))
    await client.send(frame * 3 + frame[:10])
    await client.wait_ack(3)
    await source.stop(timeout_s=5)
    while await client.read_acks():
        pass
    assert client.acks[-1] == {"ack": 3, "final": True}
    assert len(events_of(sub)[0]) == 3
    assert source.connections == 0
    assert counted(metrics, "mercurystream_frame_errors_total", reason="truncated") == 0
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", source.port)
    await client.close()


async def test_stop_aborts_a_connection_that_does_not_close_in_time() -> None:
    """A peer that never reads its final ack cannot hold P2's shutdown past the bound."""

    class Stuck(FakeTransport):
        def close(self) -> None:
            self.closing = True  # the final ack never drains, so connection_lost never comes

        def abort(self) -> None:
            self.aborted = True
            conn.connection_lost(None)

    source, _, sub, _ = make_source()
    await source.start()
    conn = _Connection(source)
    transport = Stuck()
    conn.connection_made(transport)
    conn.data_received(encode_frame(b'{"a":1}'))
    t0 = time.monotonic()
    await source.stop(timeout_s=0.2)
    assert time.monotonic() - t0 < 5
    assert transport.aborted
    assert transport.acks()[-1] == {"ack": 1, "final": True}
    assert source.connections == 0
    assert sub.depth == 1


def test_pretty_printed_payload_is_recorded_on_one_line():
    from mercurystream.p2.server import IngestDecoder
    from mercurystream.shared.framing import encode_frame

    dec = IngestDecoder(1 << 20, lambda: 1_700_000_000_000_000)
    got = dec.feed(encode_frame(b'{\n  "type": "match",\r\n  "trade_id": 1\n}'))
    (line,) = got.batch.lines
    assert b"\n" not in line and b"\r" not in line
    assert orjson.loads(line) == {
        "type": "match",
        "trade_id": 1,
        "recv_ts_ms": 1_700_000_000_000,
        "recv_ts_us": 1_700_000_000_000_000,
    }


@pytest.mark.parametrize("brk", [b"\n", b"\r", b"\r\n"])
def test_a_raw_line_break_inside_a_string_is_invalid_json_not_blanked(brk: bytes) -> None:
    """Blanked before parsing, ``"BTC\\n-USD"`` was the valid trade ``BTC -USD``; a raw control character
    in a string is not JSON, in a read of its own or beside valid payloads (pretty-printed ones too)."""
    bad = orjson.dumps(trade(2, ingest_ts_ms=1)).replace(b"BTC-USD", b"BTC" + brk + b"-USD")
    pretty = b"{" + brk + orjson.dumps(trade(3, ingest_ts_ms=1))[1:]
    for payloads in ([bad], [orjson.dumps(trade(1, ingest_ts_ms=1)), bad, pretty]):
        got = IngestDecoder(clock_us=FixedClock()).feed(encode_frames(payloads))
        assert got.errors == [("invalid_json", bad)]
        assert (got.batch is None) if len(payloads) == 1 else got.batch.trade_ids == (1, 3)
        assert got.batch is None or all(b"\n" not in line and b"\r" not in line for line in got.batch.lines)


# ---------------------------------------------------------------- batch-wide work in the receive path


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(
        st.sampled_from(
            [
                orjson.dumps(trade(1, ingest_ts_us=RECV_US - 700)),
                b'{\n"a": 1}',
                b'{"a":\r2}\r\n',
                b'{"b":3}',
                b"{}",
                b"not json\n",
                orjson.dumps(trade(2, ingest_ts_ms=RECV_US // 1000 - 1)),
                orjson.dumps(trade(3, ingest_ts_us=5_000, recv_ts_ms=9, recv_ts_us=9_500)),
            ]
        ),
        min_size=1,
        max_size=12,
    ),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_any_chunking_gives_what_one_payload_per_read_gives(payloads: list[bytes], cuts: list[int]) -> None:
    """Line breaks are found by one scan per read, carried over a frame cut between reads."""
    stream = encode_frames(payloads)
    one_by_one = IngestDecoder(clock_us=FixedClock())
    expected_lines: list[bytes] = []
    expected_errors: list[tuple[str, bytes]] = []
    expected_latencies: list[float] = []
    for p in payloads:
        got = one_by_one.feed(encode_frame(p))
        expected_errors.extend(got.errors)
        expected_latencies.extend(got.latencies)
        if got.batch is not None:
            expected_lines.extend(got.batch.lines)
    chunked = IngestDecoder(clock_us=FixedClock())
    lines: list[bytes] = []
    errors: list[tuple[str, bytes]] = []
    latencies: list[float] = []
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    for a, b in pairwise(bounds):
        got = chunked.feed(stream[a:b])
        errors.extend(got.errors)
        latencies.extend(got.latencies)
        if got.batch is not None:
            lines.extend(got.batch.lines)
            assert all(b"\n" not in line and b"\r" not in line for line in got.batch.lines)
            by_line = [latency_ms(orjson.loads(line)) for line in got.batch.lines]
            at = got.batch.latency_at
            assert list(got.batch.latencies) == [by_line[i] for i in at]
            assert [i for i, lat in enumerate(by_line) if lat is not None] == list(at)
    assert (lines, errors, latencies) == (expected_lines, expected_errors, expected_latencies)


def test_a_batch_carries_every_latency_and_ingest_stamp_when_all_events_have_them() -> None:
    payloads = [orjson.dumps(trade(i, ingest_ts_us=RECV_US - 1000 * i)) for i in range(3)]
    batch = IngestDecoder(clock_us=FixedClock()).feed(encode_frames(payloads)).batch
    assert list(batch.latencies) == [0.0, 1.0, 2.0]
    assert list(batch.ingest_us) == [RECV_US, RECV_US - 1000, RECV_US - 2000]
    mixed = [payloads[0], orjson.dumps(trade(9)), payloads[2]]
    batch = IngestDecoder(clock_us=FixedClock()).feed(encode_frames(mixed)).batch
    assert list(batch.latencies) == [0.0, 2.0] and list(batch.latency_at) == [0, 2]
    assert list(batch.ingest_us) == [RECV_US, None, RECV_US - 2000]


def p1_event(i: int, **extra: object) -> dict:
    """An event exactly as P1 writes it."""
    return {
        **trade(i),
        "time": "2024-05-01T12:00:00.000001Z",
        "sequence": 100 + i,
        "side": "buy",
        "ingest_ts_ms": (RECV_US - 500) // 1000,
        "ingest_ts_us": RECV_US - 500 - i,
        **extra,
    }


def test_a_p1_read_becomes_clean_columns() -> None:
    payloads = [orjson.dumps(p1_event(i)) for i in range(3)]
    batch = IngestDecoder(clock_us=FixedClock()).feed(encode_frames(payloads)).batch
    assert batch.clean and tuple(batch.trade_ids) == (0, 1, 2)
    assert list(batch.latencies) == [0.5, 0.501, 0.502] and list(batch.latency_at) == [0, 1, 2]
    assert list(batch.ingest_us) == [RECV_US - 500 - i for i in range(3)]
    assert batch.lines == [p[:-1] + SUFFIX for p in payloads]
    assert received(batch) == [p1_event(i) for i in range(3)]


def test_accept_publishes_and_counts_without_a_socket() -> None:
    source, _, sub, metrics = make_source()
    got = IngestDecoder(clock_us=FixedClock()).feed(encode_frames([b'{"a":1}', b"[1]", b'{"b":2}']))
    source.accept(got, "peer")
    assert sub.depth == 2 and source.events == 2
    assert source.frame_errors["not_object"] == 1
    assert counted(metrics, "mercurystream_events_total") == 2


async def test_protocol_is_a_connection_of_this_source() -> None:
    source, _, sub, _ = make_source()
    conn = source.protocol()
    conn.connection_made(FakeTransport())
    conn.data_received(encode_frame(b'{"a":1}'))
    assert sub.depth == 1 and source.connections == 1


def test_the_decoder_bounds_trade_times_by_its_own_clock_and_skew() -> None:
    clock = FixedClock()
    ahead = {**trade(1), "time": "2099-01-01T00:00:00.000000Z"}
    assert IngestDecoder(clock_us=clock).feed(encode_frame(orjson.dumps(ahead))).batch.trades().future == [0]
    lax = IngestDecoder(clock_us=clock, max_future_skew_s=1e10)
    assert lax.feed(encode_frame(orjson.dumps(ahead))).batch.trades().future == []


# ---------------------------------------------------------------- connection bounds


async def bounded_server(**kw: object):
    source, _, sub, metrics = make_source(max_frame_bytes=8192, **kw)
    await source.start()
    return source, sub, metrics


async def closed_by_peer(client: Client, timeout: float = 5.0) -> bool:
    """Whether P2 closes this connection within ``timeout`` (acks are read and ignored)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = await asyncio.wait_for(client.reader.read(65536), deadline - time.monotonic())
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        if not data:
            return True
    return False


async def test_an_idle_connection_is_closed_after_the_idle_timeout_and_counted() -> None:
    source, _sub, metrics = await bounded_server(idle_timeout_s=0.3, partial_timeout_s=5.0)
    try:
        idle = await Client.connect(source.port)
        busy = await Client.connect(source.port)
        for i in range(8):  # reads every 0.1 s: never idle for 0.3 s
            await busy.send(encode_frame(orjson.dumps(trade(i))))
            await asyncio.sleep(0.1)
        assert await closed_by_peer(idle, 3.0)
        await eventually(lambda: source.closed_by_reason["idle_timeout"] == 1)
        assert source.connections == 1
        assert counted(metrics, "mercurystream_connections_closed_total", reason="idle_timeout") == 1
        assert counted(metrics, "mercurystream_connections") == 1
        await busy.wait_ack(8)
        await busy.close()
    finally:
        await source.stop(timeout_s=5)


async def test_an_unfinished_frame_is_closed_after_the_partial_timeout_without_a_truncated_count() -> None:
    source, _sub, metrics = await bounded_server(idle_timeout_s=60.0, partial_timeout_s=0.3)
    try:
        slow = await Client.connect(source.port)
        frame = encode_frame(orjson.dumps(trade(1)))
        await slow.send(frame + frame[:10])
        await slow.wait_ack(1)
        await eventually(lambda: source.partial_bytes == 10)
        assert counted(metrics, "mercurystream_partial_frame_bytes") == 10
        for _ in range(5):  # a byte now and then keeps it from being idle, not from the partial timeout
            await slow.send(frame[10:11])
            await asyncio.sleep(0.05)
        assert await closed_by_peer(slow, 3.0)
        await eventually(lambda: source.closed_by_reason["partial_timeout"] == 1)
        assert source.partial_bytes == 0
        assert source.frame_errors["truncated"] == 0
        assert counted(metrics, "mercurystream_connections_closed_total", reason="partial_timeout") == 1
    finally:
        await source.stop(timeout_s=5)


async def test_partial_frames_are_bounded_in_total_by_closing_the_largest() -> None:
    source, sub, _metrics = await bounded_server(max_partial_bytes_total=10_000)
    try:
        big_frame = encode_frame(b'{"pad":"' + b"x" * 7000 + b'"}')
        clients = [await Client.connect(source.port) for _ in range(3)]
        await clients[0].send(big_frame[:3000])
        await clients[1].send(big_frame[:5000])
        await eventually(lambda: source.partial_bytes == 8000)
        await clients[2].send(big_frame[:4000])  # 12,000 in total: the one holding 5,000 goes
        assert await closed_by_peer(clients[1], 3.0)
        await eventually(lambda: source.closed_by_reason["partial_budget"] == 1)
        assert source.partial_bytes == 7000
        assert source.connections == 2
        await clients[0].send(big_frame[3000:])  # the others go on
        await clients[0].wait_ack(1)
        assert sub.depth == 1
    finally:
        await source.stop(timeout_s=5)


async def test_at_the_cap_a_newcomer_evicts_the_idlest_connection_or_is_refused_when_all_are_active() -> None:
    source, sub, metrics = await bounded_server(max_connections=3)
    source.active_s = 0.2
    try:
        hostile = [await Client.connect(source.port) for _ in range(3)]
        await eventually(lambda: source.connections == 3)
        await asyncio.sleep(0.3)
        producer = await Client.connect(source.port)
        assert await closed_by_peer(hostile[0], 3.0)  # the longest idle
        await eventually(lambda: source.closed_by_reason["evicted"] == 1)
        for i in range(5):
            await producer.send(encode_frame(orjson.dumps(trade(i))))
            await producer.wait_ack(i + 1)
        # more hostile newcomers: each evicts an idle one, never the producer, which keeps reading
        more = []
        for i in range(4):
            await asyncio.sleep(0.25)
            await producer.send(encode_frame(orjson.dumps(trade(5 + i))))
            await producer.wait_ack(6 + i)
            more.append(await Client.connect(source.port))
            await eventually(lambda n=i: source.closed_by_reason["evicted"] == 2 + n)
        assert source.connections == 3
        # every connection active: the newcomer is refused
        active = [producer, *[await Client.connect(source.port) for _ in range(0)]]
        await producer.send(encode_frame(orjson.dumps(trade(9))))
        await producer.wait_ack(10)
        for c in (more[-1], more[-2]):
            await c.send(encode_frame(orjson.dumps(trade(0))))
        await eventually(lambda: sub.depth == 12)
        late = await Client.connect(source.port)
        assert await closed_by_peer(late, 3.0)
        assert source.closed_by_reason["refused"] == 1
        assert counted(metrics, "mercurystream_connections_closed_total", reason="refused") == 1
        assert not active[0].writer.is_closing()
    finally:
        await source.stop(timeout_s=5)


async def test_the_bus_pressure_pauses_reading_and_the_socket_holds_the_rest_until_consumers_catch_up() -> None:
    bus = Bus(pause_bytes=50_000)
    sub = bus.subscribe("test", 1_000_000)
    metrics = P2Metrics()
    source = TcpSource("127.0.0.1", 0, bus, metrics, clock_us=FixedClock(), idle_timeout_s=0.2)
    await source.start()
    try:
        client = await Client.connect(source.port)
        n = 2000
        client.writer.write(encode_frames([orjson.dumps(trade(i)) for i in range(n)]))
        await eventually(lambda: bus.paused)
        await asyncio.sleep(0.5)  # paused longer than the idle timeout: not idle, it may not read
        assert source.connections == 1
        read = source.events
        assert read < n and sub.dropped == 0
        assert counted(metrics, "mercurystream_ingest_pauses_total") == 1
        assert counted(metrics, "mercurystream_ingest_paused_seconds_total") >= 0.5
        got: list[dict] = []
        while len(got) < n:
            got.extend(events_of(sub)[0])
            await asyncio.sleep(0.01)
        assert [e["trade_id"] for e in got] == list(range(n))
        await client.wait_ack(n)
        assert not bus.paused and sub.dropped == 0
        await client.close()
    finally:
        await source.stop(timeout_s=5)
