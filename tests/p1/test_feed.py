from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import time
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import serve
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader
from websockets.utils import accept_key

from mercurystream.p1.feed import CoinbaseFeed, FeedProtocol, WsClient
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


def test_an_unknown_type_is_labelled_and_logged_within_a_bounded_width():
    proto = FeedProtocol(["BTC-USD"], "matches")
    _, counts = proto.handle([orjson.dumps({"type": "t" * 900_000})])
    assert [len(k) for k in counts] == [64] and list(counts.values()) == [1]


@pytest.mark.parametrize(
    ("symbols", "echoed", "dropped"),
    [
        (["BTC-USD", "BTC USD"], "BTC USD", "BTC USD"),  # a space: the old pattern (\S+) never matched it
        (["BTC-USD", "XYZ-USD"], " xyz-usd ", "XYZ-USD"),  # echoed with spaces or in another case
        (["BTC-USD", "A:B"], "A:B", "A:B"),
    ],
)
def test_a_rejection_is_recognised_whatever_product_string_the_venue_echoes(symbols, echoed, dropped):
    proto = FeedProtocol(symbols, "matches")
    error = {"type": "error", "message": "Failed to subscribe", "reason": f"{echoed} is not a valid product"}
    proto.handle([orjson.dumps(error)])
    assert list(proto.invalid) == [dropped]
    assert [orjson.loads(r)["product_ids"] for r in proto.outbox] == [["BTC-USD"]]
    assert proto.fatal is None


@pytest.mark.parametrize("reason", [" is not a valid product", "ETH-USD is not a valid product", "BTC-USD is fine"])
def test_a_rejection_naming_no_configured_product_is_only_counted(reason):
    proto = FeedProtocol(["BTC-USD"], "matches")
    _, counts = proto.handle([orjson.dumps({"type": "error", "message": "Failed to subscribe", "reason": reason})])
    assert counts == {"error": 1}
    assert proto.invalid == {} and proto.outbox == [] and proto.fatal is None


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
    assert all(s == expected for s in venue.requests)
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


async def test_backoff_keeps_growing_after_a_healthy_session_once_the_venue_is_gone():
    """A subscribed session resets the backoff; the failed connects after it must not (they used to,
    because ``subscribed`` kept that session's answer, so a venue down for good was retried at the base delay)."""

    async def script(ws, n):
        return  # subscribed, then the venue closes the connection

    venue = await FakeVenue(script).start()
    feed = make_feed(venue.url, Collector())
    await feed.start()
    try:
        await wait_until(lambda: feed.connects >= 1 and feed.protocol.subscribed, what="one subscribed session")
        await venue.stop()  # the listener is gone: every attempt from here fails to connect
        await wait_until(lambda: feed.backoff.attempt >= 4, what="the backoff growing after failed connects")
    finally:
        await feed.stop()
    assert feed.protocol.subscribed, "the stale flag the reset used to trust"


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


# --- WsClient: the WebSocket connection without a socket -------------------------------------


def opened_client(max_message_bytes: int = 1 << 20) -> WsClient:
    """A client whose handshake the test has answered as a server would."""
    client = WsClient("ws://venue.test/feed", max_message_bytes)
    client.connect()
    [request] = client.data_to_send()
    assert request.startswith(b"GET /feed HTTP/1.1\r\n") and b"Host: venue.test\r\n" in request
    response = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(client.protocol.key)}\r\n\r\n"
    ).encode()
    assert client.receive(response) == []
    assert client.open and client.state_open
    return client


def server_frame(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=False)


def sent_frames(client: WsClient) -> list[Frame]:
    """Parse what the client queued for the server (masked frames)."""
    reader = StreamReader()
    for chunk in client.data_to_send():
        reader.feed_data(chunk)
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=True)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
    return frames


