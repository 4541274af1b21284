"""The in-process message bus: pub/sub over batches with a bounded, drop-oldest queue per subscriber.

Publishing never waits: the reader that publishes must not slow down because a consumer does.
Each subscriber's queue is bounded in events and in bytes (``Batch.nbytes``); when a batch would
overflow either bound, the oldest events are dropped and counted against that subscriber alone,
under :data:`QUEUE_FULL` (the event bound) or :data:`QUEUE_BYTES` (the byte bound), cut with
``Batch.tail``, the one place a batch is sliced. Events move as ``p2.batch.Batch`` objects so the
hot path pays one queue operation and one wake-up per batch, not per event.

Dropping is for one consumer that falls behind the others. When every queue holds more than
``pause_bytes`` the loop itself is behind (a burst, a stall), and the bus asks its sources to stop
reading (:meth:`Bus.on_pressure`) until the least-behind queue is down to half of that: the unread
socket then holds the burst and TCP paces the sender, whose own buffer is bounded and counted.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from mercurystream.p2.batch import Batch

QUEUE_FULL = "queue_full"
"""Events dropped (oldest first) because a subscriber's queue held its bound in events."""
QUEUE_BYTES = "queue_bytes"
"""Events dropped (oldest first) because a subscriber's queue held its bound in bytes."""
DEFAULT_QUEUE_BYTES = 8 << 20
DEFAULT_PAUSE_BYTES = 4 << 20


