"""P2's TCP ingest: framed JSON objects in, one bus batch per socket read, acknowledgements out.

:class:`IngestDecoder` is the whole receive path of one connection without any I/O (frames →
objects → receive stamps → recorded lines → latencies), so it is tested byte for byte without a
socket. :class:`TcpSource` is the thin asyncio shell around it. It uses ``asyncio.Protocol``
rather than streams: ``data_received`` hands over whatever one read returned, which is exactly
the batch the bus wants, with no await and no extra buffering per frame.

What a client can make P2 hold is bounded: at most ``max_connections`` connections (a newcomer at
the cap evicts a connection that never sent anything, else the one idle the longest, unless every
one has read within :data:`ACTIVE_S`: then the newcomer is refused), each closed after ``idle_timeout_s`` without a
read or ``partial_timeout_s`` holding an unfinished frame, each partial frame at most
``max_frame_bytes`` and all of them together at most ``max_partial_bytes_total`` (past it the
connection holding the largest partial frame is closed). Every close is counted by reason in
``mercurystream_connections_closed_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from loguru import logger

from mercurystream.p2.batch import Batch, is_json, normalize
from mercurystream.p2.bus import Bus
from mercurystream.p2.metrics import P2Metrics
from mercurystream.shared.clock import now_us
from mercurystream.shared.framing import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, FrameTooLarge
from mercurystream.shared.logger import LogSampler
from mercurystream.shared.timeparse import MAX_FUTURE_SKEW_S
from mercurystream.shared.transport import EventSource, encode_ack

ACK_HIGH_WATER = 64 * 1024
"""Above this many unsent bytes the peer is not reading acks (replay): stop writing them to it."""

FRAME_ERROR_REASONS = ("invalid_json", "not_object", "oversize", "truncated")

IDLE_TIMEOUT = "idle_timeout"
PARTIAL_TIMEOUT = "partial_timeout"
PARTIAL_BUDGET = "partial_budget"
EVICTED = "evicted"
REFUSED = "refused"
OVERSIZE = "oversize"
PEER = "peer"
STOP = "stop"
CLOSE_REASONS = (PEER, STOP, OVERSIZE, IDLE_TIMEOUT, PARTIAL_TIMEOUT, PARTIAL_BUDGET, EVICTED, REFUSED)
"""Why a connection closed (``mercurystream_connections_closed_total{reason}``): the peer closed it,
P2 stopped, a frame over ``MAX_FRAME_BYTES``, or one of the connection bounds."""

ACTIVE_S = 2.0
"""At the connection cap, a connection that read within this many seconds is active and is not
evicted for a newcomer; if every connection is active, the newcomer is refused."""

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_IDLE_TIMEOUT_S = 300.0
DEFAULT_PARTIAL_TIMEOUT_S = 10.0
DEFAULT_MAX_PARTIAL_BYTES_TOTAL = 32 << 20


def ack_frame(frames: int, final: bool = False) -> bytes:
    """``{"ack": N}`` (or ``{"ack": N, "final": true}``) as a frame, in the shared codec."""
    return encode_ack(frames, final)


class Received:
    """What one read produced. ``batch`` is ``None`` when no valid object completed."""

    __slots__ = ("batch", "errors", "latencies", "oversize")

    def __init__(
        self,
        batch: Batch | None,
        latencies: Sequence[float],
        errors: Sequence[tuple[str, bytes]],
        oversize: FrameTooLarge | None,
    ) -> None:
        self.batch = batch
        self.latencies = latencies
        self.errors = errors
        self.oversize = oversize


class IngestDecoder:
    """The receive path of one connection, sans I/O: ``feed(bytes) -> Received``.

    Every frame completed by a read becomes either an event in the batch or an ``(reason, payload)``
    error; ``frames`` counts both, which is what an ack acknowledges. One clock read stamps the whole
    read. The recorded line is the payload as received with the stamps spliced before its closing
    brace, so a recording keeps P1's bytes; a payload that already carries a ``recv_ts_ms`` (a replay
    keeping its timestamps; a ``null`` one is none) is kept as is, and its own stamps define its latency.

    What the payloads are, and the batch they make, is ``p2.batch.normalize``'s one decision.
    """

    __slots__ = ("_clock", "decoder", "max_future_skew_s")

    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        clock_us: Callable[[], int] = now_us,
        max_future_skew_s: float = MAX_FUTURE_SKEW_S,
    ) -> None:
        self.decoder = FrameDecoder(max_frame_bytes)
        self._clock = clock_us
        self.max_future_skew_s = max_future_skew_s

    @property
    def frames(self) -> int:
        """Frames consumed so far, good or bad: the number an ack carries."""
        return self.decoder.frames

    @property
    def buffered(self) -> int:
        return self.decoder.buffered

    def feed(self, data: bytes) -> Received:
        oversize = None
        try:
            payloads = self.decoder.feed(data)
        except FrameTooLarge as exc:
            payloads = exc.payloads
            oversize = exc
        if not payloads:
            return Received(None, (), (), oversize)
        # The payloads joined, not the read: frame headers hold 0x0a and 0x0d bytes in most reads.
        joined = b"".join(payloads)
        if b"\n" in joined or b"\r" in joined:
            payloads = [_one_line(p) for p in payloads]
        batch, errors = normalize(payloads, self._clock(), self.max_future_skew_s)
        return Received(batch, batch.latencies if batch is not None else (), errors, oversize)


def _one_line(payload: bytes) -> bytes:
    """The payload with its raw line breaks blanked, so its recorded line stays one line.

    Only in a payload that is JSON as sent: there a raw line break can only be whitespace. Inside a
    string it is an unescaped control character, which makes the payload ``invalid_json``; blanked,
    ``"BTC\\n-USD"`` had become the valid product ``BTC -USD``. Such a payload is left as sent, for
    :func:`~mercurystream.p2.batch.normalize` to count.
    """
    if (b"\n" in payload or b"\r" in payload) and is_json(payload):
        return payload.replace(b"\n", b" ").replace(b"\r", b" ")
    return payload


class _Connection(asyncio.Protocol):
    """One P1 connection: feeds reads to its :class:`IngestDecoder`, publishes, acknowledges."""

    def __init__(self, source: TcpSource) -> None:
        self._source = source
        self._ingest = IngestDecoder(source.max_frame_bytes, source.clock_us, source.max_future_skew_s)
        self._acked = 0
        self._closing = False
        self._stopped_by_us = False
        self.close_reason = PEER
        self.transport: Any = None
        self.peer = "?"
        self.last_read = source.monotonic()
        """When this connection last read anything (or connected): its idleness."""
        self.has_read = False
        """Whether it ever sent a byte: one that never did is evicted first at the cap, and never active."""
        self.partial_since: float | None = None
        """When the partial frame it holds was started (``None``: it holds none)."""
        self.buffered = 0
        """Bytes of the partial frame held, as :attr:`TcpSource.partial_bytes` counts them."""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def frames(self) -> int:
        return self._ingest.frames

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._source._opened(self)
        if self._source.stopping:
            self.finish()
        elif self._source.bus.paused:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        source = self._source
        now = source.monotonic()
        self.last_read = now
        self.has_read = True
        frames = self._ingest.frames
        got = self._ingest.feed(data)
        buffered = self._ingest.buffered
        if not buffered:
            self.partial_since = None
        elif not self.buffered or self._ingest.frames != frames:
            self.partial_since = now  # the frame held now was started by this read
        source.partial_bytes += buffered - self.buffered
        self.buffered = buffered
        source.accept(got, self.peer)
        if got.oversize is not None:
            self._ack()
            self.drop(OVERSIZE)
            return
        self._ack()
        if source.partial_bytes > source.max_partial_bytes_total:
            source._over_partial_budget()

    def drop(self, reason: str) -> None:
        """Close this connection for ``reason`` (a bound): acknowledge what was read, forget its partial frame."""
        if self._closing:
            return
        self._closing = True
        self._stopped_by_us = True
        self.close_reason = reason
        self._release_partial()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.pause_reading()
        self._ack()
        transport.close()

    def hold(self, paused: bool, held_s: float) -> None:
        """Stop or resume reading for the bus's pressure; time spent held counts toward neither timeout."""
        transport = self.transport
        if self._closing or transport is None or transport.is_closing():
            return
        if paused:
            transport.pause_reading()
            return
        transport.resume_reading()
        self.last_read += held_s
        if self.partial_since is not None:
            self.partial_since += held_s

    def _release_partial(self) -> None:
        self._ingest.decoder.drop_partial()
        self._source.partial_bytes -= self.buffered
        self.buffered = 0
        self.partial_since = None

    def _ack(self) -> None:
        n = self._ingest.frames
        if n != self._acked and self.transport.get_write_buffer_size() <= ACK_HIGH_WATER:
            self.transport.write(ack_frame(n))
            self._acked = n

    def finish(self) -> None:
        """Graceful stop: read no more, acknowledge everything read (all of it is on the bus), close."""
        if self._closing:
            return
        self._closing = True
        self._stopped_by_us = True
        self.close_reason = STOP
        transport = self.transport
        if transport.is_closing():
            return
        transport.pause_reading()
        transport.write(ack_frame(self._ingest.frames, final=True))
        self._acked = self._ingest.frames
        transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        left = self._ingest.buffered
        if left and not self._stopped_by_us:
            self._source._truncated(left, self.peer)
        self._release_partial()
        self._source._closed(self, exc)
        if not self.closed.done():
            self.closed.set_result(None)


