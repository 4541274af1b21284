"""``P2_SOURCE=nats``: one shard of P2 reading JetStream through its durable pull consumer.

Shard ``i`` of ``n`` (``P2_SHARD=i/n``) reads the whole stream through the durable consumer
``mercury-p2-shard-i-of-n`` and keeps the messages whose product (the subject's last token) hashes
to it (``shared.jetstream.shard_of``); the others are acknowledged unread and counted as
``foreign``. (nats-server 2.9 filters a consumer on one subject only, so a shard cannot ask for just
its products; each foreign message costs one fetch slot and one ack, not a decode.)

A message is decoded by the same :class:`~mercurystream.p2.server.IngestDecoder` as a TCP read and
published to the bus as one batch. It is **acknowledged only once every consumer that never waits
(analytics, forensics, the recorder) has settled its events** (``Consumer.settled``: processed or
dropped by the bus; for the JSONL recorder, written to the file). So a shard killed at any moment
loses nothing: what it had not finished is redelivered to it when it restarts, from where it
acknowledged. The slow demo consumer is not waited on; as over TCP, its queue drops its oldest.
While a message waits, the source tells the server it is in progress so it is not redelivered.

A redelivery is never a venue duplicate. A message whose batch id (``Nats-Msg-Id``) this process has
already published is acknowledged and skipped (``redelivered{action="skipped"}``); one delivered
before but unknown here (this shard restarted after a crash) is processed, since its events may
never have reached the consumers, and counted as ``redelivered{action="reprocessed"}``; the restarted
detectors have not seen its events, so they count no duplicate. Only a batch finished by the
consumers and not yet acknowledged at the crash (milliseconds) is processed twice in that case.

While a waited-on queue holds more than half its bound in events or more than ``BUS_PAUSE_BYTES``,
the source fetches nothing: the stream, not the bus's drop-oldest, absorbs a burst. A fetch is sized
by the room left, but messages vary (a publisher catching up sends larger ones), and the client may
hand over more than was asked for. So a fetch's messages are published in batches of at most what a
queue at that threshold has room for, each once every waited-on queue has room for all of it: the
source is the bus's only producer here, so a queue drops only a single message larger than its room,
which P1's message bounds (``shared.jetstream.BATCH_MAX_BYTES``, 4,096 events) rule out at the
default queue bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from loguru import logger

from mercurystream.p2.bus import Bus
from mercurystream.p2.consumer import Consumer
from mercurystream.p2.log_spans import LogOrigin
from mercurystream.p2.metrics import P2Metrics
from mercurystream.p2.server import Ingest, IngestDecoder, Received
from mercurystream.shared.backoff import Backoff
from mercurystream.shared.clock import now_us
from mercurystream.shared.framing import DEFAULT_MAX_FRAME_BYTES, HEADER, HEADER_SIZE
from mercurystream.shared.jetstream import (
    ALL_SUBJECTS,
    EVENTS_HEADER,
    MSG_ID_HEADER,
    StreamSettings,
    consumer_name,
    ensure_stream,
    shard_of,
    subject_product,
)
from mercurystream.shared.timeparse import MAX_FUTURE_SKEW_S
from mercurystream.shared.transport import EventSource

RECENT_BATCH_IDS = 65536
"""Batch ids remembered, far more than can be unacknowledged at once (``max_ack_pending``)."""
ROOM_POLL_S = 0.002
"""How often a source waiting for the consumers (to fetch, or to publish a batch) looks again."""
MESSAGE_ACTIONS = ("processed", "foreign")
REDELIVERED_ACTIONS = ("skipped", "reprocessed")


_NEW = object()


def _whole_frames(data: bytes, limit: int) -> int:
    """How many frames ``data`` is when it is whole frames, none longer than ``limit`` (then it can
    share a decode); -1 when it is not."""
    unpack = HEADER.unpack_from
    pos, end, frames = 0, len(data), 0
    while pos < end:
        if pos + HEADER_SIZE > end:
            return -1
        (length,) = unpack(data, pos)
        if length > limit:
            return -1
        pos += HEADER_SIZE + length
        frames += 1
    return frames if pos == end else -1


class _Held:
    """A message published to the bus and not yet acknowledged: acked once the consumers pass ``position``."""

    __slots__ = ("bid", "msgs", "position", "since")

    def __init__(self, bid: str, msg: Any, position: int) -> None:
        self.bid = bid
        self.msgs = [msg]
        self.position = position
        self.since = time.monotonic()


class NatsSource(Ingest, EventSource):
    """Shard ``index`` of ``shards``: fetch, decode, publish to the bus, acknowledge once settled."""

    def __init__(
        self,
        url: str,
        stream: StreamSettings,
        shard: tuple[int, int],
        bus: Bus,
        metrics: P2Metrics,
        settled: Callable[[], int],
        backlog: Backlog,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        clock_us: Callable[[], int] = now_us,
        fetch_batch: int = 64,
        ack_wait_s: float = 30.0,
        max_ack_pending: int = 1024,
        backoff_max: float = 10.0,
    ) -> None:
        super().__init__(bus, metrics)
        self.url = url
        self.stream = stream
        self.index, self.shards = shard
        self.durable = consumer_name(self.index, self.shards)
        self._settled = settled
        self._backlog = backlog
        self._msg_bytes = 0
        """A fresh message's share of a bus batch's bytes (``Batch.nbytes``), as last measured."""
        self._expansion = 4.0
        """A batch's bytes on the bus per byte of its messages, as last measured (a guess until then)."""
        self.max_frame_bytes = max_frame_bytes
        self.clock_us = clock_us
        self.max_future_skew_s = MAX_FUTURE_SKEW_S
        self.fetch_batch = fetch_batch
        self.ack_wait_s = ack_wait_s
        self.max_ack_pending = max_ack_pending
        self.backoff = Backoff(backoff_max, 0.25)
        self.port = 0
        self.connected = False
        self.reconnects = 0
        self.messages = dict.fromkeys(MESSAGE_ACTIONS, 0)
        self.redelivered = dict.fromkeys(REDELIVERED_ACTIONS, 0)
        self.acked = 0
        self._held: deque[_Held] = deque()
        self._redelivered_upto = 0
        """Stream sequences up to this were delivered to an earlier run (set by :meth:`_resume`)."""
        self._recent: OrderedDict[str, _Held | None] = OrderedDict()
        """Batch ids this process published: to their :class:`_Held` until acknowledged, then ``None``."""
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._acker: asyncio.Task[None] | None = None
        self._nc: Any = None
        self._ack_wake = asyncio.Event()
        m = metrics
        self._m_messages = {a: m.nats_messages_total.labels(a) for a in MESSAGE_ACTIONS}
        self._m_redelivered = {a: m.nats_redelivered_total.labels(a) for a in REDELIVERED_ACTIONS}
        self._m_redelivered_events = {a: m.nats_redelivered_events_total.labels(a) for a in REDELIVERED_ACTIONS}
        self._m_acked = m.nats_acked_total
        self._m_pending = m.nats_ack_pending
        self._m_connected = m.nats_connected

    @property
    def shard(self) -> str:
        return f"{self.index}/{self.shards}"

    @property
    def held(self) -> int:
        """Messages on the bus and not yet acknowledged."""
        return len(self._held)

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="p2-nats-source")
        self._acker = asyncio.create_task(self._ack_loop(), name="p2-nats-acks")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop fetching. Messages already on the bus stay held: :meth:`close` acknowledges what settled."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        """After the consumers drained: acknowledge every settled message, then disconnect.

        What did not settle is left unacknowledged, so the server redelivers it to the next run.
        """
        acker, self._acker = self._acker, None
        if acker is not None:
            acker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acker
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await self._ack_settled()
                left = len(self._held)
                if left:
                    logger.warning(f"nats: {left} messages not finished by the consumers; the server will redeliver")
                await asyncio.wait_for(nc.drain(), 5.0)
            with contextlib.suppress(Exception):
                await nc.close()
        self._set_connected(False)

    def status_line(self) -> str:
        errors = sum(self.frame_errors.values())
        m, r = self.messages, self.redelivered
        return (
            f"shard={self.shard} nats={'up' if self.connected else 'down'} | events={self.events} | "
            f"msgs={m['processed']} foreign={m['foreign']} acked={self.acked} held={len(self._held)} | "
            f"redelivered skipped={r['skipped']} reprocessed={r['reprocessed']} | frame_errors={errors}"
        )

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        self._m_connected.set(1 if up else 0)

    async def _run(self) -> None:
        import nats

        first = True
        first_session = True
        while not self._stopping.is_set():
            if not first:
                self.reconnects += 1
            first = False
            lost = asyncio.Event()

            async def on_down(*_: Any, lost: asyncio.Event = lost) -> None:
                lost.set()

            async def on_error(exc: Exception) -> None:
                if self._sampler.should_log("nats_error"):
                    logger.warning(f"nats: {exc or type(exc).__name__}")

            nc = None
            try:
                nc = await nats.connect(
                    self.url,
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    connect_timeout=5,
                    disconnected_cb=on_down,
                    closed_cb=on_down,
                    error_cb=on_error,
                    name=f"mercury-p2-{self.durable}",
                )
                js = nc.jetstream(timeout=5)
                await ensure_stream(js, self.stream)
                if first_session:
                    await self._resume(js)
                    first_session = False
                psub = await js.pull_subscribe(ALL_SUBJECTS, durable=self.durable, stream=self.stream.name,
                                               config=self._consumer_config())  # fmt: skip
                self._nc = nc
                self._set_connected(True)
                logger.info(f"nats: shard {self.shard} reading {self.stream.name} at {self.url} as {self.durable}")
                healthy = await self._session(psub, lost)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                healthy = False
                if self._sampler.should_log("session"):
                    logger.warning(f"nats: shard {self.shard} session ended: {exc or type(exc).__name__}")
            self._set_connected(False)
            if self._stopping.is_set():
                return
            # Held messages stay held: an ack is a publish to the message's reply subject, which the next
            # connection can send as well, and a redelivery meanwhile joins its held entry.
            self._nc = None
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
            if healthy:
                self.backoff.reset()
            delay = self.backoff.next_delay()
            if self._sampler.should_log("reconnect"):
                logger.warning(f"nats: {self.url} unreachable; retrying in {delay:.2f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def _consumer_config(self, start_seq: int = 0) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        return ConsumerConfig(
            durable_name=self.durable,
            name=self.durable,
            filter_subject=ALL_SUBJECTS,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_seq else DeliverPolicy.ALL,
            opt_start_seq=start_seq or None,
            ack_wait=self.ack_wait_s,
            max_ack_pending=self.max_ack_pending,
            max_deliver=-1,
        )

    async def _resume(self, js: Any) -> None:
        """At process start, resume exactly where the shard acknowledged.

        Deliveries the previous run never acknowledged (it was killed) would otherwise come again only
        after ``ack_wait``, behind newer messages, out of order. So when there are any, the durable
        consumer is recreated at its ack floor: they come first, in order, and everything up to what was
        delivered before counts as redelivered. (One process per shard: a second would reset the first.)
        """
        from nats.js.errors import NotFoundError

        try:
            info = await js.consumer_info(self.stream.name, self.durable)
        except NotFoundError:
            return
        if not info.num_ack_pending:
            return
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        delivered = info.delivered.stream_seq if info.delivered is not None else floor
        await js.delete_consumer(self.stream.name, self.durable)
        await js.add_consumer(self.stream.name, config=self._consumer_config(floor + 1))
        self._redelivered_upto = delivered
        logger.info(
            f"nats: shard {self.shard} resumes at stream sequence {floor + 1}: "
            f"{info.num_ack_pending} messages were delivered to a run that did not acknowledge them"
        )

    async def _session(self, psub: Any, lost: asyncio.Event) -> bool:
        from nats.errors import TimeoutError as NatsTimeout

        got_any = False
        while not lost.is_set():
            backlog = self._backlog
            while backlog.behind() or len(self._held) >= self.max_ack_pending:
                await asyncio.sleep(ROOM_POLL_S)
            try:
                msgs = await psub.fetch(self._fetch_size(), timeout=1.0)
            except (NatsTimeout, TimeoutError):
                continue
            got_any = True
            fresh = []
            for msg in msgs:
                bid = await self._triage(msg)
                if bid is not None:
                    fresh.append((msg, bid))
            if fresh:
                await self._take(fresh)
            self._ack_wake.set()
        return got_any

    async def _triage(self, msg: Any) -> str | None:
        """Foreign messages and redeliveries this process has are dealt with here; else the batch id."""
        if self.shards > 1 and shard_of(subject_product(msg.subject), self.shards) != self.index:
            self.messages["foreign"] += 1
            self._m_messages["foreign"].inc()
            await self._ack_now(msg)
            return None
        meta = msg.metadata
        headers = msg.headers or {}
        bid = headers.get(MSG_ID_HEADER) or f"seq-{meta.sequence.stream}"
        entry = self._recent.get(bid, _NEW)
        if entry is not _NEW:
            self._redelivered("skipped", msg)
            if entry is None:
                await self._ack_now(msg)
            else:
                entry.msgs.append(msg)
            return None
        if meta.num_delivered > 1 or meta.sequence.stream <= self._redelivered_upto:
            self._redelivered("reprocessed", msg)
        return bid

    async def _take(self, fresh: list[tuple[Any, str]]) -> None:
        """A fetch's messages for the bus: consecutive whole-frame messages make one batch, of a bounded size.

        P2's cost is mostly per batch, and a P1 round's messages are small (one product each), so one
        bus batch per message held a shard to a few thousand messages a second. A message that is not
        whole frames (or holds one over the limit) is decoded alone, so its fault stays its own. A
        batch holds at most :meth:`Backlog.batch_limits` (by its messages' bytes times the last
        measured expansion), so it fits a queue drained to its pause threshold.
        """
        limit = self.max_frame_bytes
        max_bytes, max_events = self._backlog.batch_limits()
        run: list[tuple[Any, str]] = []
        run_bytes = run_events = 0.0
        for msg, bid in fresh:
            frames = _whole_frames(msg.data, limit)
            if frames < 0:
                await self._take_run(run)
                run, run_bytes, run_events = [], 0.0, 0.0
                await self._take_run([(msg, bid)])
                continue
            size = len(msg.data) * self._expansion
            if run and (run_bytes + size > max_bytes or run_events + frames > max_events):
                await self._take_run(run)
                run, run_bytes, run_events = [], 0.0, 0.0
            run.append((msg, bid))
            run_bytes += size
            run_events += frames
        await self._take_run(run)

    def _fetch_size(self) -> int:
        """Messages to ask for: at most ``fetch_batch``, and no more than the fullest waited-on queue has
        room for, so that one fetch never makes a queue drop (P1's messages hold 2 ms of a product's
        trades: 64 of them can outgrow the room between the pause and the byte bound)."""
        if not self._msg_bytes:
            return self.fetch_batch
        return max(1, min(self.fetch_batch, self._backlog.room_bytes() // self._msg_bytes))

    async def _take_run(self, run: list[tuple[Any, str]]) -> None:
        """Decode the messages into one batch, wait until every waited-on queue has room for it, publish, hold."""
        if not run:
            return
        msgs = [m for m, _ in run]
        data = b"".join(m.data for m in msgs) if len(msgs) > 1 else msgs[0].data
        got, ingest = self._decode(msgs, data)
        batch = got.batch
        if batch is not None:
            self._msg_bytes = max(1, batch.nbytes // len(run))
            self._expansion = batch.nbytes / max(1, len(data))
            backlog = self._backlog
            while not backlog.fits(len(batch), batch.nbytes):
                await asyncio.sleep(ROOM_POLL_S)
        peer = f"{msgs[0].subject}#{msgs[0].metadata.sequence.stream}"
        self.accept(got, peer)
        if ingest.buffered and got.oversize is None:
            self._truncated(ingest.buffered, peer)
        position = self.bus.published
        for msg, bid in run:
            self._held_until(msg, bid, position)

    def _decode(self, msgs: list[Any], data: bytes) -> tuple[Received, IngestDecoder]:
        """Decode ``data`` (the messages' bytes) into one batch that knows where it is in the stream."""
        first, last = msgs[0].metadata, msgs[-1].metadata
        ingest = IngestDecoder(self.max_frame_bytes, self.clock_us, self.max_future_skew_s)
        got = ingest.feed(data)
        if got.batch is not None:
            got.batch.origin = LogOrigin(
                first.stream,
                first.sequence.stream,
                last.sequence.stream,
                int(first.timestamp.timestamp() * 1e9),
                int(last.timestamp.timestamp() * 1e9),
            )
        return got, ingest

    def _held_until(self, msg: Any, bid: str, position: int) -> None:
        self.messages["processed"] += 1
        self._m_messages["processed"].inc()
        held = _Held(bid, msg, position)
        self._held.append(held)
        recent = self._recent
        recent[bid] = held
        if len(recent) > RECENT_BATCH_IDS:
            recent.popitem(last=False)

    def _redelivered(self, action: str, msg: Any) -> None:
        self.redelivered[action] += 1
        self._m_redelivered[action].inc()
        n = (msg.headers or {}).get(EVENTS_HEADER)
        if n is not None and n.isdigit():
            self._m_redelivered_events[action].inc(int(n))
        if self._sampler.should_log(f"redelivered_{action}"):
            logger.info(f"nats: {msg.subject} #{msg.metadata.sequence.stream} redelivered "
                        f"(delivery {msg.metadata.num_delivered}): {action}")  # fmt: skip

    async def _ack_now(self, msg: Any) -> None:
        nc = self._nc
        if nc is None or not msg.reply:
            return
        await nc.publish(msg.reply, b"+ACK")
        self.acked += 1
        self._m_acked.inc()

    async def _ack_settled(self) -> int:
        """Acknowledge, in order, every held message whose events every waited-on consumer settled."""
        settled = self._settled()
        held = self._held
        nc = self._nc
        n = 0
        while held and held[0].position <= settled:
            h = held.popleft()
            for msg in h.msgs:
                if nc is not None and msg.reply:
                    await nc.publish(msg.reply, b"+ACK")
                    n += 1
            if self._recent.get(h.bid) is h:
                self._recent[h.bid] = None
        if n:
            self.acked += n
            self._m_acked.inc(n)
        self._m_pending.set(len(held))
        return n

    async def _ack_loop(self) -> None:
        """Acknowledge as consumers settle; tell the server a long-waiting message is in progress."""
        progress_after = self.ack_wait_s / 3
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ack_wake.wait(), 0.005)
            self._ack_wake.clear()
            try:
                await self._ack_settled()
                if self._held and time.monotonic() - self._held[0].since > progress_after:
                    await self._in_progress(progress_after)
            except Exception as exc:
                if self._sampler.should_log("ack"):
                    logger.warning(f"nats: acknowledging failed: {exc or type(exc).__name__}")

    async def _in_progress(self, older_than: float) -> None:
        nc = self._nc
        if nc is None:
            return
        now = time.monotonic()
        for h in self._held:
            if now - h.since <= older_than:
                break
            for msg in h.msgs:
                if msg.reply:
                    await nc.publish(msg.reply, b"+WPI")
            h.since = now


