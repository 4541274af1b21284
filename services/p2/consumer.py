"""Consumers: an async shell that takes batches from the bus and hands them to synchronous code.

Each consumer's logic (analytics, detectors, flight recorder) is a plain class; the shell only
waits for batches, calls :meth:`Consumer.handle` for each, and counts what it processed. There
is no await per event.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod

from loguru import logger

from mercurystream.p2.bus import Batch, Bus, Subscription


class Consumer(ABC):
    """A bus subscriber with a start/stop lifecycle and a one-line status."""

    name: str = "consumer"
    label: str = "CONSUMER"

    def __init__(self, bus: Bus, capacity: int, max_batch_events: int = 0) -> None:
        self.subscription: Subscription = bus.subscribe(self.name, capacity)
        self.max_batch_events = max_batch_events
        self.processed = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.failed = 0
        self._on_processed = None

    def on_processed(self, callback) -> None:
        """``callback(name, n)`` after each handled batch (metrics hook)."""
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

    async def run(self) -> None:
        sub = self.subscription
        while True:
            if sub.empty:
                if self._stopping:
                    return
                await sub.wait()
            for batch in sub.take_nowait(self.max_batch_events):
                try:
                    await self.handle_async(batch)
                except Exception:
                    self.failed += len(batch)
                    logger.exception(
                        f"{self.name}: failed on a batch of {len(batch)} events; counted, skipped"
                    )
                self.processed += len(batch)
                if self._on_processed is not None:
                    self._on_processed(self.name, len(batch))
            await asyncio.sleep(0)

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self.run(), name=self.name)

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Finish what is queued (bounded by ``drain_timeout_s``), then close."""
        self._stopping = True
        self.subscription.wake()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), drain_timeout_s)
            except TimeoutError:
                logger.warning(f"{self.name}: {self.subscription.depth} events still queued at stop")
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        await self.close()

    async def close(self) -> None:
        """Release resources after the last batch (flush files, finish captures)."""

    def status(self) -> str:
        return f"{self.label:<10} | {self.status_line()}"
