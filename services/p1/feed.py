"""The feed shell shared by every venue adapter: WebSocket in, batches of trade messages out.

The adapter (``p1.feeds``, e.g. :class:`FeedProtocol` for Coinbase Exchange) decides what each
message means and :class:`WsClient` is the WebSocket connection (websockets' sans-I/O
``ClientProtocol``, which it spares the plain data frames, plus message reassembly); neither
holds a socket. :class:`CoinbaseFeed` is the thin asyncio shell: an ``asyncio.Protocol`` feeds
each socket read to the client and hands every message the read completed to the adapter in one
call, so there is no await, task switch or queue per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Iterable
from typing import Any

from loguru import logger
from websockets.client import ClientProtocol
from websockets.exceptions import PayloadTooBig
from websockets.frames import BINARY, CONT, PING, TEXT
from websockets.http11 import Response
from websockets.protocol import OPEN
from websockets.uri import WebSocketURI, parse_uri

from mercurystream.p1.feeds import MALFORMED, OTHER, OVERSIZE, FeedAdapter
from mercurystream.p1.feeds.coinbase_exchange import SUBSCRIBE_TICKER, FeedProtocol
from mercurystream.p1.gaps import Gap
from mercurystream.p1.metrics import P1Metrics
from mercurystream.shared.backoff import Backoff
from mercurystream.shared.logger import LogSampler

__all__ = ["MALFORMED", "OTHER", "OVERSIZE", "SUBSCRIBE_TICKER", "CoinbaseFeed", "FeedProtocol", "WsClient"]

OnMessages = Callable[[list[dict[str, Any]]], None]
Message = bytes | bytearray
_OPCODES = frozenset({0, 1, 2, 8, 9, 10})
"""Frame opcodes websockets knows (continuation, text, binary, close, ping, pong); another fails the connection."""


class HandshakeFailed(Exception):
    """The venue did not answer the opening handshake with a WebSocket upgrade."""


class WsClient:
    """One WebSocket client connection without I/O: websockets' ``ClientProtocol`` plus whole messages.

    :meth:`receive` takes whatever one socket read returned and gives back every text or binary
    message it completed, a fragmented one joined when its last fragment arrives. Whatever the
    protocol owes the peer (the handshake request, pongs, the closing handshake) waits in
    :meth:`data_to_send`, which the shell must flush after every call. ``max_message_bytes`` bounds
    a whole message, fragments included; websockets checks it on each frame header, before the
    payload is buffered, and fails the connection with close code 1009.

    Once the connection is open, the client cuts the stream into frames itself (``split_frames``):
    a final, unmasked text or binary frame with no reserved bits, outside a fragmented message, is
    a message as it stands, and every other frame goes to websockets whole, so websockets' parser
    only ever starts at a frame boundary and decides everything but the common case. websockets'
    per-frame parse (a generator, an enum, a dataclass) was most of P1's CPU per message. With
    ``split_frames=False`` websockets parses every frame: the reference the split is tested against.
    """

    __slots__ = (
        "_fragments",
        "_head_tail",
        "_need",
        "_split",
        "_tail",
        "max_message_bytes",
        "open",
        "pings",
        "protocol",
        "uri",
    )

    def __init__(self, url: str, max_message_bytes: int, *, split_frames: bool = True) -> None:
        if max_message_bytes <= 0:
            raise ValueError("max_message_bytes must be positive")
        self.uri: WebSocketURI = parse_uri(url)
        self.max_message_bytes = max_message_bytes
        self.protocol = ClientProtocol(self.uri, max_size=max_message_bytes)
        self.open = False
        """The opening handshake succeeded (it stays true once the connection starts closing)."""
        self.pings = 0
        self._fragments: list[Message] = []
        self._head_tail: bytes | None = b"" if split_frames else None
        """The last bytes read before the handshake's end was found (``None``: not looking)."""
        self._split = False
        self._tail = bytearray()
        """The start of a frame the reads so far did not complete (split mode)."""
        self._need = 0
        """Bytes :attr:`_tail` must reach before it is worth parsing again (a header, or the whole frame)."""

    def connect(self) -> None:
        """Queue the opening handshake request."""
        p = self.protocol
        p.send_request(p.connect())

    def data_to_send(self) -> list[bytes]:
        """Bytes to write, in order; an empty item means "half-close the stream" (websockets' ``SEND_EOF``)."""
        return self.protocol.data_to_send()

    def receive(self, data: bytes) -> list[Message]:
        """Feed one read; returns the messages it completed, oldest first."""
        if self._split:
            return self._receive_frames(data)
        messages: list[Message] = []
        if self._head_tail is None:
            self._feed(data, messages)
            return messages
        # The response head ends at the first empty line; the frames after it are split here.
        seen = self._head_tail + data
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self._head_tail = seen[-3:]
            self._feed(data, messages)
            return messages
        cut = end + 4 - len(self._head_tail)
        self._head_tail = None
        self._feed(data[:cut], messages)
        if self.open and self.protocol.state is OPEN:
            self._split = True
            return messages + self._receive_frames(data[cut:])
        self._feed(data[cut:], messages)
        return messages

    def _receive_frames(self, data: bytes) -> list[Message]:
        """Split mode: plain data frames become messages here, every other frame goes to websockets whole."""
        messages: list[Message] = []
        tail = self._tail
        if tail:
            tail += data  # amortized: a large frame arriving in many reads is copied once, not once a read
            if len(tail) < self._need:
                return messages
            buf = bytes(tail)
            self._tail = bytearray()
        else:
            buf = data
        if self.protocol.state is not OPEN:  # we started closing: websockets from here on
            self._split = False
            self._feed(buf, messages)
            return messages
        append = messages.append
        limit = self.max_message_bytes
        plain = not self._fragments
        i = 0
        end = len(buf)
        while end - i >= 2:
            b0 = buf[i]
            n = buf[i + 1]
            h = i + 2
            if n >= 126:
                if n == 126:
                    h += 2
                elif n == 127:
                    h += 8
                else:  # masked: websockets refuses it from the header
                    break
                if h > end:
                    return self._hold(buf, i, h, messages)
                n = int.from_bytes(buf[i + 2 : h], "big")
            j = h + n
            if plain and (b0 == 0x81 or b0 == 0x82) and n <= limit:
                if j > end:
                    return self._hold(buf, i, j, messages)
                append(buf[h:j])
                i = j
                continue
            if b0 & 0x0F not in _OPCODES or n > limit:  # websockets fails the connection at this header
                break
            if j > end:
                return self._hold(buf, i, j, messages)
            self._feed(buf[i:j], messages)
            i = j
            if self.protocol.state is not OPEN:
                break
            plain = not self._fragments
            limit = self.max_message_bytes - sum(map(len, self._fragments))
        else:
            return self._hold(buf, i, i + 2, messages)
        self._split = False
        self._feed(buf[i:], messages)
        return messages

    def _hold(self, buf: bytes, start: int, need_end: int, messages: list[Message]) -> list[Message]:
        """Keep ``buf[start:]``, a frame's start, until the reads reach ``need_end``; returns ``messages``."""
        if start < len(buf):
            self._tail = bytearray(buf[start:])
            self._need = need_end - start
        return messages

    def _feed(self, data: bytes, messages: list[Message]) -> None:
        """websockets parses ``data``; the messages its events complete are added to ``messages``."""
        p = self.protocol
        p.receive_data(data)
        events = p.events_received()
        if not events:
            return
        if not self.open:
            events = self._handshake(events)
        append = messages.append
        for ev in events:
            op = ev.opcode
            if op is TEXT or op is BINARY:
                if ev.fin:
                    append(ev.data)
                else:
                    self._fragments = [ev.data]
            elif op is CONT:
                fragments = self._fragments
                fragments.append(ev.data)
                if ev.fin:
                    append(b"".join(fragments))
                    self._fragments = []
            elif op is PING:
                self.pings += 1

    def _handshake(self, events: list[Any]) -> list[Any]:
        first = events[0]
        if isinstance(first, Response):
            if self.protocol.handshake_exc is None:
                self.open = True
            return events[1:]
        return events

    def receive_eof(self) -> None:
        if self._split:  # websockets sees the partial frame held here, as it would have buffered it
            self._split = False
            messages: list[Message] = []
            self._feed(bytes(self._tail), messages)
            self._tail = bytearray()
        self.protocol.receive_eof()

    def send_text(self, text: bytes) -> None:
        self.protocol.send_text(text)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (only once, and only on an open connection)."""
        if self.protocol.state is OPEN:
            self.protocol.send_close(code, reason)

    @property
    def state_open(self) -> bool:
        return self.protocol.state is OPEN

    def close_expected(self) -> bool:
        return self.protocol.close_expected()

    @property
    def oversize(self) -> PayloadTooBig | None:
        exc = self.protocol.parser_exc
        return exc if isinstance(exc, PayloadTooBig) else None

    def failure(self) -> str | None:
        """Why the connection is ending, from the protocol's side; ``None`` while it is healthy."""
        p = self.protocol
        if p.handshake_exc is not None:
            return f"handshake failed: {p.handshake_exc}"
        if p.parser_exc is not None:
            return f"{type(p.parser_exc).__name__}: {p.parser_exc}"
        if p.close_rcvd is not None:
            close = p.close_rcvd
            return f"the venue closed the connection: {close.code} {close.reason}".rstrip()
        return None


