"""``RECORD=true``: every event's recorded line appended to ``RECORD_FILE`` as JSONL, written off the loop.

The file is rolled once it holds ``RECORD_ROTATE_BYTES``: renamed ``<stem>.<UTC time>-<n>.jsonl``, and
the next line starts a new ``RECORD_FILE``. The oldest closed files are then removed until the
recording, a full open file included, fits ``RECORD_MAX_BYTES`` (counted in
``mercurystream_recordings_pruned_total``): a feed that never stops must not fill the disk.

``RECORD_FORMAT=parquet`` swaps the writer for :class:`~mercurystream.p2.recorder_parquet.ParquetRecordWriter`,
whose thread pipes the same lines to a child process that builds the rotating Parquet files; the
handoff below is the same for both.

Why a dedicated writer thread rather than aiofiles: aiofiles sends every call to the shared default
executor and the loop then awaits each write, so a slow disk would still stall this consumer one
write at a time. One thread that owns the file pipelines instead: the loop hands it whole batches,
the thread joins every batch waiting for it into one ``write`` and flushes once per wake-up, so
writes coalesce exactly when the load is high.

The handoff is bounded at ``max_pending_batches`` handoffs and ``MAX_PENDING_BYTES``: when the disk falls behind,
:meth:`RecorderConsumer.process_pending` leaves its queue alone, the queue fills, and the bus drops
the oldest on this subscription alone, counted in ``mercurystream_drops_total{consumer="recorder"}``.
Nothing grows without bound. The thread never calls back into the loop: it only advances a counter
that the consumer shell polls while the recorder is at the bound (``consumer.BLOCKED_POLL_S``).
Measured here, uvloop ran callbacks scheduled with ``call_soon_threadsafe`` up to 1.5 s late while
the loop was saturated, which made the recorder drop at loads the disk kept up with; a 1 ms poll has
no such dependency and costs nothing when the writer keeps up.

The recorder never waits on the loop, so it runs in the shared task of the consumers that never
wait (:class:`~mercurystream.p2.consumer.SyncConsumers`), handing its writer each round's lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from itertools import chain
from pathlib import Path

from loguru import logger

from mercurystream.p2.batch import Batch
from mercurystream.p2.bus import Bus
from mercurystream.p2.config import P2Settings
from mercurystream.p2.consumer import Consumer
from mercurystream.p2.metrics import P2Metrics
from mercurystream.shared.logger import LogSampler
from mercurystream.shared.recording import cut_torn_line, file_stem, next_closed_name, prune_closed

MAX_PENDING_BATCHES = 8
COALESCE_LINES = 4096
"""Lines per handoff to the writer thread under load (about 1 MB of P1 events)."""
COALESCE_BYTES = 2 << 20
"""Bytes per handoff at most (plus one batch): bounds a handoff of unusually long lines."""
MAX_PENDING_BYTES = MAX_PENDING_BATCHES * COALESCE_BYTES
"""Bytes handed to the writer and not yet written, beyond which the recorder takes nothing more."""
COALESCE_S = 0.02
"""The longest a line waits in the loop before its handoff."""

_STOP = object()


class JsonlWriter:
    """A thread that appends batches of lines to one file; no event loop involved.

    ``submitted`` (advanced only by the submitting thread) minus ``done`` (advanced only by the
    writer, after a batch is written or has failed) is the number of batches in flight, and the
    ``*_bytes`` pair their bytes; each counter has a single writer, so reading them from the other
    thread needs no lock.

    The file only ever holds whole lines (issue 13, D4). Each write goes out with ``os.write`` until
    done; a full disk first writes short, then fails, and the file is then cut back to the last whole
    line that made it: those lines count as ``written``, exactly the rest as ``errors``, and the next
    batch appends after them once there is space again. If even the cut fails, the file is closed;
    the next open cuts a torn last line, and when it cannot, the recorder goes on in a new file
    beside it (``<stem>.<UTC time><suffix>``) and says so in the log.
    """

    def __init__(
        self,
        path: Path,
        on_written: Callable[[int], None] | None = None,
        on_error: Callable[[int], None] | None = None,
        rotate_bytes: int | None = None,
        max_bytes: int | None = None,
        on_pruned: Callable[[int], None] | None = None,
    ) -> None:
        self.base = Path(path)
        self.path = self.base
        self.rotate_bytes = rotate_bytes
        """Roll the file once it holds this many bytes (``None``: never)."""
        self.max_bytes = max_bytes
        """Keep the recording's files, the open one included, under this many bytes (``None``: no bound)."""
        self.pruned = 0
        self._on_pruned = on_pruned
        self._seq = 0
        """The number of the last closed file this writer named."""
        self.written = 0
        self.errors = 0
        self.submitted = 0
        self.done = 0
        self.submitted_bytes = 0
        self.done_bytes = 0
        self._on_written = on_written
        self._on_error = on_error
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._fd: int | None = None
        self._size = 0
        """The file's size when the current write started: where a failed write is cut back to."""
        self._thread: threading.Thread | None = None
        self._sampler = LogSampler()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"recorder:{self.path.name}", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self.submitted - self.done

    @property
    def pending_bytes(self) -> int:
        return self.submitted_bytes - self.done_bytes

    def submit(self, *batches: list[bytes], nbytes: int = 0) -> None:
        """Queue one handoff of one or more batches' lines (shared with other consumers: read, never mutated).

        ``nbytes``, the lines' size as the caller counted it, is what :attr:`pending_bytes` counts.
        """
        self.submitted += 1
        self.submitted_bytes += nbytes
        self._queue.put((batches, nbytes))

    def close(self, timeout_s: float | None = None) -> bool:
        """Write what is queued, flush, close the file. ``False`` if the thread did not finish in time."""
        if self._thread is None:
            self._close_file()
            return True
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        q = self._queue
        while True:
            try:
                items = [q.get(timeout=self._wait_s())]
            except queue.Empty:
                items = []
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(q.get_nowait())
            handoffs = [item for item in items if item is not _STOP]
            batches = [lines for handoff, _ in handoffs for lines in handoff]
            n = sum(map(len, batches))
            self._handle(batches, n, len(handoffs), sum(nbytes for _, nbytes in handoffs))
            if len(handoffs) != len(items):
                self._close_file()
                return
            self._tick()

    def _handle(self, batches: list[list[bytes]], n: int, handoffs: int, nbytes: int) -> None:
        """Write what woke the thread (``n`` lines of ``handoffs`` handoffs); they are then no longer pending."""
        if n:
            self._write(batches, n)
        self.done += handoffs
        self.done_bytes += nbytes

    def _wait_s(self) -> float | None:
        """How long the thread may sleep waiting for work (``None``: until some arrives)."""
        return None

    def _tick(self) -> None:
        """Called after every wake-up: time-based work (a rotation) goes here."""

    def write(self, batches: list[list[bytes]]) -> None:
        """The writer thread's step, done on the caller's thread instead (profiling, tools)."""
        self._write(batches, sum(len(b) for b in batches))

    def _write(self, batches: list[list[bytes]], n: int) -> None:
        """One write of everything that was waiting; what a failure leaves is whole lines, counted exactly."""
        sent = 0
        try:
            # One copy of the lines, made while holding the GIL the busy loop also wants; the
            # final line break is a second, tiny write rather than a second copy of everything.
            data = b"\n".join(chain.from_iterable(batches))
            fd = self._open_fd()
            # Where this write starts: read per write, so a file cut or rotated meanwhile is never
            # extended by a cut back to a stale size. One fstat per handoff of up to 4,096 lines.
            self._size = os.fstat(fd).st_size
            for part in (data, b"\n"):
                view = memoryview(part)
                while view:
                    k = _os_write(fd, view)
                    sent += k
                    view = view[k:]
        except Exception as exc:
            kept = self._cut_back(data, sent) if sent else 0
            self._count(kept)
            lost = n - kept
            self.errors += lost
            if self._on_error is not None:
                self._on_error(lost)
            if self._sampler.should_log("write"):
                logger.error(
                    f"recorder: writing {n} events to {self.path} failed: {exc!r}; {kept} whole lines kept, "
                    f"{lost} counted as errors, going on"
                )
            return
        self._count(n)
        if self.rotate_bytes is not None and self._size + len(data) + 1 >= self.rotate_bytes:
            self._roll()

    def _roll(self) -> None:
        """Close the file and rename it to its closed name; the next write starts a new one at ``base``."""
        self._close_file()
        self._seq, target = next_closed_name(file_stem(self.base), ".jsonl", self._seq)
        try:
            os.rename(self.path, target)
        except OSError as exc:
            if self._sampler.should_log("roll"):
                logger.error(f"recorder: rolling {self.path} to {target} failed: {exc!r}; appending to it still")
            return
        self.path = self.base
        self._prune()

    def _prune(self) -> None:
        """After a roll: the oldest closed files go until the recording fits ``max_bytes`` with a full open file."""
        if self.max_bytes is None:
            return
        removed = prune_closed(file_stem(self.base), self.max_bytes - (self.rotate_bytes or 0))
        if not removed:
            return
        self.pruned += len(removed)
        if self._on_pruned is not None:
            self._on_pruned(len(removed))
        if self._sampler.should_log("pruned"):
            logger.info(
                f"recorder: removed {len(removed)} oldest closed file(s) (e.g. {removed[0]}) to keep the recording "
                f"under RECORD_MAX_BYTES={self.max_bytes}"
            )

    def _count(self, n: int) -> None:
        if n:
            self.written += n
            if self._on_written is not None:
                self._on_written(n)

    def _open_fd(self) -> int:
        """The file's descriptor, opened (and a torn last line cut) if it is not open."""
        fd = self._fd
        if fd is not None:
            return fd
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _cut_torn_line(fd, self.path)
        except OSError as exc:
            os.close(fd)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            fresh = self.path.with_name(f"{self.path.stem}.{stamp}{self.path.suffix}")
            logger.error(
                f"recorder: {self.path} ends in a torn line that cannot be cut ({exc}); recording to {fresh} instead"
            )
            self.path = fresh
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        self._fd = fd
        return fd

    def _cut_back(self, data: bytes, sent: int) -> int:
        """After a failed write that got ``sent`` bytes out: cut the file to its last whole line; the lines kept.

        ``data`` is the write's lines joined; its final line break was a write of its own.
        """
        keep = len(data) + 1 if sent > len(data) else data.rfind(b"\n", 0, sent) + 1
        kept = data.count(b"\n", 0, keep) + (sent > len(data))
        fd = self._fd
        try:
            _os_ftruncate(fd, self._size + keep)  # type: ignore[arg-type]
        except OSError as exc:
            logger.error(f"recorder: cannot cut {self.path} back to its last whole line ({exc}); reopening it")
            self._close_file()
            return kept
        return kept

    def status_extra(self) -> str:
        """What the recorder's status line adds for this writer's format."""
        return ""

    def _close_file(self) -> None:
        fd = self._fd
        self._fd = None
        if fd is None:
            return
        try:
            os.close(fd)
        except OSError as exc:
            logger.error(f"recorder: closing {self.path} failed: {exc}")