def test_whole_messages_come_out_of_any_chunking():
    client = opened_client()
    stream = b"".join(server_frame(Opcode.TEXT, orjson.dumps(match(i))) for i in range(5))
    got = []
    for i in range(0, len(stream), 7):
        got += client.receive(stream[i : i + 7])
    assert [orjson.loads(m)["trade_id"] for m in got] == list(range(5))


def test_a_fragmented_message_is_reassembled_once_complete():
    client = opened_client()
    text = orjson.dumps(match(42))
    parts = [text[:10], text[10:50], text[50:]]
    data = (
        server_frame(Opcode.TEXT, parts[0], fin=False)
        + server_frame(Opcode.PING, b"keepalive")  # control frames may interleave with fragments
        + server_frame(Opcode.CONT, parts[1], fin=False)
    )
    assert client.receive(data) == []
    assert client.receive(server_frame(Opcode.CONT, parts[2]) + server_frame(Opcode.BINARY, b"{}")) == [text, b"{}"]
    assert [f.opcode for f in sent_frames(client)] == [Opcode.PONG]


def test_a_ping_is_answered_with_its_payload():
    client = opened_client()
    assert client.receive(server_frame(Opcode.PING, b"abc")) == []
    [pong] = sent_frames(client)
    assert (pong.opcode, pong.data) == (Opcode.PONG, b"abc")
    assert client.pings == 1


def test_an_oversize_message_fails_the_connection_with_1009():
    client = opened_client(max_message_bytes=100)
    assert client.receive(server_frame(Opcode.TEXT, b"x" * 60, fin=False)) == []
    assert client.receive(server_frame(Opcode.CONT, b"x" * 60)) == [], "the limit bounds the whole message"
    assert client.oversize is not None
    [close] = sent_frames(client)
    assert close.opcode is Opcode.CLOSE and Close.parse(close.data).code == 1009
    assert not client.state_open and client.close_expected()
    assert "PayloadTooBig" in (client.failure() or "")


def test_a_server_close_is_echoed():
    client = opened_client()
    assert client.receive(server_frame(Opcode.CLOSE, Close(1001, "going away").serialize())) == []
    [echo] = sent_frames(client)
    assert Close.parse(echo.data).code == 1001
    assert client.close_expected()
    assert client.failure() == "the venue closed the connection: 1001 going away"


def test_a_refused_upgrade_is_a_handshake_failure():
    client = WsClient("ws://venue.test/", 1 << 20)
    client.connect()
    client.data_to_send()
    client.receive(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert not client.open
    assert (client.failure() or "").startswith("handshake failed")


# --- WsClient's own frame split against websockets' parser (the reference) ---------------------

_TEXTS = st.binary(max_size=300) | st.sampled_from([b"x" * n for n in (125, 126, 127, 65_535, 65_536)])


@st.composite
def _frames(draw: st.DrawFn, max_message_bytes: int) -> list[bytes]:
    """One frame or a short run of them, mostly plain data, sometimes what websockets must judge."""
    kind = draw(
        st.sampled_from(
            ["text"] * 6
            + ["binary", "ping", "pong", "fragmented", "start", "cont", "close", "rsv", "opcode", "masked", "big"]
        )
    )
    data = draw(_TEXTS)
    if kind == "text":
        return [server_frame(Opcode.TEXT, data)]
    if kind == "binary":
        return [server_frame(Opcode.BINARY, data)]
    if kind in ("ping", "pong"):
        return [server_frame(Opcode.PING if kind == "ping" else Opcode.PONG, data[:125])]
    if kind == "fragmented":
        parts = draw(st.lists(_TEXTS, min_size=1, max_size=3))
        out = [server_frame(Opcode.TEXT, data, fin=False)]
        for k, part in enumerate(parts):
            if draw(st.booleans()):
                out.append(server_frame(Opcode.PING, b"p"))
            out.append(server_frame(Opcode.CONT, part, fin=k == len(parts) - 1))
        return out
    if kind == "start":  # a fragmented message the next frames interrupt (or continue)
        return [server_frame(Opcode.TEXT, data, fin=False)]
    if kind == "close":
        return [server_frame(Opcode.CLOSE, Close(1001, "bye").serialize())]
    if kind == "rsv":
        frame = server_frame(Opcode.TEXT, data)
        return [bytes([frame[0] | 0x40]) + frame[1:]]
    if kind == "opcode":
        return [bytes([0x83, 1]) + b"x"]
    if kind == "masked":
        return [Frame(Opcode.TEXT, data).serialize(mask=True)]
    if kind == "big":
        return [server_frame(Opcode.TEXT, b"y" * (max_message_bytes + 1))]
    return [server_frame(Opcode.CONT, data)]


def _head(client: WsClient) -> bytes:
    client.connect()
    client.data_to_send()
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(client.protocol.key)}\r\n\r\n"
    ).encode()


