"""``RECORD=true``: every event's recorded line appended to ``RECORD_FILE`` as JSONL, written off the loop.

Why a dedicated writer thread rather than aiofiles: aiofiles sends every call to the shared default
executor and the loop then awaits each write, so a slow disk would still stall this consumer one
write at a time. One thread that owns the file pipelines instead: the loop hands it whole batches,
the thread joins every batch waiting for it into one ``write`` and flushes once per wake-up, so
writes coalesce exactly when the load is high.

The handoff is bounded at ``max_pending_batches``: when the disk falls behind,
:meth:`RecorderConsumer.handle_async` waits, the recorder's bus queue fills, and the bus drops the
oldest on this subscription alone, counted in ``mercurystream_drops_total{consumer="recorder"}``.
Nothing grows without bound. The thread never calls back into the loop: it only advances a counter
that the consumer polls while it is at the bound. Measured here, uvloop ran callbacks scheduled with
``call_soon_threadsafe`` up to 1.5 s late while the loop was saturated, which made the recorder
drop at loads the disk kept up with; a 1 ms poll has no such dependency and costs nothing when the
writer keeps up.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from loguru import logger

from mercurystream.p2.bus import Batch, Bus
from mercurystream.p2.config import P2Settings
from mercurystream.p2.consumer import Consumer
from mercurystream.p2.metrics import P2Metrics
from mercurystream.shared.logger import LogSampler

MAX_PENDING_BATCHES = 32
PENDING_POLL_S = 0.001

_STOP = object()


class JsonlWriter:
    """A thread that appends batches of lines to one file; no event loop involved.

    ``submitted`` (advanced only by the submitting thread) minus ``done`` (advanced only by the
    writer, after a batch is written or has failed) is the number of batches in flight; each counter
    has a single writer, so reading them from the other thread needs no lock. A failed write counts
    its lines in ``errors``, closes the file and reopens it on the next batch, so a transient error
    (disk full) loses only what it hit.
    """

    def __init__(
        self,
        path: Path,
        on_written: Callable[[int], None] | None = None,
        on_error: Callable[[int], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.written = 0
        self.errors = 0
        self.submitted = 0
        self.done = 0
        self._on_written = on_written
        self._on_error = on_error
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._file: BinaryIO | None = None
        self._thread: threading.Thread | None = None
        self._sampler = LogSampler()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"recorder:{self.path.name}", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self.submitted - self.done

    def submit(self, lines: list[bytes]) -> None:
        """Queue one batch's lines (shared with other consumers: read, never mutated)."""
        self.submitted += 1
        self._queue.put(lines)

    def close(self, timeout_s: float | None = None) -> bool:
        """Write what is queued, flush, close the file. ``False`` if the thread did not finish in time."""
        if self._thread is None:
            return True
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        q = self._queue
        while True:
            items = [q.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(q.get_nowait())
            batches = [item for item in items if item is not _STOP]
            n = sum(len(b) for b in batches)
            if n:
                self._write(batches, n)
            self.done += len(batches)
            if len(batches) != len(items):
                self._close_file()
                return

    def _write(self, batches: list[list[bytes]], n: int) -> None:
        """One write and one flush for everything that was waiting; on any failure count ``n`` lost."""
        try:
            parts: list[bytes] = []
            for lines in batches:
                if lines:
                    parts.append(b"\n".join(lines))
                    parts.append(b"\n")
            data = b"".join(parts)
            f = self._file
            if f is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                f = self._file = open(self.path, "ab")  # noqa: SIM115 - held open across batches
            f.write(data)
            f.flush()
        except Exception as exc:
            self.errors += n
            if self._on_error is not None:
                self._on_error(n)
            if self._sampler.should_log("write"):
                logger.error(f"recorder: writing {n} events to {self.path} failed: {exc!r}; counted, going on")
            self._close_file()
            return
        self.written += n
        if self._on_written is not None:
            self._on_written(n)

    def _close_file(self) -> None:
        f = self._file
        self._file = None
        if f is None:
            return
        try:
            f.close()
        except Exception as exc:
            logger.error(f"recorder: closing {self.path} failed: {exc}")


class RecorderConsumer(Consumer):
    """Records every event as received (plus the receive stamps) to ``RECORD_FILE``."""

    name = "recorder"
    label = "RECORDER"

    def __init__(
        self,
        bus: Bus,
        settings: P2Settings,
        metrics: P2Metrics,
        max_pending_batches: int = MAX_PENDING_BATCHES,
    ) -> None:
        super().__init__(bus, settings.BUS_QUEUE_EVENTS)
        self.path = Path(settings.RECORD_FILE)
        self.max_pending_batches = max_pending_batches
        self.writer = JsonlWriter(
            self.path, on_written=metrics.recorded_total.inc, on_error=metrics.recorder_errors_total.inc
        )

    async def start(self) -> None:
        self.writer.start()
        await super().start()

    def handle(self, batch: Batch) -> None:
        """Hand a batch to the writer; :meth:`handle_async` first waits for room under the bound."""
        self.writer.submit(batch.lines)

    async def handle_async(self, batch: Batch) -> None:
        writer = self.writer
        limit = self.max_pending_batches
        while writer.pending >= limit:
            await asyncio.sleep(PENDING_POLL_S)
        self.handle(batch)

    async def close(self) -> None:
        if not await asyncio.to_thread(self.writer.close, 10.0):
            logger.error(f"recorder: writer for {self.path} did not finish within 10s")

    def status_line(self) -> str:
        w = self.writer
        return f"file={self.path} written={w.written} errors={w.errors} drops={self.subscription.dropped}"
