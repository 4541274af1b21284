"""``P1_SINK=nats``: events to JetStream in batches, one message per product per round, held until PubAck.

:class:`NatsBuffer` is the protocol without a connection: what is held (``pending`` events not yet
in a batch, and ``batches`` made and not yet acknowledged), how a round's batches are made, what a
PubAck releases. A batch keeps its ``Nats-Msg-Id`` (``shared.jetstream.batch_id``) from the moment it
is made until its PubAck, so every resend after a timeout or a lost connection is stored once by the
stream's duplicate window. Unlike TCP, a lost connection therefore costs nothing: the unacknowledged
batches are resent, never dropped. At every moment ``published == acked + dropped + held``.

Order per product holds because a round carries at most one batch per product, and a product's
unacknowledged batch goes first in the next round, before anything newer of that product.

:class:`NatsSink` is the asyncio shell: it connects with P1's capped backoff (nats-py's own reconnect
is off, so one policy governs both of P1's clients), creates or validates the stream on every
connect, and publishes each round's batches concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

from loguru import logger

from mercurystream.p1.metrics import P1Metrics
from mercurystream.p1.sink import BufferedSink, HeldEvents
from mercurystream.shared.backoff import Backoff
from mercurystream.shared.jetstream import (
    BATCH_MAX_BYTES,
    EVENTS_HEADER,
    MSG_ID_HEADER,
    StreamSettings,
    batch_id,
    encode_batch,
    ensure_stream,
    new_origin,
    subject_for,
    subject_token,
)

UNKNOWN_PRODUCT = "_"
"""The subject token of an event whose ``product_id`` cannot be read (forwarded as received, like TCP)."""

_PRODUCT_KEY = b'"product_id":"'


def product_of(payload: bytes) -> str:
    """The ``product_id`` of a serialized event, read without parsing it; :data:`UNKNOWN_PRODUCT` if absent."""
    start = payload.find(_PRODUCT_KEY)
    if start < 0:
        return UNKNOWN_PRODUCT
    start += len(_PRODUCT_KEY)
    end = payload.find(b'"', start)
    if end < 0:
        return UNKNOWN_PRODUCT
    return payload[start:end].decode("utf-8", "replace")


class Batch:
    """One message: a product's events in order, with the id it keeps across resends."""

    __slots__ = ("attempts", "id", "nbytes", "payloads", "product", "subject")

    def __init__(self, id: str, product: str, subject: str, payloads: list[bytes], nbytes: int) -> None:
        self.id = id
        self.product = product
        self.subject = subject
        self.payloads = payloads
        self.nbytes = nbytes
        self.attempts = 0

    def __len__(self) -> int:
        return len(self.payloads)


