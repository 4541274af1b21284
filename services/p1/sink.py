"""P1's side of the P1→P2 transport: a bounded buffer, batched frames, and P2's acknowledgements.

:class:`SendBuffer` is the whole protocol without a socket: what is held, what was sent on the
current connection, what an ack releases, what a final ack puts back and what a disconnect
costs. :class:`TcpSink` is the asyncio shell around it. At every moment
``published == acked + dropped (all reasons) + held``: nothing is lost without being counted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from loguru import logger

from mercurystream.p1.metrics import P1Metrics
from mercurystream.shared.backoff import Backoff
from mercurystream.shared.framing import encode_frames
from mercurystream.shared.logger import LogSampler
from mercurystream.shared.transport import AckDecoder, AckError, EventSink


class AckProtocolError(Exception):
    """The peer's acks cannot be trusted (oversize frame, or a count outside what was sent)."""


class HeldEvents:
    """What both of P1's buffers share: their two bounds, their counters, and what a publish admits.

    A buffer holds at most ``capacity`` events and ``capacity_bytes`` bytes of them, so a burst
    of large events cannot grow P1's memory past its budget while the peer is away.
    """

    def __init__(self, capacity: int, capacity_bytes: int, max_frame_bytes: int) -> None:
        if capacity <= 0 or capacity_bytes <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self.max_frame_bytes = max_frame_bytes
        self.published = 0
        self.acked = 0
        self.forwarded = 0
        self.resent = 0
        self.dropped: dict[str, int] = {"buffer_full": 0, "unacked_at_disconnect": 0, "shutdown": 0, "oversize": 0}
        self.closed = False
        self._sampler = LogSampler()

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def publish(self, payloads: Sequence[bytes]) -> tuple[int, int]:
        """Queue events; returns ``(dropped as buffer_full, dropped as oversize)``."""
        n = len(payloads)
        if not n:
            return 0, 0
        self.published += n
        if self.closed:
            self.dropped["shutdown"] += n
            return 0, 0
        limit = self.max_frame_bytes
        oversize = 0
        if max(map(len, payloads)) > limit:
            payloads = [p for p in payloads if len(p) <= limit]
            oversize = n - len(payloads)
            self.dropped["oversize"] += oversize
            self._sampler.warning("oversize", "{} events over {} bytes dropped", oversize, limit)
        full = self._hold(payloads) if payloads else 0
        if full:
            self.dropped["buffer_full"] += full
        return full, oversize

    def _hold(self, payloads: Sequence[bytes]) -> int:
        """Append events within both bounds, dropping the oldest unsent; returns how many were dropped."""
        raise NotImplementedError


class SendBuffer(HeldEvents):
    """Held events (``pending``: not yet sent on this connection; ``unacked``: sent, not acknowledged).

    Both count toward ``capacity`` and ``capacity_bytes``. When a publish would overflow either,
    the oldest *pending* events are dropped (``buffer_full``): events already written cannot be
    recalled, and P2 may yet deliver them, so counting them as dropped could make them count twice.
    """

    def __init__(self, capacity: int, max_frame_bytes: int, capacity_bytes: int = 64 << 20) -> None:
        super().__init__(capacity, capacity_bytes, max_frame_bytes)
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.unacked: deque[bytes] = deque()
        self.unacked_bytes = 0
        self.bad_acks = 0
        self.connected = False
        self.conn_sent = 0
        self.conn_acked = 0
        self._decoder = AckDecoder()

    @property
    def held(self) -> int:
        return len(self.pending) + len(self.unacked)

    @property
    def held_bytes(self) -> int:
        return self.pending_bytes + self.unacked_bytes

    def _hold(self, payloads: Sequence[bytes]) -> int:
        pending = self.pending
        pending.extend(payloads)
        self.pending_bytes += sum(map(len, payloads))
        room, room_bytes = self.capacity - len(self.unacked), self.capacity_bytes - self.unacked_bytes
        popleft = pending.popleft
        shed = 0
        while pending and (len(pending) > room or self.pending_bytes > room_bytes):
            self.pending_bytes -= len(popleft())
            shed += 1
        return shed

    def on_connect(self) -> None:
        self.connected = True
        self.conn_sent = 0
        self.conn_acked = 0
        self._decoder = AckDecoder()

    def take(self, max_events: int) -> list[bytes]:
        """The next events to write on this connection, oldest first; they become unacked."""
        pending = self.pending
        if not self.connected or not pending:
            return []
        if len(pending) <= max_events:
            batch = list(pending)
            pending.clear()
            nbytes = self.pending_bytes
        else:
            popleft = pending.popleft
            batch = [popleft() for _ in range(max_events)]
            nbytes = sum(map(len, batch))
        self.pending_bytes -= nbytes
        self.unacked_bytes += nbytes
        self.unacked.extend(batch)
        self.conn_sent += len(batch)
        self.forwarded += len(batch)
        return batch

    def on_bytes(self, data: bytes) -> tuple[int, bool]:
        """Feed bytes read from P2; returns ``(events newly acknowledged, final ack seen)``."""
        acked = 0
        for msg in self._decoder.feed(data):
            if isinstance(msg, AckError):
                if msg.fatal:
                    raise AckProtocolError(str(msg))
                self.bad_acks += 1
                self._sampler.warning("bad_ack", "P2 sent a frame that is not an ack ({}): {!r}", msg, msg.payload)
                continue
            acked += self.on_ack(msg.count)
            if msg.final:
                self.on_final()
                return acked, True
        return acked, False

    def on_ack(self, n: int) -> int:
        """P2 has the first ``n`` frames of this connection; release them. Returns how many were new."""
        if not self.connected:
            return 0
        if n < self.conn_acked or n > self.conn_sent:
            raise AckProtocolError(f"ack {n} outside [{self.conn_acked}, {self.conn_sent}]")
        k = n - self.conn_acked
        unacked = self.unacked
        if k == len(unacked):
            unacked.clear()
            self.unacked_bytes = 0
        else:
            popleft = unacked.popleft
            self.unacked_bytes -= sum(len(popleft()) for _ in range(k))
        self.conn_acked = n
        self.acked += k
        return k

    def on_final(self) -> int:
        """P2 closed gracefully and never read the unacked frames: put them back, first in line."""
        back = len(self.unacked)
        if back:
            self.pending.extendleft(reversed(self.unacked))
            self.unacked.clear()
            self.pending_bytes += self.unacked_bytes
            self.unacked_bytes = 0
            self.resent += back
        self.connected = False
        return back

    def on_disconnect(self) -> int:
        """The connection ended without a final ack: P2 may or may not have the unacked frames.

        Counted as dropped, never resent: a resend could duplicate a trade P2 already published.
        """
        lost = len(self.unacked)
        if lost:
            self.unacked.clear()
            self.unacked_bytes = 0
            self.dropped["unacked_at_disconnect"] += lost
        self.connected = False
        return lost

    def close(self) -> int:
        """Give up on everything held (shutdown); later publishes are counted as dropped too."""
        left = self.held
        self.pending.clear()
        self.unacked.clear()
        self.pending_bytes = self.unacked_bytes = 0
        self.dropped["shutdown"] += left
        self.connected = False
        self.closed = True
        return left