class Ingest:
    """What every source does with a decoded read: publish its batch, count its events and frame errors.

    The TCP source and the NATS source (``p2.nats_source``) share it, so both count the same way.
    """

    def __init__(self, bus: Bus, metrics: P2Metrics) -> None:
        self.bus = bus
        self.metrics = metrics
        self.events = 0
        self.frame_errors = dict.fromkeys(FRAME_ERROR_REASONS, 0)
        self._sampler = LogSampler()
        metrics.events_total.source = self._events_received
        self._error_counters = {r: metrics.frame_errors_total.labels(r) for r in FRAME_ERROR_REASONS}

    def _events_received(self) -> int:
        return self.events

    def accept(self, got: Received, peer: str) -> None:
        """Publish what one read of ``peer`` produced and count its frame errors (no I/O)."""
        if got.batch is not None:
            self._publish(got.batch, got.latencies)
        if got.errors:
            self._frame_errors(got.errors, peer)
        if got.oversize is not None:
            self._oversize(got.oversize, peer)

    def _publish(self, batch: Batch, latencies: Sequence[float]) -> None:
        n = len(batch)
        self.events += n
        self.bus.publish(batch)
        if latencies:
            self.metrics.latency_ms.observe_many(latencies)

    def _frame_errors(self, errors: Sequence[tuple[str, bytes]], peer: str) -> None:
        sampler = self._sampler
        for reason, payload in errors:
            self.frame_errors[reason] += 1
            self._error_counters[reason].inc()
            if sampler.should_log(reason):
                logger.warning(f"[{reason}] {peer}: frame skipped: {payload[:200]!r}")

    def _oversize(self, exc: FrameTooLarge, peer: str) -> None:
        self.frame_errors["oversize"] += 1
        self._error_counters["oversize"].inc()
        logger.error(f"[oversize] {peer}: {exc}; closing the connection")

    def _truncated(self, left: int, peer: str) -> None:
        self.frame_errors["truncated"] += 1
        self._error_counters["truncated"].inc()
        if self._sampler.should_log("truncated"):
            logger.warning(f"[truncated] {peer}: disconnected mid-frame with {left} bytes of it received")