class NatsBuffer(HeldEvents):
    """Held events, bounded in events (``capacity``) and bytes (``capacity_bytes``), made into batches.

    When a publish would overflow either bound, the oldest *pending* events go first
    (``buffer_full``); events already in a batch may be stored by the server any moment, so they
    are never counted as dropped while the sink runs.
    """

    def __init__(
        self,
        capacity: int,
        capacity_bytes: int,
        max_frame_bytes: int,
        venue: str,
        *,
        batch_max_bytes: int = BATCH_MAX_BYTES,
        batch_max_events: int = 4096,
        origin: str | None = None,
    ) -> None:
        super().__init__(capacity, capacity_bytes, min(max_frame_bytes, batch_max_bytes - 4))
        self.venue = venue
        self.batch_max_bytes = batch_max_bytes
        self.batch_max_events = batch_max_events
        self.origin = origin or new_origin()
        self.pending: deque[tuple[str, bytes]] = deque()
        """Events not yet in a batch, with their product's subject token."""
        self.pending_bytes = 0
        self.batches: OrderedDict[str, Batch] = OrderedDict()
        """Made and not yet acknowledged, oldest first."""
        self.batch_bytes = 0
        self.batch_events = 0
        self.seq = 0
        self.stored = 0
        self.duplicates = 0
        self._subjects: dict[str, str] = {}
        self._tokens: dict[str, str] = {}

    @property
    def held(self) -> int:
        return len(self.pending) + self.batch_events

    @property
    def held_bytes(self) -> int:
        return self.pending_bytes + self.batch_bytes

    def _hold(self, payloads: Sequence[bytes]) -> int:
        pending = self.pending
        full = 0
        tokens = self._tokens
        for p in payloads:
            raw = product_of(p)
            token = tokens.get(raw)
            if token is None:
                if len(tokens) > 4096:
                    tokens.clear()
                token = tokens[raw] = subject_token(raw)
            pending.append((token, p))
            self.pending_bytes += len(p)
        capacity, capacity_bytes = self.capacity, self.capacity_bytes
        while pending and (
            len(pending) + self.batch_events > capacity or self.pending_bytes + self.batch_bytes > capacity_bytes
        ):
            _, old = pending.popleft()
            self.pending_bytes -= len(old)
            full += 1
        return full

    def _subject(self, product: str) -> str:
        subject = self._subjects.get(product)
        if subject is None:
            if len(self._subjects) > 4096:
                self._subjects.clear()
            subject = self._subjects[product] = subject_for(self.venue, product)
        return subject

    def next_round(self) -> list[Batch]:
        """This round's batches: every product's oldest unacknowledged batch, then new ones for the others.

        New batches take pending events in order; a product that already has a batch in this round
        waits for the next, so its events stay in order whatever the outcome of this round.
        """
        out: list[Batch] = []
        taken: set[str] = set()
        for b in self.batches.values():
            if b.product not in taken:
                taken.add(b.product)
                out.append(b)
        pending = self.pending
        if not pending:
            return out
        groups: dict[str, list[bytes]] = {}
        sizes: dict[str, int] = {}
        rest: deque[tuple[str, bytes]] = deque()
        max_events = self.batch_max_events
        max_bytes = self.batch_max_bytes
        for item in pending:
            token, payload = item
            if token in taken:
                rest.append(item)
                continue
            group = groups.get(token)
            if group is None:
                group = groups[token] = []
                sizes[token] = 0
            size = sizes[token] + len(payload) + 4
            if len(group) >= max_events or size > max_bytes:
                taken.add(token)
                rest.append(item)
                continue
            group.append(payload)
            sizes[token] = size
        self.pending = rest
        self.pending_bytes = sum(len(p) for _, p in rest)
        for token, group in groups.items():
            self.seq += 1
            b = Batch(batch_id(self.origin, self.seq), token, self._subject(token), group, sizes[token])
            self.batches[b.id] = b
            self.batch_events += len(group)
            self.batch_bytes += b.nbytes
            out.append(b)
        return out

    def on_sent(self, b: Batch) -> None:
        b.attempts += 1
        self.forwarded += len(b)
        if b.attempts > 1:
            self.resent += len(b)

    def on_stored(self, b: Batch, duplicate: bool) -> int:
        """The server has ``b`` (``duplicate``: from an earlier send); release it. Returns its events."""
        if self.batches.pop(b.id, None) is None:
            return 0
        n = len(b)
        self.batch_events -= n
        self.batch_bytes -= b.nbytes
        self.acked += n
        if duplicate:
            self.duplicates += 1
        else:
            self.stored += 1
        return n

    def close(self) -> int:
        """Give up on everything held (shutdown); later publishes are counted as dropped too."""
        left = self.held
        self.pending.clear()
        self.pending_bytes = 0
        self.batches.clear()
        self.batch_events = self.batch_bytes = 0
        self.dropped["shutdown"] += left
        self.closed = True
        return left