class BufferedSink(EventSink):
    """What both of P1's sinks share: a bounded buffer, capped backoff, the accounting and its metrics.

    A subclass names its ``target`` label, its ``peer`` and ``address`` (for log lines) and writes
    ``_run``, the loop that connects (an attempt per :meth:`_attempts`, a :meth:`_pause` after each
    failure), sends what the buffer gives and reports what the peer acknowledged. An event
    is held until acknowledged, so ``acked + dropped + held == published`` whatever the transport.
    """

    target_label = ""
    peer = ""

    def __init__(self, buffer: Any, backoff: Backoff, metrics: P1Metrics, connect_timeout_s: float) -> None:
        self.buffer = buffer
        self.backoff = backoff
        self.metrics = metrics
        self.connect_timeout_s = connect_timeout_s
        self.connected = False
        self.connects = 0
        self.reconnects = 0
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sampler = LogSampler()
        m = metrics
        self._m_forwarded = m.forwarded_total
        self._m_acked = m.acked_total
        self._m_resent = m.resent_total
        self._m_buffered = m.buffered
        self._m_drop = {r: m.dropped_total.labels(r) for r in buffer.dropped}
        self._m_connected = m.connected.labels(self.target_label)
        self._m_reconnects = m.reconnects_total.labels(self.target_label)

    @property
    def held(self) -> int:
        return self.buffer.held

    async def start(self) -> None:
        self._stop_requested.clear()
        self._task = asyncio.create_task(self._run(), name=f"p1-sink-{self.target_label}")

    def publish(self, payloads: Sequence[bytes]) -> None:
        buffer = self.buffer
        if buffer.closed:
            buffer.publish(payloads)
            self._m_drop["shutdown"].inc(len(payloads))
            return
        full, oversize = buffer.publish(payloads)
        if full:
            self._m_drop["buffer_full"].inc(full)
            self._sampler.warning("buffer_full", f"{self.peer} not keeping up: dropped {{}} oldest held events", full)
        if oversize:
            self._m_drop["oversize"].inc(oversize)
        self._m_buffered.set(buffer.held)
        self._wake.set()

    async def stop(self, timeout_s: float) -> None:
        """Send what is held and wait for its acks, for at most ``timeout_s``; count the rest as ``shutdown``."""
        self._stop_requested.set()
        self._wake.set()
        task = self._task
        if task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
        left = self.buffer.close()
        if left:
            self._m_drop["shutdown"].inc(left)
            logger.warning(
                "sink: {} events not acknowledged by {} within {:g} s, counted as dropped", left, self.peer, timeout_s
            )
        self._m_buffered.set(0)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._task = None

    def _done(self) -> bool:
        return self._stop_requested.is_set() and self.buffer.held == 0

    async def _run(self) -> None:
        raise NotImplementedError

    @property
    def address(self) -> str:
        """Where the sink connects, for log lines (``P2 host:port``)."""
        raise NotImplementedError

    def _attempts(self) -> Iterator[None]:
        """One step per connection attempt until the sink is done; each after the first is a reconnect."""
        first = True
        while not self._done():
            if not first:
                self.reconnects += 1
                self._m_reconnects.inc()
            first = False
            yield

    async def _pause(self, reason: str) -> None:
        """Wait out the next backoff delay before reconnecting: a stop requested meanwhile cuts it short;
        once stopping (events still held), each retry waits its whole delay."""
        delay = self.backoff.next_delay()
        if self._sampler.should_log("reconnect"):
            logger.warning(
                "sink: {} {}; {} events held; retrying in {:.2f} s", self.address, reason, self.buffer.held, delay
            )
        if self._stop_requested.is_set():
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), delay)

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        self._m_connected.set(1 if up else 0)