class _Connection(asyncio.Protocol):
    """One connection's socket side: bytes in to the :class:`WsClient`, its replies out, batches on.

    ``opened`` resolves when the handshake succeeds; ``closed`` when the socket is gone, whoever
    closed it. A closing handshake (either side's) gets ``close_timeout_s`` for the venue to drop
    TCP, as RFC 6455 has the server do, then the socket is aborted. Liveness is one timer that
    re-arms itself from the time of the last read, so a read costs one clock read and no timer.
    """

    def __init__(
        self,
        client: WsClient,
        deliver: Callable[[list[Message]], None],
        failed: Callable[[WsClient], None],
        close_timeout_s: float,
    ) -> None:
        self.client = client
        self.deliver = deliver
        self.failed = failed
        self.close_timeout_s = close_timeout_s
        self.loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.reason: str | None = None
        self.last_read = self.loop.time()
        self._idle_s = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._closing = False

    # ---- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client.connect()
        self._write(self.client.data_to_send())

    def data_received(self, data: bytes) -> None:
        client = self.client
        messages = client.receive(data)
        self.last_read = self.loop.time()
        out = client.data_to_send()
        if out:
            self._write(out)
        if messages:
            self.deliver(messages)
        if not client.state_open or not self.opened.done():
            self._state_changed()

    def eof_received(self) -> bool | None:
        client = self.client
        client.receive_eof()
        self._write(client.data_to_send())
        self._note(client.failure() or "the venue closed the socket")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._idle_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._note(f"connection lost: {exc}" if exc is not None else "connection closed")
        if not self.opened.done():
            self.opened.set_exception(HandshakeFailed(self.client.failure() or self.reason or "connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    # ---- commands from the feed --------------------------------------------------------------

    def send_text(self, text: str) -> None:
        self.client.send_text(text.encode())
        self._write(self.client.data_to_send())

    def watch_idle(self, idle_s: float) -> None:
        """Abort the connection once nothing at all has been read for ``idle_s``."""
        self._idle_s = idle_s
        self.last_read = self.loop.time()
        self._idle_timer = self.loop.call_later(idle_s, self._check_idle)

    def close(self, reason: str) -> None:
        """Start our side of the closing handshake; the socket goes when the venue answers, or on timeout."""
        self._note(reason)
        self.client.close(1000)
        if self.transport is not None:
            self._write(self.client.data_to_send())
        self._state_changed()

    def abort(self, reason: str) -> None:
        self._note(reason)
        if self.transport is not None and not self.closed.done():
            self.transport.abort()

    # ---- internals ---------------------------------------------------------------------------

    def _note(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def _write(self, chunks: list[bytes]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for chunk in chunks:
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()

    def _state_changed(self) -> None:
        """The cold path of a read: the handshake ended, or the connection started closing."""
        client = self.client
        opened = self.opened
        if not opened.done():
            if client.open:
                opened.set_result(None)
            elif client.protocol.handshake_exc is not None:
                opened.set_exception(HandshakeFailed(client.failure()))
        if client.open and not client.state_open and not self._closing:
            self._closing = True
            self._note(client.failure() or "closing")
            if client.protocol.parser_exc is not None:
                self.failed(client)
            self._close_timer = self.loop.call_later(self.close_timeout_s, self.abort, "closing handshake timed out")

    def _check_idle(self) -> None:
        quiet = self.loop.time() - self.last_read
        if quiet >= self._idle_s:
            self.abort(f"nothing received for {self._idle_s:g} s")
        else:
            self._idle_timer = self.loop.call_later(self._idle_s - quiet, self._check_idle)


class CoinbaseFeed:
    """Connect, subscribe, read; reconnect with capped backoff and jitter, resubscribing each time.

    Every message one socket read completes goes to :meth:`FeedProtocol.handle` in one call (cut
    at ``max_batch``), straight from ``data_received``: the pipeline downstream runs once per read,
    and a read never waits for the loop to come round again.

    The TCP connect and the handshake together are bounded by ``subscribe_timeout`` and the
    subscribe request goes out right after, inside Coinbase's 5 s limit. Silence for
    ``idle_timeout_s`` (heartbeats arrive every second per product) means a dead connection:
    reconnect. A message over ``max_size`` bytes fails the connection (close code 1009); it is
    counted as ``messages_total{type="oversize"}`` and the feed reconnects. No compression:
    deflate costs more CPU per message than the bandwidth of a trades feed is worth.
    """

    def __init__(
        self,
        url: str,
        symbols: Iterable[str],
        channel: str,
        backoff_max: float,
        on_messages: OnMessages,
        metrics: P1Metrics,
        subscribe_timeout: float = 5.0,
        *,
        idle_timeout_s: float = 10.0,
        max_size: int = 1 << 20,
        max_batch: int = 4096,
        backoff_base_s: float = 0.5,
        close_timeout_s: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
        adapter: FeedAdapter | None = None,
    ) -> None:
        """``adapter`` is the venue protocol (``p1.feeds``); without one, Coinbase Exchange's on ``channel``."""
        self.url = url
        uri = parse_uri(url)
        self.protocol: FeedAdapter = adapter if adapter is not None else FeedProtocol(symbols, channel)
        self.backoff = Backoff(backoff_max, backoff_base_s)
        self.on_messages = on_messages
        self.metrics = metrics
        self.subscribe_timeout = subscribe_timeout
        self.idle_timeout_s = idle_timeout_s
        self.max_size = max_size
        self.max_batch = max_batch
        self.close_timeout_s = close_timeout_s
        self.ssl_context = (ssl_context or ssl.create_default_context()) if uri.secure else None
        self.connects = 0
        self.reconnects = 0
        self.oversize = 0
        self.connected = False
        self._conn: _Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._sampler = LogSampler()
        self._connected_gauge = metrics.connected.labels("websocket")
        self._reconnects_counter = metrics.reconnects_total.labels("websocket")
        for s in self.protocol.symbols:
            metrics.subscribed.set(s, 0)
        self._shown: frozenset[str] = frozenset()
        self._gaps_seen = 0
        self.on_gaps: Callable[[list[Gap]], None] | None = None
        """Called with the gaps :attr:`FeedProtocol.gaps` confirmed in a batch, after its trades."""
        self.gave_up = asyncio.Event()
        """Set when no configured product is valid: :attr:`FeedProtocol.fatal` says why."""

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="p1-feed")

    async def stop(self) -> None:
        """Close the connection with a closing handshake (bounded by ``close_timeout_s``), then end."""
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        conn = self._conn
        if conn is not None:
            conn.close("stopping")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), self.close_timeout_s + 0.5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        first = True
        while not self._stopping:
            if not first:
                self.reconnects += 1
                self._reconnects_counter.inc()
            first = False
            connects = self.connects
            try:
                reason = await self._session()
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                reason = f"no handshake within {self.subscribe_timeout:g} s"
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self._set_connected(False)
                self._show_subscribed(frozenset())
            if self._stopping:
                return
            if self.protocol.fatal is not None:
                self._stopping = True
                self.gave_up.set()
                return
            # Healthy means this session got past the handshake (``on_connect`` ran) and the venue then
            # confirmed a subscribe: ``subscribed`` alone still holds an earlier session's answer when
            # this one failed to connect, and resetting on it kept every retry at the base delay.
            if self.connects > connects and self.protocol.subscribed:
                self.backoff.reset()
            delay = self.backoff.next_delay()
            if self._sampler.should_log("reconnect"):
                logger.warning("feed: {} ({}); reconnecting in {:.2f} s", self.url, reason, delay)
            await asyncio.sleep(delay)

    async def _session(self) -> str:
        """One connection from TCP connect to close; returns why it ended."""
        loop = asyncio.get_running_loop()
        client = WsClient(self.url, self.max_size)
        uri = client.uri
        conn = _Connection(client, self._deliver, self._failed, self.close_timeout_s)
        try:
            async with asyncio.timeout(self.subscribe_timeout):
                await loop.create_connection(
                    lambda: conn,
                    uri.host,
                    uri.port,
                    ssl=self.ssl_context,
                    server_hostname=uri.host if self.ssl_context is not None else None,
                )
                await conn.opened
            self._conn = conn
            self.connects += 1
            self.protocol.on_connect()
            for request in self.protocol.subscribe_requests():
                conn.send_text(request)
            conn.watch_idle(self.idle_timeout_s)
            await conn.closed
            return conn.reason or "closed"
        finally:
            self._conn = None
            if not conn.opened.done():
                conn.opened.cancel()
            conn.abort("session ended")

    def _deliver(self, raws: list[Message]) -> None:
        max_batch = self.max_batch
        if len(raws) <= max_batch:
            self._handle(raws)
        else:
            for i in range(0, len(raws), max_batch):
                self._handle(raws[i : i + max_batch])

    def _handle(self, raws: list[Message]) -> None:
        protocol = self.protocol
        trades, counts = protocol.handle(raws)
        self.metrics.count_messages(counts)
        if protocol.subscribed_products is not self._shown or protocol.outbox or protocol.fatal:
            self._control()
        gaps = getattr(protocol, "sequence_gaps", 0)
        if gaps != self._gaps_seen:
            self.metrics.sequence_gaps_total.inc(gaps - self._gaps_seen)
            self._gaps_seen = gaps
        if trades:
            try:
                self.on_messages(trades)
            except Exception:
                logger.exception("feed: the pipeline failed on a batch of {} trades; they are lost", len(trades))
        gaps = protocol.gaps
        if gaps is not None and gaps.confirmed and self.on_gaps is not None:
            self.on_gaps(gaps.take())

    def _control(self) -> None:
        """The cold path after a batch: a subscription confirmed or rejected, a resubscribe to send."""
        protocol = self.protocol
        conn = self._conn
        for product in protocol.invalid:
            self.metrics.invalid_products.set(product, 1)
        if protocol.fatal is not None:
            if conn is not None:
                conn.close(protocol.fatal)
            return
        while protocol.outbox:
            request = protocol.outbox.pop(0)
            if conn is not None:
                conn.send_text(request)
        self._show_subscribed(protocol.subscribed_products)
        self._set_connected(protocol.subscribed and bool(protocol.subscribed_products))

    def _show_subscribed(self, products: frozenset[str]) -> None:
        self._shown = products
        gauge = self.metrics.subscribed
        for product in self.protocol.symbols:
            gauge.set(product, 1 if product in products else 0)

    def _failed(self, client: WsClient) -> None:
        exc = client.oversize
        if exc is not None:
            self.oversize += 1
            self.metrics.count_messages(self.protocol.count_unreadable(OVERSIZE))
            self._sampler.warning("oversize", "feed: message over {} bytes ({}); reconnecting", self.max_size, exc)

    def _set_connected(self, up: bool) -> None:
        if up != self.connected:
            self.connected = up
            self._connected_gauge.set(1 if up else 0)
            if up:
                logger.info("feed: connected to {}", self.url)