def _state(client: WsClient) -> tuple[Any, ...]:
    sent = [(f.opcode, f.data) for f in sent_frames(client)]
    return (client.open, client.state_open, client.pings, client.failure(), client.close_expected(), sent)


def _same_per_read(
    max_message_bytes: int, frames: list[bytes], cuts: list[int], *, eof: bool = False, close_at: int | None = None
) -> None:
    """Feed the handshake and ``frames`` cut at ``cuts`` (the last one ends the stream) to a splitting
    client and to websockets alone; after every read they must agree. ``close_at``: our side starts
    the closing handshake before that read; ``eof``: the venue drops TCP after the last one."""
    split = WsClient("ws://venue.test/feed", max_message_bytes)
    plain = WsClient("ws://venue.test/feed", max_message_bytes, split_frames=False)
    body = b"".join(frames)
    streams = [_head(split) + body, _head(plain) + body]
    start = 0
    for k, cut in enumerate(cuts):
        if k == close_at:
            split.close()
            plain.close()
        got = [c.receive(stream[start:cut]) for c, stream in zip((split, plain), streams, strict=True)]
        assert got[0] == got[1]
        assert _state(split) == _state(plain)
        start = cut
    if eof:
        split.receive_eof()
        plain.receive_eof()
        assert _state(split) == _state(plain)


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data(), max_message_bytes=st.sampled_from([200, 70_000]), eof=st.booleans())
def test_the_frame_split_gives_what_websockets_gives_for_every_read(data: st.DataObject, max_message_bytes, eof):
    """Per read: the same messages, replies, pings and failure, however the stream is cut (often in a header)."""
    frames = [f for run in data.draw(st.lists(_frames(max_message_bytes), max_size=10)) for f in run]
    head = len(_head(WsClient("ws://venue.test/feed", max_message_bytes)))
    starts = [head + sum(map(len, frames[:k])) for k in range(len(frames) + 1)]
    size = starts[-1]
    near = sorted({min(size, s + k) for s in [0, *starts] for k in (1, 2, 3, 4, 5, 11)})
    cuts = data.draw(st.lists(st.sampled_from(near) | st.integers(0, size), max_size=24))
    stop = data.draw(st.integers(0, size)) if eof else size
    cuts = [*sorted({c for c in cuts if c < stop}), stop]
    if size - head <= 1500 and data.draw(st.booleans()):  # a byte a read: every boundary, every delay shows
        cuts = list(range(1, stop + 1))
    close_at = data.draw(st.none() | st.integers(0, len(cuts)))
    _same_per_read(max_message_bytes, frames, cuts, eof=eof, close_at=close_at)


def test_the_frame_split_bounds_a_fragment_by_what_the_message_has_left():
    """websockets fails a continuation at its header once it would take the message over the limit."""
    frames = [server_frame(Opcode.TEXT, b"a" * 150, fin=False), server_frame(Opcode.CONT, b"b" * 100)]
    head = len(_head(WsClient("ws://venue.test/feed", 200)))
    _same_per_read(200, frames, [head + 152 + 4, head + 152 + 102])


# --- CoinbaseFeed: the socket shell around WsClient --------------------------------------------


