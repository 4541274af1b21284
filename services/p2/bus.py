"""The in-process message bus: pub/sub over batches with a bounded, drop-oldest queue per subscriber.

Publishing never waits: the reader that publishes must not slow down because a consumer does.
Each subscriber's queue is bounded in events; when a batch would overflow it, the oldest events
are dropped and counted against that subscriber alone. Events move as :class:`Batch` objects so
the hot path pays one queue operation and one wake-up per batch, not per event.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, Self, TypeVar


class Derived(Protocol):
    """Data computed from a batch's events once and shared by every subscriber (see :meth:`Batch.derived`)."""

    @classmethod
    def of(cls, batch: Batch) -> Self: ...

    def tail(self, start: int) -> Self:
        """The same data for ``events[start:]``."""
        ...


D = TypeVar("D", bound=Derived)


class Batch:
    """Events that arrived together.

    ``events`` are the parsed JSON objects as received (a ``shared.event.LazyEvents`` that parses them on
    first use when the receiver decoded the read straight into columns); ``lines`` are the same events as bytes,
    exactly as received plus the receive stamps (``recv_ts_ms``, ``recv_ts_us``: the batch's
    ``recv_ts_us``, unless the event arrived with stamps of its own), for the recorder and the
    flight recorder. The stamps live in the lines and here, not in the event objects: adding two
    keys to every parsed object cost a dict resize each, and nearly doubled its size. Both lists
    are shared by every subscriber and must not be mutated.
    """

    __slots__ = ("_derived", "events", "ingest_us", "latencies_ms", "latency_at", "lines", "recv_ts_us")

    def __init__(
        self,
        events: Sequence[dict[str, Any]],
        lines: list[bytes],
        recv_ts_us: int,
        derived: dict[type, Any] | None = None,
        *,
        latencies_ms: list[float] | None = None,
        latency_at: list[int] | None = None,
        ingest_us: Sequence[int] | None = None,
    ) -> None:
        self.events = events
        self.lines = lines
        self.recv_ts_us = recv_ts_us
        self.latencies_ms = latencies_ms
        """The P1→P2 latency (``shared.event.latency_ms`` of each recorded line) of every event that
        has one, in event order, as the receiver computed them; ``None`` when nobody did (a batch
        built by hand from stamped events), and then a consumer applies the rule to the events."""
        self.latency_at = latency_at
        """The event index of each of ``latencies_ms``; ``None`` when every event has one."""
        self.ingest_us = ingest_us
        """Every event's ``ingest_ts_us`` in event order when all are ints, else ``None``."""
        self._derived = derived

    def __len__(self) -> int:
        return len(self.events)

    def derived(self, kind: type[D]) -> D:
        """``kind.of(self)``, computed by the first subscriber that asks and shared with the others.

        Several consumers need the same per-event work (the analytics all validate every trade and
        parse its time); doing it once per batch instead of once per consumer is the difference.
        Everything runs on the loop's thread, so no lock is needed.
        """
        memo = self._derived
        if memo is None:
            memo = self._derived = {}
        value = memo.get(kind)
        if value is None:
            value = memo[kind] = kind.of(self)
        return value

    def tail(self, start: int) -> Batch:
        """The events from ``start`` on, as a new batch (used when the oldest part is dropped)."""
        memo = self._derived
        derived = {k: v.tail(start) for k, v in memo.items()} if memo else None
        lat = self.latencies_ms
        at = self.latency_at
        if lat is not None and at is not None:
            k = bisect_left(at, start)
            lat = lat[k:]
            at = [i - start for i in at[k:]]
        elif lat is not None:
            lat = lat[start:]
        ing = self.ingest_us
        return Batch(
            self.events[start:],
            self.lines[start:],
            self.recv_ts_us,
            derived,
            latencies_ms=lat,
            latency_at=at,
            ingest_us=None if ing is None else ing[start:],
        )


class Subscription:
    """One subscriber's bounded queue. Only the bus puts; only the owning consumer takes."""

    __slots__ = ("_queue", "_ready", "capacity", "delivered", "depth", "dropped", "name", "on_drop")

    def __init__(self, name: str, capacity: int, on_drop: Callable[[str, int], None] | None = None) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.name = name
        self.capacity = capacity
        self.on_drop = on_drop
        self._queue: deque[Batch] = deque()
        self._ready = asyncio.Event()
        self.depth = 0
        self.dropped = 0
        self.delivered = 0

    def offer(self, batch: Batch) -> None:
        """Enqueue without waiting, dropping the oldest queued events beyond ``capacity``."""
        n = len(batch)
        if n == 0:
            return
        queue = self._queue
        overflow = self.depth + n - self.capacity
        if overflow > 0:
            to_drop = overflow
            while to_drop > 0 and queue:
                head = queue[0]
                h = len(head)
                if h <= to_drop:
                    queue.popleft()
                    self.depth -= h
                    to_drop -= h
                else:
                    queue[0] = head.tail(to_drop)
                    self.depth -= to_drop
                    to_drop = 0
            if to_drop:
                batch = batch.tail(to_drop)
                n -= to_drop
            self.dropped += overflow
            if self.on_drop is not None:
                self.on_drop(self.name, overflow)
        queue.append(batch)
        self.depth += n
        self._ready.set()

    def take_nowait(self, max_events: int = 0) -> list[Batch]:
        """Everything queued (or about ``max_events`` of it, in whole batches), oldest first."""
        queue = self._queue
        if max_events <= 0 or self.depth <= max_events:
            out = list(queue)
            queue.clear()
            taken = self.depth
        else:
            out = []
            taken = 0
            while queue and taken < max_events:
                b = queue.popleft()
                out.append(b)
                taken += len(b)
        self.depth -= taken
        self.delivered += taken
        if not queue:
            self._ready.clear()
        return out

    def share_wakeup(self, ready: asyncio.Event) -> None:
        """Set ``ready`` (shared with other subscriptions) on every offer instead of an event of its own.

        The owner of a shared event must not rely on it being clear while this queue has events:
        :meth:`take_nowait` clears it when this queue empties, whatever the others hold.
        """
        self._ready = ready

    async def wait(self) -> None:
        """Return once something is queued or :meth:`wake` was called."""
        if not self._queue:
            await self._ready.wait()

    def wake(self) -> None:
        self._ready.set()

    @property
    def empty(self) -> bool:
        return not self._queue


class Bus:
    """Fan-out of batches to every subscriber."""

    def __init__(self, on_drop: Callable[[str, int], None] | None = None) -> None:
        self._subs: list[Subscription] = []
        self._on_drop = on_drop
        self.published = 0

    def subscribe(self, name: str, capacity: int) -> Subscription:
        if any(s.name == name for s in self._subs):
            raise ValueError(f"subscriber {name!r} already exists")
        sub = Subscription(name, capacity, self._on_drop)
        self._subs.append(sub)
        return sub

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subs)

    def publish(self, batch: Batch) -> None:
        if not len(batch):
            return
        self.published += len(batch)
        for sub in self._subs:
            sub.offer(batch)

    def depths(self) -> dict[str, int]:
        return {s.name: s.depth for s in self._subs}

    def drained(self) -> bool:
        return all(s.empty for s in self._subs)
