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
from itertools import repeat
from operator import add, itemgetter, methodcaller, truediv
from typing import Any

import orjson
from loguru import logger

from mercurystream.p2.bus import Batch, Bus
from mercurystream.p2.metrics import P2Metrics
from mercurystream.shared.clock import now_us
from mercurystream.shared.event import (
    INGEST_US,
    RECV_MS,
    RECV_US,
    EventColumns,
    LazyEvents,
    decode_columns,
    latency_ms,
    recv_suffix,
)
from mercurystream.shared.framing import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, FrameTooLarge, encode_frame
from mercurystream.shared.logger import LogSampler
from mercurystream.shared.transport import EventSource

ACK_HIGH_WATER = 64 * 1024
"""Above this many unsent bytes the peer is not reading acks (replay): stop writing them to it."""

FRAME_ERROR_REASONS = ("invalid_json", "not_object", "oversize", "truncated")


def ack_frame(frames: int, final: bool = False) -> bytes:
    """``{"ack": N}`` (or ``{"ack": N, "final": true}``) as a frame."""
    if final:
        return encode_frame(b'{"ack":%d,"final":true}' % frames)
    return encode_frame(b'{"ack":%d}' % frames)


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

    The common read, P1's events ending in their brace, is decoded straight into columns
    (:func:`decode_columns`); its event dicts are parsed only if a consumer asks (:class:`LazyEvents`).
    The next most common (every payload a non-empty object without stamps) is parsed into dicts.
    Both run without a Python loop per event: parsing, the checks, the lines and the latencies are
    each one ``map`` over the read. Anything else is taken payload by payload (:meth:`_feed_mixed`).
    """

    __slots__ = ("_clock", "_dirty", "decoder")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, clock_us: Callable[[], int] = now_us) -> None:
        self.decoder = FrameDecoder(max_frame_bytes)
        self._clock = clock_us
        self._dirty = False
        """The decoder holds bytes of a partial frame that may contain a raw line break."""

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
        # One scan of the read instead of two per payload; a header byte may match, which only
        # costs the per-payload check below.
        dirty = self._dirty or b"\n" in data or b"\r" in data
        self._dirty = dirty and self.decoder.buffered > 0
        if not payloads:
            return Received(None, (), (), oversize)
        if dirty:
            # Raw line breaks can only be JSON whitespace; blank them so a recorded line stays one line.
            payloads = [_one_line(p) for p in payloads]
        recv_us = self._clock()
        suffix = recv_suffix(recv_us)
        lines = None
        if set(map(_LAST_BYTE, payloads)) == _CLOSING_BRACE:
            lines = list(map(add, map(_ALL_BUT_LAST, payloads), repeat(suffix)))
            decoded = decode_columns(payloads)
            if decoded is not None:
                columns, ingest = decoded
                latencies = _latencies_ms(recv_us, ingest)
                batch = Batch(
                    LazyEvents(payloads),
                    lines,
                    recv_us,
                    {EventColumns: columns},
                    latencies_ms=latencies,
                    ingest_us=ingest,
                )
                return Received(batch, latencies, [], oversize)
        try:
            events = list(map(orjson.loads, payloads))
        except orjson.JSONDecodeError:
            events = None
        if (
            events is None
            or set(map(type, events)) != _DICT_ONLY
            or any(map(dict.__contains__, events, repeat(RECV_MS)))
            or not min(map(len, events))
            or lines is None
        ):
            return self._feed_mixed(payloads, events, recv_us, suffix, oversize)
        try:
            ingest = list(map(_INGEST_US, events))
        except KeyError:
            ingest = None
        if ingest is not None and set(map(type, ingest)) == _INT_ONLY:
            latencies = _latencies_ms(recv_us, ingest)
            batch = Batch(events, lines, recv_us, latencies_ms=latencies, ingest_us=ingest)
            return Received(batch, latencies, [], oversize)
        return self._received(events, lines, recv_us, [False] * len(events), [], oversize)

    def _feed_mixed(
        self,
        payloads: list[bytes],
        parsed: list[Any] | None,
        recv_us: int,
        suffix: bytes,
        oversize: FrameTooLarge | None,
    ) -> Received:
        """The read's payloads one by one: frame errors, objects that carry their own stamps, ``{}``.

        ``parsed`` is every payload already parsed, when none of them was invalid JSON (a replay
        keeping its stamps sends nothing else), so no payload is parsed twice.
        """
        events: list[dict] = []
        lines: list[bytes] = []
        own: list[bool] = []
        errors: list[tuple[str, bytes]] = []
        empty_line = b"{" + suffix[1:]
        loads = orjson.loads
        for i, p in enumerate(payloads):
            if parsed is not None:
                obj = parsed[i]
            else:
                try:
                    obj = loads(p)
                except orjson.JSONDecodeError:
                    errors.append(("invalid_json", p))
                    continue
            if type(obj) is not dict:
                errors.append(("not_object", p))
                continue
            events.append(obj)
            if RECV_MS in obj:
                own.append(True)
                lines.append(p)
            else:
                own.append(False)
                if not obj:
                    lines.append(empty_line)
                elif p[-1] == 125:
                    lines.append(p[:-1] + suffix)
                else:
                    lines.append(p.rstrip()[:-1] + suffix)
        if not events:
            return Received(None, (), errors, oversize)
        return self._received(events, lines, recv_us, own, errors, oversize)

    @staticmethod
    def _received(
        events: list[dict],
        lines: list[bytes],
        recv_us: int,
        own: list[bool],
        errors: Sequence[tuple[str, bytes]],
        oversize: FrameTooLarge | None,
    ) -> Received:
        """A batch whose latencies follow :func:`latency_ms` event by event (the uncommon shapes)."""
        recv = {RECV_MS: recv_us // 1000, RECV_US: recv_us}
        latencies: list[float] = []
        at: list[int] = []
        for i, (e, has_own) in enumerate(zip(events, own, strict=True)):
            lat = latency_ms(e if has_own else {**e, **recv})
            if lat is not None:
                latencies.append(lat)
                at.append(i)
        ingest = list(map(_GET_INGEST_US, events))
        batch = Batch(
            events,
            lines,
            recv_us,
            latencies_ms=latencies,
            latency_at=None if len(at) == len(events) else at,
            ingest_us=ingest if set(map(type, ingest)) == _INT_ONLY else None,
        )
        return Received(batch, latencies, errors, oversize)


_GET_INGEST_US = methodcaller("get", INGEST_US)
_INGEST_US = itemgetter(INGEST_US)
_ALL_BUT_LAST = itemgetter(slice(None, -1))
_LAST_BYTE = itemgetter(slice(-1, None))
_CLOSING_BRACE = {b"}"}
_INT_ONLY = {int}
_DICT_ONLY = {dict}


def _latencies_ms(recv_us: int, ingest_us: Sequence[int]) -> list[float]:
    """``shared.event.latency_ms`` of every event of a read stamped ``recv_us``, in two C-level passes."""
    return list(map(truediv, map(recv_us.__sub__, ingest_us), repeat(1000.0)))


def _one_line(payload: bytes) -> bytes:
    if b"\n" in payload or b"\r" in payload:
        return payload.replace(b"\n", b" ").replace(b"\r", b" ")
    return payload


class _Connection(asyncio.Protocol):
    """One P1 connection: feeds reads to its :class:`IngestDecoder`, publishes, acknowledges."""

    def __init__(self, source: TcpSource) -> None:
        self._source = source
        self._ingest = IngestDecoder(source.max_frame_bytes, source.clock_us)
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
