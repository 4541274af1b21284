"""``RECORD_FORMAT=parquet``: the recorder's lines as rotating zstd Parquet files, built in a child process.

Why a child process: turning a line into a typed row (:mod:`mercurystream.shared.parquet`) costs
about a microsecond of C and Arrow work an event with its line scanner (several on the plain
path), against a fraction of one to append it to JSONL. On a thread of P2 that work holds the GIL
the event loop needs, so it lowered P2's zero-drop throughput. Here the loop hands over the same
recorded lines as for JSONL (:class:`~mercurystream.p2.recorder.RecorderConsumer`); the writer
thread takes their lengths and hands the lines themselves to ``writev`` (:func:`send`: no join,
the copy done by the kernel with the GIL released), so recording Parquet costs P2 less than
appending JSONL; the child, ``python -m mercurystream.p2.recorder_parquet``, parses them into rows
and writes the files (:class:`ParquetFiles`). P2 no longer loads pyarrow at all.

Files are ``<RECORD_FILE without suffix>.<UTC start>-<n>.parquet``, written as ``….parquet.part``
and renamed when closed: a reader globbing ``*.parquet`` never opens a file that has no footer yet.
A file is closed (rolled) once it reaches ``RECORD_ROTATE_BYTES`` or has been open
``RECORD_ROTATE_S``, and on stop. After each close P2 removes the oldest closed files beyond
``RECORD_MAX_BYTES`` (:func:`~mercurystream.shared.recording.prune_closed`), as for JSONL.

Accounting: the child reports back on its stdout, one JSON object a line, read by a thread of P2.
A row counts as written (``mercurystream_recorded_events_total``) when its file is closed, because
a Parquet file is unreadable until then. A line with no row (invalid, or a required field missing
or mistyped, as schema drift is) counts in ``mercurystream_recorder_rejected_total{reason}``; rows
of a file whose write or close failed count in ``mercurystream_recorder_errors_total``, and that
``.part`` file is removed. A child that dies counts every line it had not accounted for as errors,
and the next handoff starts a new one.

Bounds: a handoff stays pending (``pending``, ``pending_bytes``, which the recorder bounds) until the
child has appended its rows, so the pipe (at most :data:`PIPE_BYTES`) and the child's message are
inside the recorder's bound; the child holds one message and one row group at most.

Priority: the child runs at P2's own. A recording is evidence, so where cores are short it takes
its share as the JSONL recorder does on P2's loop, rather than being the first consumer to drop.

Stop: P2 closes the pipe; the child writes what it has, closes its file, reports and exits, and P2
waits for it, so SIGTERM loses no row. The child ignores SIGINT and SIGTERM (a terminal's Ctrl-C
reaches the whole process group) and ends only when the pipe closes, which also happens when P2 is
killed: its open file is then still closed properly.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import accumulate, chain, pairwise
from pathlib import Path
from typing import Any

import orjson
from loguru import logger

from mercurystream.p2.recorder import JsonlWriter
from mercurystream.shared.logger import LogSampler, setup_logging
from mercurystream.shared.recording import PART_SUFFIX, file_stem, next_closed_name
from mercurystream.shared.runtime import tune_gc

HEADER = struct.Struct("<IQ")
"""One message on the pipe: its lines and their bytes; then each line's length (8 bytes each), then
the lines back to back. Lengths, not a separator: a line may hold any byte, and counting separators
costs P2 more than taking the lengths."""
CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1"}
"""Set for the writer process. pyarrow imports numpy, whose OpenBLAS starts a thread a core that spins
waiting for work the writer never gives it: about 0.1 s of CPU at every start, some of it after the
writer is ready, on the cores P2 and its producer share."""
PIPE_BYTES = 1 << 20
"""The pipe's capacity asked for (Linux's default limit for a process without privileges)."""
CHILD_READY_S = 30.0
"""How long P2's start waits for the child to have loaded pyarrow, so P2 takes traffic with its recorder ready."""
CHILD_EXIT_S = 30.0
"""How long P2 waits at stop for the child to write its last file."""
_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _iov_max() -> int:
    try:
        return max(16, os.sysconf("SC_IOV_MAX"))
    except (ValueError, OSError):
        return 16


_os_writev = os.writev
IOV_LINES = _iov_max()
"""Lines per ``writev`` (the system's limit on buffers per call; POSIX guarantees 16)."""


