"""P2's TCP ingest: framed JSON objects in, one bus batch per socket read, acknowledgements out.

:class:`IngestDecoder` is the whole receive path of one connection without any I/O (frames →
objects → receive stamps → recorded lines → latencies), so it is tested byte for byte without a
socket. :class:`TcpSource` is the thin asyncio shell around it. It uses ``asyncio.Protocol``
rather than streams: ``data_received`` hands over whatever one read returned, which is exactly
the batch the bus wants, with no await and no extra buffering per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from loguru import logger

from mercurystream.p2.batch import Batch, normalize
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
    brace, so a recording keeps P1's bytes; a payload that already carries ``recv_ts_ms`` (a replay
    keeping its timestamps) is kept as is, and its own stamps define its latency.

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
            # Raw line breaks can only be JSON whitespace; blank them so a recorded line stays one line.
            payloads = [_one_line(p) for p in payloads]
        batch, errors = normalize(payloads, self._clock(), self.max_future_skew_s)
        return Received(batch, batch.latencies if batch is not None else (), errors, oversize)


def _one_line(payload: bytes) -> bytes:
    if b"\n" in payload or b"\r" in payload:
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
        self.transport: Any = None
        self.peer = "?"
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

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        got = self._ingest.feed(data)
        self._source.accept(got, self.peer)
        if got.oversize is not None:
            self._ack()
            self._closing = True
            self.transport.close()
            return
        self._ack()

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
        self._source._closed(self, exc)
        if not self.closed.done():
            self.closed.set_result(None)


class TcpSource(EventSource):
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
    ) -> None:
        self.host = host
        self.port = port
        self.bus = bus
        self.metrics = metrics
        self.max_frame_bytes = max_frame_bytes
        self.clock_us = clock_us
        self.max_future_skew_s = MAX_FUTURE_SKEW_S
        """Set from ``MAX_FUTURE_SKEW_S`` by the app: how far ahead of P2's clock a trade's time may be."""
        self.stopping = False
        self.events = 0
        self.frame_errors = dict.fromkeys(FRAME_ERROR_REASONS, 0)
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()
        self._sampler = LogSampler()
        metrics.events_total.source = self._events_received
        self._error_counters = {r: metrics.frame_errors_total.labels(r) for r in FRAME_ERROR_REASONS}

    @property
    def connections(self) -> int:
        return len(self._conns)

    def protocol(self) -> asyncio.Protocol:
        """The protocol of one new connection (what the server makes per accept; tools drive it directly)."""
        return _Connection(self)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopping = False
        self._server = await loop.create_server(self.protocol, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, final-ack and close every connection; abort those that don't close in time."""
        if self._server is None:
            return
        self.stopping = True
        self._server.close()
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

    def _events_received(self) -> int:
        return self.events

    def _opened(self, conn: _Connection) -> None:
        self._conns.add(conn)
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()
        logger.info(f"{conn.peer}: connected")

    def _closed(self, conn: _Connection, exc: Exception | None) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            self.metrics.connections.dec()
        how = f" ({exc})" if exc is not None else ""
        logger.info(f"{conn.peer}: closed after {conn.frames} frames{how}")

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