_os_write = os.write
_os_ftruncate = os.ftruncate


def _cut_torn_line(fd: int, path: Path) -> int:
    """The size of ``fd``'s file once a torn last line (a killed writer's, a failed cut's) is cut off."""
    size, cut = cut_torn_line(fd, truncate=_os_ftruncate)
    if cut:
        logger.warning(f"recorder: cut {cut} bytes of a torn last line from {path}")
    return size


class RecorderConsumer(Consumer):
    """Records every event as received (plus the receive stamps) to ``RECORD_FILE``.

    Batches are handed to the writer thread in chunks of up to ``COALESCE_LINES`` lines, or after
    ``COALESCE_S`` when fewer arrive: every handoff wakes the thread, which must then take the GIL
    from the busy loop (``p2.tune_runtime``), and a handoff per socket read starved the writer and
    cost about a microsecond an event at saturation (``benchmarks/profile_p2.py``). While the
    writer is at its bound the recorder takes nothing from its queue, so a stalled disk still stops
    the handoffs and the bus drops on this subscription.
    """

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
        self.format = settings.RECORD_FORMAT
        self.max_pending_batches = max_pending_batches
        self.max_pending_bytes = MAX_PENDING_BYTES
        self.writer: JsonlWriter
        if self.format == "parquet":
            from mercurystream.p2.recorder_parquet import ParquetRecordWriter

            self.writer = ParquetRecordWriter(
                self.path,
                rotate_bytes=settings.RECORD_ROTATE_BYTES,
                rotate_s=settings.RECORD_ROTATE_S,
                max_bytes=settings.RECORD_MAX_BYTES,
                on_pruned=metrics.recordings_pruned_total.inc,
                on_written=metrics.recorded_total.inc,
                on_error=metrics.recorder_errors_total.inc,
                on_rejected=lambda reason, n: metrics.recorder_rejected_total.labels(reason).inc(n),
                log_level=settings.LOG_LEVEL,
                log_json=settings.LOG_JSON,
            )
        else:
            self.writer = JsonlWriter(
                self.path,
                on_written=metrics.recorded_total.inc,
                on_error=metrics.recorder_errors_total.inc,
                rotate_bytes=settings.RECORD_ROTATE_BYTES,
                max_bytes=settings.RECORD_MAX_BYTES,
                on_pruned=metrics.recordings_pruned_total.inc,
            )
        self.coalesce_lines = max(1, min(COALESCE_LINES, settings.BUS_QUEUE_EVENTS // 4))
        """A chunk stays a small part of this consumer's backlog, which belongs in its bus queue
        (where drop-oldest applies), not in the chunk."""
        self._chunk: list[list[bytes]] = []
        self._chunk_lines = 0
        self._chunk_bytes = 0
        self._timer: asyncio.TimerHandle | None = None

    def open(self) -> None:
        self.writer.start()

    @property
    def settled(self) -> int:
        """JSONL: only lines the writer has written (or failed and counted), so an acknowledged NATS
        message is in the file even if P2 is killed next. Parquet rows become durable only when their
        file closes (minutes), so there it is what was handed to the writer, as for other consumers."""
        if self.format == "parquet":
            return super().settled
        w = self.writer
        return self.subscription.dropped + w.written + w.errors + sum(self.dropped.values())

    def handle(self, batch: Batch) -> None:
        """Add a batch to the chunk; hand the chunk over once it is large enough."""
        self._chunk.append(batch.lines)
        self._chunk_lines += len(batch)
        self._chunk_bytes += sum(map(len, batch.lines))
        if self._chunk_lines >= self.coalesce_lines or self._chunk_bytes >= COALESCE_BYTES:
            self.flush()

    def process_pending(self) -> int:
        """Take what fits under the writer's bound (whole batches, about the room left); a timer
        hands over a chunk too small to go at once. 0, with the queue untouched, at either bound."""
        n = 0
        writer = self.writer
        while (
            (self.max_pending_batches - writer.pending) * self.coalesce_lines - self._chunk_lines > 0
            and writer.pending_bytes + self._chunk_bytes < self.max_pending_bytes
        ):
            # One batch at a time, so a queue of long lines stops at the byte bound, not past it.
            got = self.subscription.take_nowait(1)
            if not got:
                break
            n += self._process(got)
        if n == 0:
            return 0
        if self._chunk and self._timer is None:
            with contextlib.suppress(RuntimeError):  # driven without a loop (tools): close() flushes
                self._timer = asyncio.get_running_loop().call_later(COALESCE_S, self._flush_due)
        return n

    def _flush_due(self) -> None:
        self._timer = None
        if not self._chunk:
            return
        if self.writer.pending < self.max_pending_batches:
            self.flush()
        else:
            self._timer = asyncio.get_running_loop().call_later(COALESCE_S, self._flush_due)

    def flush(self) -> None:
        """Hand what is collected to the writer now, as one submission."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        chunk = self._chunk
        if not chunk:
            return
        nbytes = self._chunk_bytes
        self._chunk = []
        self._chunk_lines = self._chunk_bytes = 0
        self.writer.submit(*chunk, nbytes=nbytes)

    async def close(self) -> None:
        self.flush()
        if not await asyncio.to_thread(self.writer.close, 10.0):
            logger.error(f"recorder: writer for {self.path} did not finish within 10s")

    def status_line(self) -> str:
        w = self.writer
        line = f"file={w.path} written={w.written} errors={w.errors} drops={self.subscription.dropped}"
        return f"{line} format={self.format}{w.status_extra()}"