def send(fd: int, parts: Sequence[bytes | array], size: int) -> None:
    """All ``size`` bytes of ``parts`` onto the pipe in order, straight from the lines' own buffers.

    Why ``writev`` rather than joining: the kernel copies each line once, with the GIL released,
    where a join first copies them all in Python, holding the GIL the loop needs. A blocking pipe
    writes everything unless a signal cuts the call short; the rest then goes out as one piece.
    """
    sent = _os_writev(fd, parts)
    if sent < size:
        view = memoryview(b"".join(parts))[sent:]
        while view:
            view = view[os.write(fd, view) :]


class _Child:
    """One writer process and what P2 knows of it; ``finished`` once its reports are all read and its losses counted."""

    __slots__ = ("accounted", "finished", "inflight", "proc", "reader", "sent")

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.reader: threading.Thread | None = None
        self.inflight: deque[tuple[int, int]] = deque()
        """Per message sent and not yet acknowledged: its handoffs and bytes."""
        self.sent = 0
        """Lines sent to it."""
        self.accounted = 0
        """Of them, those it reported written, rejected or lost (advanced by its reader thread only)."""
        self.finished = False


class ParquetRecordWriter(JsonlWriter):
    """The JSONL writer's thread and handoff, piping the lines to the child that writes Parquet files.

    ``path`` is the file being written, or the last one closed (the status line shows it); ``files``
    counts the files closed. ``done`` advances when the child acknowledges a message (on the
    reader thread), or at once for a handoff that could not be sent (counted as errors). One lock
    orders a message's registration against the end of its child, so every line sent is either
    acknowledged or counted lost, exactly once.
    """

    def __init__(
        self,
        base: Path,
        rotate_bytes: int,
        rotate_s: float,
        on_written: Callable[[int], None] | None = None,
        on_error: Callable[[int], None] | None = None,
        on_rejected: Callable[[str, int], None] | None = None,
        log_level: str = "INFO",
        log_json: bool = False,
        max_bytes: int | None = None,
        on_pruned: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(
            base,
            on_written=on_written,
            on_error=on_error,
            rotate_bytes=rotate_bytes,
            max_bytes=max_bytes,
            on_pruned=on_pruned,
        )
        self.stem = file_stem(self.base)
        self.rotate_s = rotate_s
        self.files = 0
        self.rejected = 0
        self._on_rejected = on_rejected
        self._log = (log_level, log_json)
        self._lock = threading.Lock()
        self._child: _Child | None = None
        self._closing = False
        self._ready = threading.Event()
        self._warn_stale_parts()

    def _warn_stale_parts(self) -> None:
        """Say so when an earlier run left ``.part`` files (it was killed): they have no footer."""
        try:
            stale = sorted(self.stem.parent.glob(f"{self.stem.name}.*.parquet{PART_SUFFIX}"))
        except OSError:
            return
        if stale:
            logger.warning(
                f"recorder: {len(stale)} unfinished Parquet file(s) from an earlier run (killed before it "
                f"closed them; unreadable), e.g. {stale[0]}"
            )

    @property
    def child_pid(self) -> int | None:
        child = self._child
        return None if child is None else child.proc.pid

    def start(self) -> None:
        """Start the child, wait until it is ready (it loads pyarrow: a moment), then the writer thread."""
        if self._spawn() is not None and not self._ready.wait(CHILD_READY_S):
            logger.warning(f"recorder: the Parquet writer process is not ready after {CHILD_READY_S:g}s; going on")
        super().start()

    def write(self, batches: list[list[bytes]]) -> None:
        """The writer thread's step on the caller's thread (tools): send the lines, without waiting for the child."""
        self._handle(batches, sum(map(len, batches)), 0, 0)

    def _handle(self, batches: list[list[bytes]], n: int, handoffs: int, nbytes: int) -> None:
        """Send the lines as one message; the handoffs are done when the child acknowledges it."""
        if not n:
            self._settle(handoffs, nbytes)
            return
        lines = list(chain.from_iterable(batches))
        lengths = array("Q", map(len, lines))
        chunks = [lines[i : i + IOV_LINES] for i in range(0, n, IOV_LINES)]
        sizes = [sum(lengths[i : i + IOV_LINES]) for i in range(0, n, IOV_LINES)]
        header = HEADER.pack(n, sum(sizes))
        child = self._child if self._child is not None else self._spawn()
        registered = False
        if child is not None:
            with self._lock:
                if not child.finished:
                    child.inflight.append((handoffs, nbytes))
                    child.sent += n
                    registered = True
        if not registered:
            self._lost(n, "no writer process")
            self._settle(handoffs, nbytes)
            return
        try:
            fd = child.proc.stdin.fileno()  # type: ignore[union-attr]
            send(fd, [header, lengths], HEADER.size + lengths.itemsize * n)
            for chunk, size in zip(chunks, sizes, strict=True):
                send(fd, chunk, size)
        except (OSError, ValueError) as exc:
            # The child is gone: its reader thread counts every line it had not accounted for,
            # these included, and settles the handoffs in flight.
            if self._sampler.should_log("pipe"):
                logger.error(f"recorder: handing {n} events to the Parquet writer failed: {exc!r}")
            self._end_child(child, kill=True)

    def _settle(self, handoffs: int, nbytes: int) -> None:
        with self._lock:
            self.done += handoffs
            self.done_bytes += nbytes

    def _lost(self, n: int, why: str) -> None:
        self.errors += n
        if self._on_error is not None and n:
            self._on_error(n)
        if n and self._sampler.should_log("write"):
            logger.error(f"recorder: {n} events not written to Parquet ({why}); counted, going on")

    def _spawn(self) -> _Child | None:
        """Start a child and the thread reading its reports; ``None`` (logged) if it cannot start."""
        level, json = self._log
        argv = [sys.executable, "-m", "mercurystream.p2.recorder_parquet", str(self.base)]
        argv += ["--rotate-bytes", str(self.rotate_bytes), "--rotate-s", repr(self.rotate_s), "--log-level", level]
        if json:
            argv.append("--log-json")
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env={**os.environ, **CHILD_ENV}
            )
        except OSError as exc:
            if self._sampler.should_log("spawn"):
                logger.error(f"recorder: starting the Parquet writer process failed: {exc!r}")
            return None
        with contextlib.suppress(OSError):
            fcntl.fcntl(proc.stdin.fileno(), _SETPIPE_SZ, PIPE_BYTES)  # type: ignore[union-attr]
        child = self._child = _Child(proc)
        child.reader = threading.Thread(target=self._read_reports, args=(child,), name="recorder:reports", daemon=True)
        child.reader.start()
        return child

    def _read_reports(self, child: _Child) -> None:
        """Apply the child's reports until it exits; then count what it never accounted for."""
        for line in child.proc.stdout:  # type: ignore[union-attr]
            try:
                report = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            self._apply(child, report)
        code = child.proc.wait()
        self._ready.set()
        with self._lock:
            child.finished = True
            lost = child.sent - child.accounted
            inflight = list(child.inflight)
            child.inflight.clear()
            if self._child is child:
                self._child = None
        if lost or (code and not self._closing):
            logger.error(f"recorder: the Parquet writer process exited with status {code}")
            self._lost(lost, "its process ended")
        self._settle(sum(h for h, _ in inflight), sum(b for _, b in inflight))

    def _apply(self, child: _Child, report: dict[str, Any]) -> None:
        if "ready" in report:
            self._ready.set()
        if "opened" in report:
            self.path = Path(report["opened"])
        for reason, k in report.get("rejected", {}).items():
            self.rejected += k
            child.accounted += k
            if self._on_rejected is not None:
                self._on_rejected(reason, k)
        if "errors" in report:
            k = report["errors"]
            self.errors += k
            child.accounted += k
            if self._on_error is not None and k:
                self._on_error(k)
        if "written" in report:
            k = report["written"]
            self.path = Path(report["closed"])
            self.files += 1
            self.written += k
            child.accounted += k
            if self._on_written is not None:
                self._on_written(k)
            self._prune()
        acks = report.get("ack", 0)
        if acks:
            with self._lock:
                handed = [child.inflight.popleft() for _ in range(min(acks, len(child.inflight)))]
            self._settle(sum(h for h, _ in handed), sum(b for _, b in handed))

    def _end_child(self, child: _Child | None, kill: bool = False) -> None:
        """Close its pipe and wait for it (killed if asked, or if it takes too long) and for its reports."""
        if child is None:
            return
        proc = child.proc
        if kill:
            with contextlib.suppress(OSError):
                proc.kill()
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(CHILD_EXIT_S)
        except subprocess.TimeoutExpired:
            logger.error(f"recorder: the Parquet writer did not finish within {CHILD_EXIT_S:g}s; killed")
            proc.kill()
        if child.reader is not None:
            child.reader.join()

    def _close_file(self) -> None:
        """At stop: the child closes its file and exits; its reports are all applied on return."""
        self._closing = True
        self._end_child(self._child)

    def status_extra(self) -> str:
        return f" rejected={self.rejected} files={self.files}"


