"""Reading a range of the JetStream log for ``mercury-replay --from-nats``: the events, as the file readers give them.

The range is read through an ephemeral pull consumer (no acks, deleted at the end and by the
server after a minute of inactivity anyway) that starts at a time (``opt_start_time``) or a stream
sequence (``opt_start_seq``) and stops at the end of the range: a sequence, a time, or the stream's
last message when the read began, so a live stream never keeps the replay running. Messages arrive
in stream order; each holds one product's batch as the TCP path's length-prefixed frames
(``shared.jetstream``), decoded here and validated as the JSONL reader validates lines.

nats-py runs on its own event loop in one thread and hands whole messages' events over a buffer
bounded in bytes and messages, so :class:`NatsRangeReader` fits the sender's synchronous
``batches()`` like :class:`~mercurystream.replay.source.JsonlReader`, and a slow P2 holds the
fetching back instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from mercurystream.replay.inject import Item
from mercurystream.replay.source import MAX_REPORTED_LINES, lenient_refusal
from mercurystream.shared.framing import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, FrameTooLarge
from mercurystream.shared.jetstream import SUBJECT_ROOT, subject_product, subject_token

FETCH_MESSAGES = 256
FETCH_TIMEOUT_S = 1.0
CONNECT_TIMEOUT_S = 5.0
INACTIVE_THRESHOLD_S = 60.0
BUFFER_MESSAGES = 512
BUFFER_BYTES = 32 << 20
"""What the fetching thread may hold ahead of the sender: a few seconds of P2's rate, bounded in bytes."""

MALFORMED_REASONS = ("invalid_json", "not_object", "oversize", "bad_frame")
"""Why an event of a message is skipped; ``bad_frame`` is a message whose bytes are not whole frames."""

_EPOCH = re.compile(r"^\d{9,11}(\.\d+)?$")


class NatsSourceError(Exception):
    """The log cannot be read: ``str()`` is one line; ``unreachable`` says the server did not answer."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def parse_time(text: str) -> datetime:
    """An ISO-8601 time (``2026-12-05T23:50:00Z``; no zone means UTC) or Unix seconds, as an aware UTC datetime."""
    s = text.strip()
    try:
        if _EPOCH.match(s):
            return datetime.fromtimestamp(float(s), UTC)
        t = datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s)
    except (ValueError, OverflowError, OSError):
        raise ValueError("expected an ISO-8601 time like 2026-12-05T23:50:00Z, or Unix seconds") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class StreamRange:
    """What to read: a start (time or sequence, one of them), an optional end, and optional products."""

    url: str
    stream: str
    start_time: datetime | None = None
    end_time: datetime | None = None
    start_seq: int | None = None
    end_seq: int | None = None
    products: tuple[str, ...] = ()

    def filter_subject(self) -> str:
        """One product is filtered by the server; several (nats-server 2.9 takes one filter) here."""
        if len(self.products) == 1:
            return f"{SUBJECT_ROOT}.*.{subject_token(self.products[0])}"
        return f"{SUBJECT_ROOT}.>"

    def describe(self) -> str:
        start = _bound(self.start_seq, self.start_time, "start")
        return f"stream {self.stream} from {start} to {_bound(self.end_seq, self.end_time, 'end')}"


class _Buffer:
    """Messages' events handed from the fetching thread to the sender, bounded in messages and bytes."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self._items: deque[tuple[list[Item], int]] = deque()
        self._bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._cond = threading.Condition()
        self.done = False
        self.error: NatsSourceError | None = None

    def put(self, items: list[Item], nbytes: int, stop: threading.Event) -> None:
        with self._cond:
            while self._items and (len(self._items) >= self._max_messages or self._bytes + nbytes > self._max_bytes):
                if stop.is_set():
                    return
                self._cond.wait(0.2)
            self._items.append((items, nbytes))
            self._bytes += nbytes
            self._cond.notify_all()

    def finish(self, error: NatsSourceError | None = None) -> None:
        with self._cond:
            self.done = True
            self.error = error
            self._cond.notify_all()

    def get(self) -> list[Item] | None:
        """The next message's events; ``None`` at the end; raises the fetcher's error."""
        with self._cond:
            while not self._items and not self.done:
                self._cond.wait(0.2)
            if self._items:
                items, nbytes = self._items.popleft()
                self._bytes -= nbytes
                self._cond.notify_all()
                return items
            if self.error is not None:
                raise self.error
            return None