class TcpSource(Ingest, EventSource):
    """Accepts P1 connections on ``host:port`` and publishes what they send to ``bus``.

    ``port`` may be 0; after :meth:`start` it is the port actually bound.
    """

    def __init__(
        self,
        host: str,
        port: int,
        bus: Bus,
        metrics: P2Metrics,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        clock_us: Callable[[], int] = now_us,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        partial_timeout_s: float = DEFAULT_PARTIAL_TIMEOUT_S,
        max_partial_bytes_total: int = DEFAULT_MAX_PARTIAL_BYTES_TOTAL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(bus, metrics)
        self.host = host
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.partial_timeout_s = partial_timeout_s
        self.max_partial_bytes_total = max_partial_bytes_total
        self.monotonic = monotonic
        self.active_s = ACTIVE_S
        self.partial_bytes = 0
        """Bytes of partial frames held across every connection."""
        self.closed_by_reason = dict.fromkeys(CLOSE_REASONS, 0)
        self._sweeper: asyncio.Task[None] | None = None
        self.port = port
        self.max_frame_bytes = max_frame_bytes
        self.clock_us = clock_us
        self.max_future_skew_s = MAX_FUTURE_SKEW_S
        """Set from ``MAX_FUTURE_SKEW_S`` by the app: how far ahead of P2's clock a trade's time may be."""
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()
        self._paused_at = 0.0
        self.paused_s = 0.0
        """Seconds spent not reading because the bus asked (:meth:`Bus.on_pressure`)."""
        bus.on_pressure(self._hold)
        metrics.ingest_pauses_total.source = lambda: bus.pauses
        metrics.ingest_paused_seconds_total.source = self._paused_seconds
        metrics.connections_closed_total.source = lambda: self.closed_by_reason
        metrics.partial_frame_bytes.set_function(lambda: self.partial_bytes)
        metrics.connections.set_function(lambda: len(self._conns))

    @property
    def connections(self) -> int:
        return len(self._conns)

    def _hold(self, paused: bool) -> None:
        """The bus's pressure: every connection stops reading, or resumes; the sockets hold what is unread."""
        now = self.monotonic()
        held = 0.0
        if paused:
            self._paused_at = now
        else:
            held = now - self._paused_at
            self.paused_s += held
        for conn in self._conns:
            conn.hold(paused, held)

    def _paused_seconds(self) -> float:
        return self.paused_s + (self.monotonic() - self._paused_at if self.bus.paused else 0.0)

    def protocol(self) -> asyncio.Protocol:
        """The protocol of one new connection (what the server makes per accept; tools drive it directly)."""
        return _Connection(self)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopping = False
        self._server = await loop.create_server(self.protocol, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="p2-connection-timeouts")

    async def _sweep_forever(self) -> None:
        tick = max(0.01, min(1.0, self.partial_timeout_s / 4, self.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(tick)
            self.sweep()

    def sweep(self) -> None:
        """Close the connections past the idle or the partial-frame timeout (the sweeper calls it every tick)."""
        if self.bus.paused:
            return
        now = self.monotonic()
        for conn in list(self._conns):
            since = conn.partial_since
            if since is not None and now - since > self.partial_timeout_s:
                self._drop(conn, PARTIAL_TIMEOUT, f"a frame started {now - since:.1f} s ago is unfinished")
            elif now - conn.last_read > self.idle_timeout_s:
                self._drop(conn, IDLE_TIMEOUT, f"nothing read for {now - conn.last_read:.1f} s")

    def _drop(self, conn: _Connection, reason: str, why: str) -> None:
        if conn._closing:
            return
        if self._sampler.should_log(reason):
            logger.warning(f"[{reason}] {conn.peer}: {why}; closing the connection")
        conn.drop(reason)
        self._conns.discard(conn)

    def _over_partial_budget(self) -> None:
        """Close the connections holding the largest partial frames until the total is within bound."""
        while self.partial_bytes > self.max_partial_bytes_total:
            holders = [c for c in self._conns if c.buffered and not c._closing]
            if not holders:
                return
            worst = max(holders, key=lambda c: (c.buffered, -(c.partial_since or 0.0)))
            self._drop(
                worst,
                PARTIAL_BUDGET,
                f"{self.partial_bytes} bytes of partial frames across connections exceed "
                f"MAX_PARTIAL_BYTES_TOTAL={self.max_partial_bytes_total}; this one holds the most ({worst.buffered})",
            )

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, final-ack and close every connection; abort those that don't close in time."""
        if self._server is None:
            return
        self.stopping = True
        self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        conns = list(self._conns)
        for conn in conns:
            conn.finish()
        if conns:
            _, pending = await asyncio.wait([c.closed for c in conns], timeout=timeout_s)
            for conn in conns:
                if not conn.closed.done():
                    logger.warning(f"{conn.peer}: not closed within {timeout_s}s of stop; aborting")
                    conn.abort()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), timeout_s)
        self._server = None

    def status_line(self) -> str:
        errors = sum(self.frame_errors.values())
        return f"conns={len(self._conns)} | events={self.events} | frame_errors={errors}"

    def _opened(self, conn: _Connection) -> None:
        self.metrics.connections_total.inc()
        if len(self._conns) >= self.max_connections and not self.stopping:
            now = self.monotonic()
            idlest = min(self._conns, key=lambda c: (c.has_read, c.last_read))
            if idlest.has_read and now - idlest.last_read < self.active_s:
                self._conns.add(conn)
                self._drop(conn, REFUSED, f"{len(self._conns) - 1} connections open, all active (MAX_CONNECTIONS)")
                return
            self._drop(
                idlest,
                EVICTED,
                f"idle for {now - idlest.last_read:.1f} s, the longest of {len(self._conns)} connections "
                f"(MAX_CONNECTIONS={self.max_connections}), for {conn.peer}",
            )
        self._conns.add(conn)
        if self._sampler.should_log("connected"):
            logger.info(f"{conn.peer}: connected")

    def _closed(self, conn: _Connection, exc: Exception | None) -> None:
        self._conns.discard(conn)
        self.closed_by_reason[conn.close_reason] += 1
        if self._sampler.should_log("closed") or conn.frames:
            how = f" ({exc})" if exc is not None else ""
            logger.info(f"{conn.peer}: closed after {conn.frames} frames ({conn.close_reason}){how}")