# ---------------------------------------------------------------- the child process


class ParquetFiles:
    """Rows appended to rotating Parquet files: the child's state, with no pipe and no thread.

    The buffer inside the sink holds at most one row group (bounded in rows and bytes). Each
    callback reports one fact: ``on_opened(path)``, ``on_written(rows, path)`` when a file is
    closed, ``on_error(n)`` for lines lost, ``on_rejected(reason, n)`` for lines with no row.
    """

    def __init__(
        self,
        base: Path,
        rotate_bytes: int,
        rotate_s: float,
        on_opened: Callable[[Path], None] | None = None,
        on_written: Callable[[int, Path], None] | None = None,
        on_error: Callable[[int], None] | None = None,
        on_rejected: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from mercurystream.shared.parquet import RowEncoder

        self.stem = file_stem(Path(base))
        self.rotate_bytes = rotate_bytes
        self.rotate_s = rotate_s
        self.written = 0
        self.errors = 0
        self.rejected = 0
        self.files = 0
        self._on_opened = on_opened
        self._on_written = on_written
        self._on_error = on_error
        self._on_rejected = on_rejected
        self._clock = clock
        self._encoder = RowEncoder()
        self._sink: Any = None
        self._opened_at = 0.0
        self._seq = 0
        self._sampler = LogSampler()

    def due_in(self) -> float | None:
        """Seconds until the open file is due to roll by time (``None``: no file open)."""
        if self._sink is None:
            return None
        return max(0.0, self._opened_at + self.rotate_s - self._clock())

    def tick(self) -> None:
        """Roll the open file if it has been open ``rotate_s``."""
        if self._sink is not None and self._clock() - self._opened_at >= self.rotate_s:
            self.close()

    def write_message(self, data: bytes | memoryview, sizes: Sequence[int]) -> None:
        """A message's lines, back to back in ``data`` (their lengths in ``sizes``), appended as rows.

        One decode of them all when every line is a common one; else each line judged alone (:meth:`write`).
        ``data`` may be a view of a buffer the caller reuses: nothing here keeps it.
        """
        try:
            batch = self._encoder.encode_joined(data, len(sizes))
        except Exception:
            batch = None
        if batch is None:
            self.write([bytes(data[a:b]) for a, b in pairwise(accumulate(sizes, initial=0))])
        else:
            self._append(batch)

    def write(self, lines: Sequence[bytes]) -> None:
        """Parse the lines into rows and append them; roll when the file is big enough."""
        n = len(lines)
        try:
            batch, bad = self._encoder.encode(lines)
        except Exception as exc:
            self.lose(n, f"encoding {n} events failed: {exc!r}")
            return
        if bad:
            self._rejected(lines, bad)
        self._append(batch)

    def _append(self, batch: Any) -> None:
        if not batch.num_rows:
            return
        try:
            sink = self._sink if self._sink is not None else self._open()
        except Exception as exc:
            self._fail(batch.num_rows, exc)
            return
        try:
            sink.append(batch)  # counts the rows in sink.rows before anything that can fail
        except Exception as exc:
            self._fail(0, exc)
            return
        if sink.size >= self.rotate_bytes:
            self.close()

    def _rejected(self, lines: Sequence[bytes], bad: list[tuple[int, str]]) -> None:
        self.rejected += len(bad)
        by_reason: dict[str, int] = {}
        for _, reason in bad:
            by_reason[reason] = by_reason.get(reason, 0) + 1
        if self._on_rejected is not None:
            for reason, k in by_reason.items():
                self._on_rejected(reason, k)
        if self._sampler.should_log("rejected"):
            index, reason = bad[0]
            logger.warning(
                f"recorder: {len(bad)} event(s) with no Parquet row ({reason}: {lines[index][:200]!r}); counted"
            )

    def _open(self) -> Any:
        from mercurystream.shared.parquet import ParquetSink

        self.stem.parent.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        while True:
            self._seq, path = next_closed_name(self.stem, ".parquet", self._seq, now)
            try:
                sink = ParquetSink(path)
            except FileExistsError:
                continue
            break
        self._sink = sink
        self._opened_at = self._clock()
        if self._on_opened is not None:
            self._on_opened(path)
        return sink

    def close(self) -> None:
        """Close the open file (its footer written, renamed from ``.part``) and count its rows as written."""
        sink = self._sink
        if sink is None:
            return
        self._sink = None
        try:
            sink.close()
        except Exception as exc:
            self._fail(0, exc, sink)
            return
        self.files += 1
        self.written += sink.rows
        if self._on_written is not None:
            self._on_written(sink.rows, sink.path)

    def _fail(self, unappended: int, exc: BaseException, sink: Any = None) -> None:
        """Give up the open file: its rows, and ``unappended`` more, are lost and counted."""
        sink = sink if sink is not None else self._sink
        self._sink = None
        lost = unappended
        if sink is not None:
            lost += sink.rows
            sink.discard()
        self.lose(lost, f"writing {sink.part if sink else self.stem} failed: {exc!r}; {lost} events lost")

    def lose(self, n: int, message: str) -> None:
        """Count ``n`` lines lost, and say why (sampled)."""
        self.errors += n
        if self._on_error is not None and n:
            self._on_error(n)
        if self._sampler.should_log("write"):
            logger.error(f"recorder: {message}; counted, going on")


def _read_exact(fd: int, n: int) -> bytes | None:
    """``n`` bytes from ``fd``; ``None`` at end of input (a message cut short counts as the end)."""
    buf = bytearray(n)
    return bytes(buf) if _read_into(fd, memoryview(buf)) else None


def _read_into(fd: int, view: memoryview) -> bool:
    """Fill ``view`` from ``fd``; ``False`` at end of input."""
    got, n = 0, len(view)
    while got < n:
        k = os.readv(fd, [view[got:]])
        if not k:
            return False
        got += k
    return True


class _MessageBuffer:
    """The one buffer a message's lines are read into, reused: no allocation, zeroing or copy per message.

    It grows to the largest message seen, which P2's handoff bounds (``recorder.COALESCE_BYTES`` and a batch).
    """

    def __init__(self) -> None:
        self._buf = bytearray(PIPE_BYTES)

    def read(self, fd: int, n: int) -> memoryview | None:
        if n > len(self._buf):
            self._buf = bytearray(n)
        view = memoryview(self._buf)[:n]
        return view if _read_into(fd, view) else None


def serve(fd_in: int, files: ParquetFiles, emit: Callable[[dict[str, Any]], None]) -> None:
    """Read messages until the pipe closes; acknowledge each once its rows are appended."""
    buffer = _MessageBuffer()
    while True:
        ready, _, _ = select.select([fd_in], [], [], files.due_in())
        if not ready:
            files.tick()
            continue
        header = _read_exact(fd_in, HEADER.size)
        lengths = data = None
        if header is not None:
            n, data_len = HEADER.unpack(header)
            lengths = _read_exact(fd_in, 8 * n)
            data = buffer.read(fd_in, data_len) if lengths is not None else None
        if lengths is None or data is None:
            files.close()
            return
        sizes = array("Q")
        sizes.frombytes(lengths)
        if sum(sizes) == data_len:
            files.write_message(data, sizes)
        else:
            files.lose(n, f"a message of {n} lines whose lengths do not add up to its {data_len} bytes")
        files.tick()
        emit({"ack": 1})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mercurystream.p2.recorder_parquet", description=__doc__.splitlines()[0])
    p.add_argument("base", type=Path)
    p.add_argument("--rotate-bytes", type=int, required=True)
    p.add_argument("--rotate-s", type=float, required=True)
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-json", action="store_true")
    args = p.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    setup_logging("p2-recorder", args.log_level, args.log_json)

    def emit(report: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # P2 gone (killed): the files still get closed
            os.write(1, orjson.dumps(report) + b"\n")

    files = ParquetFiles(
        args.base,
        args.rotate_bytes,
        args.rotate_s,
        on_opened=lambda path: emit({"opened": str(path)}),
        on_written=lambda rows, path: emit({"written": rows, "closed": str(path)}),
        on_error=lambda k: emit({"errors": k}),
        on_rejected=lambda reason, k: emit({"rejected": {reason: k}}),
    )
    tune_gc()
    emit({"ready": 1})
    serve(0, files, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
