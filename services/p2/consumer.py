"""Consumers: an async shell that takes batches from the bus and hands them to synchronous code.

Each consumer's logic (analytics, detectors, flight recorder) is a plain class; the shell only
waits for batches, calls :meth:`Consumer.handle` for each, and counts what it processed. There
is no await per event.

No exception loses a batch: when ``handle`` raises, the shell hands the batch over again one event
at a time (``Batch.part``), counts each event that still fails under :data:`CONSUMER_ERROR`, logs
a bounded sample and goes on. So for every consumer, at every moment,
``received = passed on + dropped (by reason) + queued + in hand``, where ``received`` and the
bus's drop-oldest are its subscription's, and the rest is :attr:`Consumer.processed` and
:attr:`Consumer.dropped`.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod

from loguru import logger

from mercurystream.p2.batch import Batch
from mercurystream.p2.bus import Bus, Subscription
from mercurystream.shared.clip import SAMPLE_MAX, clip, preview
from mercurystream.shared.logger import LogSampler

CONSUMER_ERROR = "consumer_error"
"""An event the consumer raised on, alone: counted, sampled in the log, skipped."""
SHUTDOWN = "shutdown"
"""An event a consumer gave up at stop without handling it (the slow demo consumer)."""


class Consumer(ABC):
    """A bus subscriber with a start/stop lifecycle and a one-line status."""

    name: str = "consumer"
    label: str = "CONSUMER"

    def __init__(self, bus: Bus, capacity: int, max_batch_events: int = 0) -> None:
        self.subscription: Subscription = bus.subscribe(self.name, capacity)
        self.max_batch_events = max_batch_events
        self.processed = 0
        """Events this consumer is done with: passed on, or dropped under a reason in :attr:`dropped`."""
        self.dropped: dict[str, int] = {}
        """Events this consumer took and did not pass on, by reason (the bus's drops are its subscription's)."""
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._error_sampler = LogSampler()
        self._on_processed = None

    @property
    def failed(self) -> int:
        """Events counted under :data:`CONSUMER_ERROR`."""
        return self.dropped.get(CONSUMER_ERROR, 0)

    @property
    def settled(self) -> int:
        """Events offered to this consumer that it is finished with: dropped by the bus, or processed.

        A prefix of what the bus offered it, so the NATS source (``p2.nats_source``) acknowledges a
        message once every consumer that never waits has settled past its events.
        """
        return self.subscription.dropped + self.processed

    @property
    def passed_on(self) -> int:
        """Events handled to the end (``mercurystream_consumer_events_total``)."""
        return self.processed - sum(self.dropped.values())

    def drop(self, reason: str, n: int) -> None:
        """Count ``n`` events this consumer took and will not pass on (they stay in :attr:`processed`)."""
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def on_processed(self, callback) -> None:
        """``callback(name, n)`` after each handled batch (a progress hook for tests and tools; P2's
        metrics read :attr:`processed` at scrape time instead)."""
        self._on_processed = callback

    @abstractmethod
    def handle(self, batch: Batch) -> None:
        """Process one batch synchronously."""

    @abstractmethod
    def status_line(self) -> str:
        """The seed's status line, without the label."""

    async def handle_async(self, batch: Batch) -> None:
        """Override only where a consumer must wait (the slow demo consumer, the file recorder)."""
        self.handle(batch)

    @property
    def waits(self) -> bool:
        """Whether this consumer overrides :meth:`handle_async`, and so needs a task of its own."""
        return type(self).handle_async is not Consumer.handle_async

    def open(self) -> None:
        """Acquire what :meth:`handle` needs (writer threads); :meth:`start` calls it."""

    def process_pending(self) -> int:
        """Handle everything queued (up to ``max_batch_events``) synchronously; the number of events.

        The loop body of :meth:`run` for a consumer that never waits, and the way to drive a
        consumer without an event loop (profiling, tests).
        """
        return self._process(self.subscription.take_nowait(self.max_batch_events))

    def _process(self, batches: list[Batch]) -> int:
        handle = self.handle
        total = 0
        for batch in batches:
            n = len(batch)
            try:
                handle(batch)
            except Exception as exc:
                self._isolate(batch, exc)
            self.processed += n
            total += n
        if total and self._on_processed is not None:
            self._on_processed(self.name, total)
        return total

    def _isolate(self, batch: Batch, exc: Exception) -> None:
        """``handle`` raised on ``batch``: hand it over again one event at a time, counting each that fails.

        What the failed call had already done before raising stays done, so a rule that remembers
        (a dedupe, a duplicate detector) may see those events again; an exception is a bug, and
        the contract here is the accounting: no event is lost without a count.
        """
        n = len(batch)
        if n == 1:
            self._failed(batch, 0, exc)
            return
        for i in range(n):
            one = batch.part(i, i + 1)
            try:
                self.handle(one)
            except Exception as e:
                self._failed(one, i, e)

    def _failed(self, one: Batch, index: int, exc: BaseException) -> None:
        self.drop(CONSUMER_ERROR, 1)
        if self._error_sampler.should_log(CONSUMER_ERROR):
            line = one.lines[0] if len(one) else b""
            logger.warning(
                f"{self.name}: {CONSUMER_ERROR}: event {index} of its batch raised "
                f"{type(exc).__name__}: {clip(exc, SAMPLE_MAX)}; counted, skipped, the rest goes on; "
                f"event: {preview(line)}"
            )
            logger.opt(exception=exc).debug(f"{self.name}: {CONSUMER_ERROR} traceback")

    async def _isolate_async(self, batch: Batch, exc: Exception) -> None:
        """:meth:`_isolate` for a consumer that waits."""
        n = len(batch)
        if n == 1:
            self._failed(batch, 0, exc)
            return
        for i in range(n):
            one = batch.part(i, i + 1)
            try:
                await self.handle_async(one)
            except Exception as e:
                self._failed(one, i, e)

    async def run(self) -> None:
        sub = self.subscription
        waits = self.waits
        while True:
            if sub.empty:
                if self._stopping:
                    return
                await sub.wait()
            if not waits:
                if not self.process_pending() and not sub.empty:
                    await asyncio.sleep(BLOCKED_POLL_S)
                    continue
                if sub.empty:
                    continue  # the wait above yields to the loop; a second yield per round costs 5 % at saturation
            else:
                for batch in sub.take_nowait(self.max_batch_events):
                    n = len(batch)
                    try:
                        await self.handle_async(batch)
                    except Exception as exc:
                        await self._isolate_async(batch, exc)
                    self.processed += n
                    if self._on_processed is not None:
                        self._on_processed(self.name, n)
            await asyncio.sleep(0)

    async def start(self) -> None:
        self.open()
        self._stopping = False
        self._task = asyncio.create_task(self.run(), name=self.name)

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Finish what is queued (bounded by ``drain_timeout_s``), then close."""
        self._stopping = True
        self.subscription.wake()
        if self._task is not None:
            await _finish(self._task, drain_timeout_s, [self])
        await self.close()

    async def close(self) -> None:
        """Release resources after the last batch (flush files, finish captures)."""

    def status(self) -> str:
        return f"{self.label:<10} | {self.status_line()}"


async def _finish(task: asyncio.Task[None], timeout_s: float, consumers: list[Consumer]) -> None:
    """Let a consumer task drain its queues for ``timeout_s``, then cancel it, saying what was left."""
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout_s)
    except TimeoutError:
        for c in consumers:
            if not c.subscription.empty:
                logger.warning(f"{c.name}: {c.subscription.depth} events still queued at stop")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


YIELD_BELOW_EVENTS = 1024
""":class:`SyncConsumers` lets the reader in after a consumer that took fewer events than this."""

BLOCKED_POLL_S = 0.001
"""How often a consumer that left its queue untouched (the recorder, while its writer thread is at
its bound) looks again: it waits on something other than its queue, so a wake-up would not come."""


class SyncConsumers:
    """One task for all the consumers that never wait; under light load, one of them per loop iteration.

    They all run on the loop's one thread, so a task each bought no isolation, only a wake-up each
    per socket read; worse, every woken task ran in the same loop iteration, so after a big read
    the socket went unread for the sum of their work (about 10 ms behind a 600-event read at 50k
    events/s, which was the tail of P1→P2 latency). Here the task yields after a consumer that took
    fewer than :data:`YIELD_BELOW_EVENTS`, so the reader gets the loop between them and stamps what
    arrived on time. Under load the consumers take more and run back to back, as before: yielding
    there let the reader slice the stream into five times as many small reads, which cost 15 % of
    the sustained rate, and the unread socket is what paces the sender by TCP backpressure.
    The recorder is one of them: with a task of its own it waited for the whole group's turn
    (80 ms at saturation), and its writer thread idled meanwhile. Each consumer keeps its own
    bounded queue and drop count; :meth:`start` and :meth:`stop` are the group's lifecycle (open
    all, drain all within one timeout, close all).
    """

    def __init__(self, consumers: list[Consumer]) -> None:
        if any(c.waits for c in consumers):
            raise ValueError("a consumer that waits needs a task of its own")
        self.consumers = consumers
        self._ready = asyncio.Event()
        for c in consumers:
            c.subscription.share_wakeup(self._ready)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def run(self) -> None:
        consumers = self.consumers
        subs = [c.subscription for c in consumers]
        ready = self._ready
        while True:
            if all(s.empty for s in subs):
                if self._stopping:
                    return
                ready.clear()
                await ready.wait()
                continue
            progress = 0
            for c in consumers:
                if not c.subscription.empty:
                    n = c.process_pending()
                    progress += n
                    if n < YIELD_BELOW_EVENTS:
                        await asyncio.sleep(0)
            if not progress:
                await asyncio.sleep(BLOCKED_POLL_S)

    async def start(self) -> None:
        for c in self.consumers:
            c.open()
        self._stopping = False
        self._task = asyncio.create_task(self.run(), name="sync-consumers")

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Finish what is queued (bounded by ``drain_timeout_s`` for the whole group), then close each."""
        self._stopping = True
        self._ready.set()
        if self._task is not None:
            await _finish(self._task, drain_timeout_s, self.consumers)
        for c in self.consumers:
            await c.close()