async def test_fragmented_messages_reach_the_pipeline_whole():
    async def script(ws, n):
        text = orjson.dumps(match(7)).decode()
        await ws.send([text[:20], text[20:90], text[90:]])
        await ws.wait_closed()

    venue = await FakeVenue(script).start()
    got = Collector()
    feed = make_feed(venue.url, got)
    await feed.start()
    try:
        await wait_until(lambda: len(got.trades) == 1, what="the fragmented match")
    finally:
        await feed.stop()
        await venue.stop()
    assert got.trades == [match(7)]


async def test_pings_are_answered():
    pongs: list[float] = []

    async def script(ws, n):
        for _ in range(3):
            pongs.append(await asyncio.wait_for(await ws.ping(), 5.0))
        await ws.wait_closed()

    venue = await FakeVenue(script).start()
    feed = make_feed(venue.url, Collector())
    await feed.start()
    try:
        await wait_until(lambda: len(pongs) == 3, what="three pongs")
    finally:
        await feed.stop()
        await venue.stop()


async def test_a_venue_close_is_answered_and_followed_by_a_reconnect():
    closes: list[int | None] = []

    async def script(ws, n):
        if n == 0:
            await ws.close(1001, "maintenance")
            closes.append(ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None)
        await ws.wait_closed()

    venue = await FakeVenue(script).start()
    feed = make_feed(venue.url, Collector())
    await feed.start()
    try:
        await wait_until(lambda: venue.connections >= 2 and feed.connected, what="a reconnect after the close")
    finally:
        await feed.stop()
        await venue.stop()
    assert closes == [1001], "the feed echoed the venue's close frame"
    assert len(venue.requests) >= 2, "and resubscribed"


async def test_an_oversize_message_is_counted_and_the_feed_reconnects():
    closes: list[int | None] = []

    async def script(ws, n):
        if n == 0:
            await ws.send("x" * 5000)
            await ws.wait_closed()
            closes.append(ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None)
        else:
            await ws.send(orjson.dumps(match(1)).decode())
            await ws.wait_closed()

    venue = await FakeVenue(script).start()
    metrics = P1Metrics()
    got = Collector()
    feed = make_feed(venue.url, got, metrics, max_size=1000)
    await feed.start()
    try:
        await wait_until(lambda: len(got.trades) == 1, what="the trade after the reconnect")
    finally:
        await feed.stop()
        await venue.stop()
    assert closes == [1009]
    assert feed.oversize == 1 and metrics.messages_total.labels("oversize")._value.get() == 1
    assert feed.protocol.counts["oversize"] == 1


async def test_a_venue_that_never_answers_the_handshake_is_retried():
    accepted: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    feed = make_feed(f"ws://127.0.0.1:{port}", Collector(), subscribe_timeout=0.2)
    await feed.start()
    try:
        await wait_until(lambda: len(accepted) >= 2, what="a second attempt after the handshake timeout")
    finally:
        await feed.stop()
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
    assert feed.connects == 0 and feed.reconnects >= 1


async def test_stop_closes_with_a_normal_closure():
    closes: list[int | None] = []

    async def script(ws, n):
        await ws.wait_closed()
        closes.append(ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None)

    venue = await FakeVenue(script).start()
    feed = make_feed(venue.url, Collector())
    await feed.start()
    await wait_until(lambda: feed.connected, what="connected")
    await feed.stop()
    await wait_until(lambda: closes == [1000], what="the venue to see a 1000 close")
    await venue.stop()


async def test_wss_with_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def handler(ws):
        await ws.recv()
        await ws.send(orjson.dumps(match(9)).decode())
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, ssl=server_ctx) as server:
        port = server.sockets[0].getsockname()[1]
        got = Collector()
        feed = make_feed(f"wss://127.0.0.1:{port}", got, ssl_context=client_ctx)
        await feed.start()
        try:
            await wait_until(lambda: len(got.trades) == 1, what="a trade over TLS")
        finally:
            await feed.stop()
    assert got.trades == [match(9)]