class NatsSink(BufferedSink):
    """Batches to JetStream with PubAcks, reconnecting with P1's capped backoff while P1 keeps reading.

    Same interface as :class:`~mercurystream.p1.sink.TcpSink` (``start``, ``publish``, ``stop``,
    ``held``, ``buffer``, ``reconnects``, ``connected``).
    """

    target_label = "nats"
    peer = "JetStream"

    def __init__(
        self,
        url: str,
        stream: StreamSettings,
        buffer_events: int,
        buffer_bytes: int,
        backoff_max: float,
        max_frame_bytes: int,
        metrics: P1Metrics,
        venue: str,
        *,
        publish_timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        backoff_base_s: float = 0.25,
        batch_max_events: int = 4096,
        round_s: float = 0.0,
    ) -> None:
        """``round_s``: a round starts at most this often while events keep coming, so that each
        message carries that long of its product's trades instead of the few that arrived during
        the previous round's PubAck; an event after a quiet spell goes at once."""
        super().__init__(
            NatsBuffer(buffer_events, buffer_bytes, max_frame_bytes, venue, batch_max_events=batch_max_events),
            Backoff(backoff_max, backoff_base_s),
            metrics,
            connect_timeout_s,
        )
        self.url = url
        self.stream = stream
        self.publish_timeout_s = publish_timeout_s
        self.round_s = round_s
        self._m_batches = {r: metrics.nats_batches_total.labels(r) for r in ("stored", "duplicate", "failed")}

    @property
    def target(self) -> str:
        return f"{self.url} stream {self.stream.name}"

    @property
    def address(self) -> str:
        return f"NATS {self.url}"

    async def _run(self) -> None:
        import nats

        for _ in self._attempts():
            lost = asyncio.Event()

            async def on_down(*_: Any, lost: asyncio.Event = lost) -> None:
                lost.set()

            async def on_error(exc: Exception) -> None:
                if self._sampler.should_log("nats_error"):
                    logger.warning("sink: NATS error: {}", exc or type(exc).__name__)

            try:
                nc = await nats.connect(
                    self.url,
                    allow_reconnect=False,
                    connect_timeout=self.connect_timeout_s,
                    max_reconnect_attempts=0,
                    disconnected_cb=on_down,
                    closed_cb=on_down,
                    error_cb=on_error,
                    name="mercury-p1",
                )
            except Exception as exc:
                await self._pause(f"cannot connect: {exc or type(exc).__name__}")
                continue
            healthy = False
            try:
                js = nc.jetstream(timeout=self.publish_timeout_s)
                await ensure_stream(js, self.stream)
                self.connects += 1
                self._set_connected(True)
                healthy = await self._session(js, lost)
            except Exception as exc:
                if self._sampler.should_log("session"):
                    logger.warning("sink: JetStream session ended: {}", exc or type(exc).__name__)
            finally:
                self._set_connected(False)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 2.0)
            if self._done():
                return
            if healthy:
                self.backoff.reset()
            await self._pause("connection lost")

    async def _session(self, js: Any, lost: asyncio.Event) -> bool:
        """Publish rounds until the connection is lost; returns whether any PubAck arrived."""
        buffer = self.buffer
        logger.info("sink: connected to JetStream {}; {} events held", self.target, buffer.held)
        wake = self._wake
        acked_any = False
        clock = asyncio.get_running_loop().time
        started = -self.round_s
        while not lost.is_set():
            wait = started + self.round_s - clock()
            if wait > 0:
                await asyncio.sleep(wait)
            batches = buffer.next_round()
            if batches:
                started = clock()
            else:
                if self._done():
                    break
                wake.clear()
                waiter = asyncio.ensure_future(wake.wait())
                down = asyncio.ensure_future(lost.wait())
                await asyncio.wait((waiter, down), return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                down.cancel()
                continue
            results = await asyncio.gather(*(self._send(js, b) for b in batches), return_exceptions=True)
            failed = 0
            for b, result in zip(batches, results, strict=True):
                if isinstance(result, BaseException):
                    failed += 1
                    self._m_batches["failed"].inc()
                    if self._sampler.should_log("publish_failed"):
                        logger.warning("sink: batch {} ({} events) not acknowledged: {}; it will be resent",
                                       b.id, len(b), result or type(result).__name__)  # fmt: skip
                    continue
                n = buffer.on_stored(b, result)
                self._m_batches["duplicate" if result else "stored"].inc()
                if n:
                    self._m_acked.inc(n)
                    acked_any = True
            self._m_buffered.set(buffer.held)
            if failed == len(batches):
                # Nothing got through (no answer, or no stream): reconnect with backoff, which also
                # recreates a stream deleted meanwhile, rather than retry in a tight loop.
                return acked_any
        return acked_any

    async def _send(self, js: Any, b: Batch) -> bool:
        """Publish one batch and wait for its PubAck; ``True`` if the server already had it."""
        self.buffer.on_sent(b)
        self._m_forwarded.inc(len(b))
        if b.attempts > 1:
            self._m_resent.inc(len(b))
        ack = await js.publish(
            b.subject,
            encode_batch(b.payloads),
            timeout=self.publish_timeout_s,
            headers={MSG_ID_HEADER: b.id, EVENTS_HEADER: str(len(b))},
        )
        return bool(ack.duplicate)