class Subscription:
    """One subscriber's bounded queue. Only the bus puts; only the owning consumer takes."""

    __slots__ = (
        "_bus",
        "_queue",
        "_ready",
        "capacity",
        "delivered",
        "depth",
        "depth_bytes",
        "dropped",
        "dropped_bytes",
        "max_bytes",
        "name",
        "on_drop",
    )

    def __init__(
        self,
        name: str,
        capacity: int,
        on_drop: Callable[[str, int], None] | None = None,
        max_bytes: int = DEFAULT_QUEUE_BYTES,
    ) -> None:
        if capacity <= 0 or max_bytes <= 0:
            raise ValueError("capacity and max_bytes must be positive")
        self.name = name
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.on_drop = on_drop
        self._queue: deque[Batch] = deque()
        self._ready = asyncio.Event()
        self.depth = 0
        self.depth_bytes = 0
        self.dropped = 0
        """Events dropped from this queue, for either bound."""
        self.dropped_bytes = 0
        """Of :attr:`dropped`, those the byte bound dropped (:data:`QUEUE_BYTES`)."""
        self.delivered = 0
        self._bus: Bus | None = None

    def offer(self, batch: Batch) -> None:
        """Enqueue without waiting, dropping the oldest queued events beyond ``capacity`` events
        or ``max_bytes`` bytes; a single batch larger than the byte bound keeps its newest events."""
        n = len(batch)
        if n == 0:
            return
        queue = self._queue
        overflow = self.depth + n - self.capacity
        if overflow > 0:
            batch = self._drop_events(batch, overflow)
            self.dropped += overflow
        excess = self.depth_bytes + batch.nbytes - self.max_bytes
        by_bytes = 0
        if excess > 0:
            while excess > 0 and queue:
                k = queue[0].events_to_free(excess)
                excess -= self._drop_head(k)
                by_bytes += k
            if excess > 0:
                k = batch.events_to_free(excess)
                if k == len(batch):
                    k -= 1  # the newest event stays, whatever its size: the queue is never starved
                if k:
                    batch = batch.tail(k)
                by_bytes += k
            self.dropped += by_bytes
            self.dropped_bytes += by_bytes
        if (overflow > 0 or by_bytes) and self.on_drop is not None:
            self.on_drop(self.name, max(overflow, 0) + by_bytes)
        queue.append(batch)
        self.depth += len(batch)
        self.depth_bytes += batch.nbytes
        self._ready.set()

    def _drop_events(self, batch: Batch, overflow: int) -> Batch:
        """Drop ``overflow`` events, the oldest queued first, then the oldest of ``batch``."""
        queue = self._queue
        to_drop = overflow
        while to_drop > 0 and queue:
            k = min(len(queue[0]), to_drop)
            self._drop_head(k)
            to_drop -= k
        if to_drop:
            batch = batch.tail(to_drop)
        return batch

    def _drop_head(self, k: int) -> int:
        """Drop the ``k`` oldest events of the oldest queued batch (all of it, or cut with ``Batch.tail``);
        the bytes freed."""
        queue = self._queue
        head = queue[0]
        if k == len(head):
            queue.popleft()
            freed = head.nbytes
        else:
            cut = queue[0] = head.tail(k)
            freed = head.nbytes - cut.nbytes
        self.depth -= k
        self.depth_bytes -= freed
        return freed

    def take_nowait(self, max_events: int = 0) -> list[Batch]:
        """Everything queued (or about ``max_events`` of it, in whole batches), oldest first."""
        queue = self._queue
        if max_events <= 0 or self.depth <= max_events:
            out = list(queue)
            queue.clear()
            taken = self.depth
            self.depth_bytes = 0
        else:
            out = []
            taken = 0
            while queue and taken < max_events:
                b = queue.popleft()
                out.append(b)
                taken += len(b)
                self.depth_bytes -= b.nbytes
        self.depth -= taken
        self.delivered += taken
        if not queue:
            self._ready.clear()
        bus = self._bus
        if bus is not None and bus.paused:
            bus.relieve()
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

    def __init__(
        self,
        on_drop: Callable[[str, int], None] | None = None,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        judge: Callable[[Batch], None] | None = None,
        pause_bytes: int = DEFAULT_PAUSE_BYTES,
    ) -> None:
        """``queue_bytes`` bounds each subscriber's queue in bytes; ``judge`` (``p2.dedupe``) decides
        a batch's per-event verdicts once, in stream order, before any queue sees it; above
        ``pause_bytes`` in every queue the sources are asked to pause (0: never)."""
        self._subs: list[Subscription] = []
        self._on_drop = on_drop
        self.queue_bytes = queue_bytes
        self.judge = judge
        self.published = 0
        self.pause_bytes = pause_bytes
        self.paused = False
        self.pauses = 0
        """Times the sources were asked to pause."""
        self._listeners: list[Callable[[bool], None]] = []

    def subscribe(self, name: str, capacity: int, max_bytes: int | None = None) -> Subscription:
        if any(s.name == name for s in self._subs):
            raise ValueError(f"subscriber {name!r} already exists")
        sub = Subscription(name, capacity, self._on_drop, self.queue_bytes if max_bytes is None else max_bytes)
        sub._bus = self
        self._subs.append(sub)
        return sub

    def on_pressure(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(True)`` when the sources should stop reading, ``listener(False)`` when they may go on."""
        self._listeners.append(listener)

    def backlog_bytes(self) -> int:
        """What the least-behind subscriber still holds: above zero only while every one of them is behind."""
        return min([s.depth_bytes for s in self._subs], default=0)

    def relieve(self) -> None:
        """A subscriber took from its queue: let the sources read again once the backlog is down to half."""
        if self.paused and self.backlog_bytes() <= self.pause_bytes // 2:
            self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        self.paused = paused
        self.pauses += paused
        for listener in self._listeners:
            listener(paused)

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subs)

    def publish(self, batch: Batch) -> None:
        if not len(batch):
            return
        self.published += len(batch)
        if self.judge is not None:
            self.judge(batch)
        for sub in self._subs:
            sub.offer(batch)
        if self.pause_bytes and not self.paused and self._listeners and self.backlog_bytes() > self.pause_bytes:
            self._set_paused(True)

    def depths(self) -> dict[str, int]:
        return {s.name: s.depth for s in self._subs}

    def drained(self) -> bool:
        return all(s.empty for s in self._subs)