def waited_on(consumers: list[Consumer]) -> Callable[[], int]:
    """The bus position every consumer that never waits has settled (``Consumer.settled``).

    Every subscription is offered every batch, so each consumer's settled count is a position on the
    bus's one sequence; the smallest of them is how far all of them are.
    """
    chosen = [c for c in consumers if not c.waits]
    if not chosen:
        return lambda: 1 << 62
    return lambda: min(c.settled for c in chosen)


class Backlog:
    """The queues of the consumers the source waits on (every one that never waits), as a fetch sees them."""

    def __init__(self, bus: Bus, consumers: list[Consumer]) -> None:
        self.subs = [c.subscription for c in consumers if not c.waits]
        self.pause_bytes = bus.pause_bytes or bus.queue_bytes // 2

    def behind(self) -> bool:
        """Whether a queue holds more than half its bound in events, or more than the bus's ``pause_bytes``:
        the source fetches nothing meanwhile."""
        pause = self.pause_bytes
        return any(s.depth > s.capacity // 2 or s.depth_bytes > pause for s in self.subs)

    def fits(self, events: int, nbytes: int) -> bool:
        """Whether every queue takes a batch of ``events`` and ``nbytes`` without dropping (an empty one always
        takes it: waiting could not make more room)."""
        return all(
            not s.depth or (s.depth + events <= s.capacity and s.depth_bytes + nbytes <= s.max_bytes) for s in self.subs
        )

    def batch_limits(self) -> tuple[int, int]:
        """The bytes and events one batch of a fetch may hold: what a queue at its pause threshold has room for."""
        events = min((s.capacity - s.capacity // 2 for s in self.subs), default=1 << 62)
        nbytes = min((s.max_bytes - self.pause_bytes for s in self.subs), default=1 << 62)
        return max(1, nbytes), max(1, events)

    def room_bytes(self) -> int:
        """Bytes the fullest queue takes before its byte bound drops anything."""
        return min((s.max_bytes - s.depth_bytes for s in self.subs), default=1 << 62)