class NatsRangeReader:
    """Events of a :class:`StreamRange`, in batches of one message's events, like the file readers.

    :meth:`open` connects and checks the stream (raising :class:`NatsSourceError`), then a thread
    fetches while :meth:`batches` is consumed. Counters: ``events`` (valid events read), ``messages``,
    ``skipped_messages`` (other products), ``bytes_read``, ``first_seq``/``last_seq`` (the stream
    sequences read), and malformed events by reason, as :class:`JsonlReader` keeps them (the
    "line" of a malformed event is the stream sequence of its message).
    """

    def __init__(
        self,
        rng: StreamRange,
        *,
        limit: int | None = None,
        parse: bool = False,
        max_messages: int = BUFFER_MESSAGES,
        max_bytes: int = BUFFER_BYTES,
    ) -> None:
        self.range = rng
        self._limit = limit
        self._parse = parse
        self._products = {subject_token(p) for p in rng.products}
        self._buffer = _Buffer(max_messages, max_bytes)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._open_error: NatsSourceError | None = None
        self._thread: threading.Thread | None = None
        self._consumer: tuple[object, str] | None = None
        self.events = 0
        self.messages = 0
        self.skipped_messages = 0
        self.bytes_read = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.stream_last_seq = 0
        self.malformed: dict[str, int] = dict.fromkeys(MALFORMED_REASONS, 0)
        self.malformed_lines: list[int] = []
        self.lenient = 0
        """Events only P2's lenient parse reads, sent as bytes."""

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    @property
    def name(self) -> str:
        return self.range.describe()

    def open(self, timeout_s: float = CONNECT_TIMEOUT_S + 10.0) -> None:
        """Connect, find the stream and create the consumer; :class:`NatsSourceError` says why not."""
        self._thread = threading.Thread(target=self._thread_main, name="nats-range", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            self.close()
            raise NatsSourceError(f"no answer from {self.range.url} within {timeout_s:g} s", unreachable=True)
        if self._open_error is not None:
            raise self._open_error

    def batches(self) -> Iterator[list[Item]]:
        while (items := self._buffer.get()) is not None:
            yield items

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._fetch_all())
        except NatsSourceError as exc:
            self._fail(exc)
        except Exception as exc:  # any client failure ends the read with one line
            # After the consumer exists, a failure is the server or the connection going away.
            where = f"{self.range.stream} from {self.range.url}"
            self._fail(NatsSourceError(f"reading {where} failed: {_short(exc)}", self._ready.is_set()))
        finally:
            self._ready.set()
            self._buffer.finish(self._buffer.error)

    def _fail(self, exc: NatsSourceError) -> None:
        if self._ready.is_set():
            self._buffer.finish(exc)
        else:
            self._open_error = exc

    async def _fetch_all(self) -> None:
        import nats
        from nats.errors import NoServersError
        from nats.errors import TimeoutError as NatsTimeout

        async def quiet(exc: Exception) -> None:
            return None

        rng = self.range
        try:
            # One attempt: nats-py retries forever with max_reconnect_attempts=0.
            connecting = nats.connect(
                rng.url,
                connect_timeout=CONNECT_TIMEOUT_S,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.05,
                error_cb=quiet,
            )
            nc = await asyncio.wait_for(connecting, CONNECT_TIMEOUT_S + 1.0)
        except (NoServersError, OSError, TimeoutError, NatsTimeout) as exc:
            raise NatsSourceError(f"NATS is not reachable at {rng.url} ({_short(exc)})", unreachable=True) from None
        except Exception as exc:  # a malformed URL among others
            raise NatsSourceError(f"cannot connect to NATS at {rng.url}: {_short(exc)}", unreachable=True) from None
        try:
            sub = await self._subscribe(nc)
            self._ready.set()
            if sub is not None:
                await self._drain(sub)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _subscribe(self, nc: object) -> object | None:
        """The ephemeral consumer at the range's start, or ``None`` when the range is empty."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        rng = self.range
        js = nc.jetstream()  # type: ignore[attr-defined]
        try:
            info = await js.stream_info(rng.stream)
        except NotFoundError:
            raise NatsSourceError(f"no stream {rng.stream} on {rng.url}") from None
        self.stream_last_seq = info.state.last_seq
        if info.state.messages == 0 or (rng.start_seq is not None and rng.start_seq > self.stream_last_seq):
            return None
        cfg = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            inactive_threshold=INACTIVE_THRESHOLD_S,
            mem_storage=True,
            max_waiting=1,
        )
        if rng.start_seq is not None:
            cfg.deliver_policy, cfg.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, max(1, rng.start_seq)
        elif rng.start_time is not None:
            cfg.deliver_policy, cfg.opt_start_time = DeliverPolicy.BY_START_TIME, iso(rng.start_time)
        else:
            cfg.deliver_policy = DeliverPolicy.ALL
        sub = await js.pull_subscribe(rng.filter_subject(), stream=rng.stream, config=cfg)
        cinfo = await sub.consumer_info()
        self._consumer = (js, cinfo.name)
        if cinfo.num_pending > 0:
            return sub
        await self._remove_consumer(sub)
        return None

    async def _remove_consumer(self, sub: object) -> None:
        """Unsubscribe and delete the ephemeral consumer now rather than leave it to the server's timeout."""
        with contextlib.suppress(Exception):
            await sub.unsubscribe()  # type: ignore[attr-defined]
        if self._consumer is not None:
            js, name = self._consumer
            with contextlib.suppress(Exception):
                await js.delete_consumer(self.range.stream, name)

    async def _drain(self, sub: object) -> None:
        from nats.errors import TimeoutError as NatsTimeout

        rng = self.range
        end_seq = min(rng.end_seq or self.stream_last_seq, self.stream_last_seq)
        try:
            while not self._stop.is_set():
                try:
                    msgs = await sub.fetch(FETCH_MESSAGES, timeout=FETCH_TIMEOUT_S)  # type: ignore[attr-defined]
                except NatsTimeout:
                    return
                for msg in msgs:
                    md = msg.metadata
                    seq = md.sequence.stream
                    if seq > end_seq or (rng.end_time is not None and md.timestamp > rng.end_time):
                        return
                    self._take(msg.subject, seq, msg.data)
                    if self._full() or md.num_pending == 0 or seq >= end_seq:
                        return
        finally:
            await self._remove_consumer(sub)

    def _full(self) -> bool:
        return self._limit is not None and self.events >= self._limit

    def _take(self, subject: str, seq: int, data: bytes) -> None:
        if self._products and len(self._products) > 1 and subject_product(subject) not in self._products:
            self.skipped_messages += 1
            return
        self.messages += 1
        self.bytes_read += len(data)
        if self.first_seq is None:
            self.first_seq = seq
        self.last_seq = seq
        items = self._events(seq, data)
        if items:
            self._buffer.put(items, len(data), self._stop)

    def _events(self, seq: int, data: bytes) -> list[Item]:
        decoder = FrameDecoder(DEFAULT_MAX_FRAME_BYTES)
        try:
            payloads = decoder.feed(data)
        except FrameTooLarge as exc:
            payloads = exc.payloads
            self._bad("oversize", seq)
        if decoder.buffered:
            self._bad("bad_frame", seq)
        items: list[Item] = []
        for p in payloads:
            if self._full():
                break
            try:
                obj = orjson.loads(p)
            except orjson.JSONDecodeError:
                reason = lenient_refusal(p)
                if reason is not None:
                    self._bad(reason, seq)
                else:
                    self.lenient += 1
                    items.append(p)
                    self.events += 1
                continue
            if type(obj) is not dict:
                self._bad("not_object", seq)
                continue
            items.append(obj if self._parse else p)
            self.events += 1
        return items

    def _bad(self, reason: str, seq: int) -> None:
        self.malformed[reason] += 1
        if len(self.malformed_lines) < MAX_REPORTED_LINES:
            self.malformed_lines.append(seq)


def _bound(seq: int | None, t: datetime | None, default: str) -> str:
    return f"seq {seq}" if seq is not None else iso(t) if t is not None else default


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
