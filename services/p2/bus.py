"""The in-process message bus: pub/sub over batches with a bounded, drop-oldest queue per subscriber.

Publishing never waits: the reader that publishes must not slow down because a consumer does.
Each subscriber's queue is bounded in events; when a batch would overflow it, the oldest events
are dropped and counted against that subscriber alone, cut with ``Batch.tail``, the one place a
batch is sliced. Events move as ``p2.batch.Batch`` objects so the hot path pays one queue
operation and one wake-up per batch, not per event.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from mercurystream.p2.batch import Batch


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