class TcpSink(BufferedSink):
    """Length-prefixed frames to P2 over TCP, reconnecting with capped backoff while P1 keeps reading."""

    target_label = "p2"
    peer = "P2"

    def __init__(
        self,
        host: str,
        port: int,
        buffer_events: int,
        backoff_max: float,
        max_frame_bytes: int,
        metrics: P1Metrics,
        *,
        buffer_bytes: int = 64 << 20,
        max_batch: int = 4096,
        connect_timeout_s: float = 5.0,
        backoff_base_s: float = 0.25,
    ) -> None:
        buffer = SendBuffer(buffer_events, max_frame_bytes, buffer_bytes)
        super().__init__(buffer, Backoff(backoff_max, backoff_base_s), metrics, connect_timeout_s)
        self.host = host
        self.port = port
        self.max_batch = max_batch

    @property
    def address(self) -> str:
        return f"P2 {self.host}:{self.port}"

    async def _run(self) -> None:
        for _ in self._attempts():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.connect_timeout_s
                )
            except Exception as exc:  # any failed connect is a retry, never a dead sink task
                # Not only OSError: the resolver refuses some host names with UnicodeError, and a dead task
                # would leave every later event to be dropped as buffer_full without a word.
                await self._pause(f"cannot connect: {type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                continue
            self.connects += 1
            self._set_connected(True)
            try:
                healthy = await self._session(reader, writer)
            except Exception:
                logger.exception("sink: unexpected error in the P2 session; reconnecting")
                healthy = False
            finally:
                self._set_connected(False)
                writer.close()
            if self._done():
                return
            if healthy:
                self.backoff.reset()
            await self._pause("connection closed")

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Write batches until the connection ends; returns whether P2 acknowledged anything."""
        buffer = self.buffer
        buffer.on_connect()
        logger.info("sink: connected to P2 {}:{}; {} events held", self.host, self.port, buffer.held)
        acks = asyncio.create_task(self._read_acks(reader, writer), name="p1-sink-acks")
        wake = self._wake
        take = buffer.take
        max_batch = self.max_batch
        forwarded = self._m_forwarded
        try:
            while not acks.done():
                batch = take(max_batch)
                if batch:
                    writer.write(encode_frames(batch))
                    forwarded.inc(len(batch))
                    await writer.drain()
                    continue
                if self._done():
                    break
                wake.clear()
                await wake.wait()
        except (ConnectionError, OSError) as exc:
            logger.warning("sink: write to P2 failed: {}", exc or type(exc).__name__)
        finally:
            if not acks.done():
                acks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acks
            lost = buffer.on_disconnect()
            if lost:
                self._m_drop["unacked_at_disconnect"].inc(lost)
                logger.warning("sink: P2 connection lost with {} unacknowledged events, counted as dropped", lost)
            self._m_buffered.set(buffer.held)
        return buffer.conn_acked > 0

    async def _read_acks(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Apply P2's acks until EOF, a final ack or a protocol error, then cut the connection.

        The transport is aborted rather than closed: the sender may be blocked in ``drain`` on a
        peer that no longer reads, and whatever it still buffers is unacked and accounted for.
        """
        buffer = self.buffer
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    logger.warning("sink: P2 closed the connection without a final ack")
                    break
                resent_before = buffer.resent
                acked, final = buffer.on_bytes(data)
                if acked:
                    self._m_acked.inc(acked)
                    self._m_buffered.set(buffer.held)
                if final:
                    resent = buffer.resent - resent_before
                    if resent:
                        self._m_resent.inc(resent)
                    logger.info("sink: P2 closed gracefully; {} events it never read will be resent", resent)
                    break
                if acked and self._stop_requested.is_set():
                    self._wake.set()
        except AckProtocolError as exc:
            logger.error("sink: closing the P2 connection: {}", exc)
        except (ConnectionError, OSError) as exc:
            logger.warning("sink: reading acks from P2 failed: {}", exc or type(exc).__name__)
        self._wake.set()
        writer.transport.abort()
