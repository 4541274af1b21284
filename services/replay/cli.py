"""``mercury-replay`` and ``replay.py``: send a recorded JSONL file, or a range of the JetStream log, to P2
over the P1 wire protocol.

The asyncio part is a thin shell around :mod:`.source` (reading a file), :mod:`.nats_source` (reading
the log with ``--from-nats``), :mod:`.inject` (anomalies and timestamps) and :mod:`.protocol`
(pacing and acknowledgements). It sends in batches: one clock
read, one encode and one write per batch, never a sleep per event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from tqdm import tqdm

from mercurystream.replay.inject import InjectOptions, Injector, PayloadEncoder
from mercurystream.replay.nats_source import NatsRangeReader, NatsSourceError, StreamRange, parse_time
from mercurystream.replay.protocol import AckTracker, RatePacer
from mercurystream.replay.source import EventQueue, JsonlReader, ParquetReader
from mercurystream.shared.clock import now_us
from mercurystream.shared.config import check_host
from mercurystream.shared.framing import DEFAULT_MAX_FRAME_BYTES
from mercurystream.shared.jetstream import DEFAULT_STREAM, DEFAULT_URL, check_nats_url, valid_stream_name
from mercurystream.shared.recording import is_parquet

PROG = "replay"
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_INTERRUPTED = 130

MAX_BATCH = 512
"""Events per write at most. A batch's buffers (~150 kB) stay near glibc's mmap threshold, so malloc
reuses heap memory: 2048 measured ~200,000 page faults per million events, 512 a few thousand."""
CONNECT_TIMEOUT_S = 5.0
CLOSE_GRACE_S = 1.0
WRITE_HIGH_WATER = 4 << 20

EPILOG = """\
order of injection: gap (drop), drift, duplicate, shuffle, then timestamps (restamp or keep,
then age by --latency-ms). The same file, options and --seed send the same frames in the same
order; only restamped timestamps differ.

--from-nats reads the range from the JetStream stream instead of a file: --start TIME or
--start-seq N, and optionally --end TIME or --end-seq N (default: the stream's last message when
the read begins). TIME is ISO-8601 (2026-12-05T23:50:00Z; no zone means UTC) or Unix seconds.

An event larger than P2's frame limit (--max-frame-bytes, P2's MAX_FRAME_BYTES: 1 MiB unless set)
as it would be sent, restamped or aged, is not sent and is counted oversize in the summary (P2
would close the connection on it).

exit status: 0 done; 2 bad option, unreadable file, no such stream, or no valid event to send;
3 P2 or the NATS server not reachable, or P2 closed the connection (or sent its final ack) before
acknowledging every event sent; 130 interrupted.
"""


class UsageError(Exception):
    """A bad command line; ``str()`` is the one line to show."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


MAX_RATE = 1e9
MIN_RATE = 0.001
"""Events/s: above the maximum no pacing is meaningful (``0`` is "as fast as possible"), below the
minimum one event would wait over a quarter of an hour."""
MAX_LATENCY_MS = 86_400_000
"""One day: an age beyond is no latency, and a huge one made the aged stamps overflow 64 bits."""
MAX_ACK_TIMEOUT_S = 86_400.0
MAX_SHUFFLE_WINDOW = 1_000_000
"""Events held in memory at once to shuffle."""
MAX_SEED = 2**64 - 1
MAX_FRAME_LIMIT = 2**32 - 1
MAX_LIMIT = 2**63 - 1
_SHOWN_CHARS = 40


def _shown(text: str) -> str:
    """An option's text cut short for its error line, so a pasted megabyte stays one readable line."""
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def _converter(parse: Callable[[str], float], ok: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse type: the parsed value, or one line naming what was expected and the text given."""

    def convert(text: str) -> float:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {_shown(text)!r}")
        return value

    return convert


def _nats_url(text: str) -> str:
    """``shared.jetstream.check_nats_url``, the rule P1's and P2's ``NATS_URL`` follow."""
    try:
        return check_nats_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{_shown(text)!r}: {exc}") from None


def _host(text: str) -> str:
    """A name or address the resolver can take (``shared.config.check_host``, P1's rule for its hosts):
    an empty, overlong, control-character or non-encodable host would otherwise end in a resolver
    error deep in the event loop."""
    try:
        return check_host(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a host name or IP address, got {_shown(text)!r}") from None


_limit = _converter(int, lambda n: 1 <= n <= MAX_LIMIT, f"an integer from 1 to {MAX_LIMIT}")
_shuffle_window = _converter(
    int, lambda n: 0 <= n <= MAX_SHUFFLE_WINDOW, f"an integer from 0 (off) to {MAX_SHUFFLE_WINDOW:,}"
)
_latency_ms = _converter(int, lambda n: 0 <= n <= MAX_LATENCY_MS, f"an integer from 0 to {MAX_LATENCY_MS:,} (one day)")
_seed = _converter(int, lambda n: 0 <= n <= MAX_SEED, "an integer from 0 to 2**64-1")
_rate = _converter(
    float,
    lambda x: x == 0 or MIN_RATE <= x <= MAX_RATE,
    f"0 (as fast as possible) or from {MIN_RATE:g} to {MAX_RATE:g}",
)
_ack_timeout = _converter(float, lambda x: 0 <= x <= MAX_ACK_TIMEOUT_S, f"seconds from 0 to {MAX_ACK_TIMEOUT_S:g}")
_probability = _converter(float, lambda p: 0.0 <= p <= 1.0, "a probability between 0 and 1")
_port = _converter(int, lambda n: 1 <= n <= 65535, "a port between 1 and 65535")
_frame_bytes = _converter(
    int, lambda n: 1 <= n <= MAX_FRAME_LIMIT, f"bytes from 1 to {MAX_FRAME_LIMIT:,} (a 4-byte length prefix)"
)
_seq = _converter(int, lambda n: 1 <= n <= MAX_LIMIT, f"a stream sequence from 1 to {MAX_LIMIT}")
_stream = _converter(lambda s: s, valid_stream_name, "a stream name of letters, digits, _ and -")


def _time(text: str) -> object:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, got {_shown(text)!r}") from None


def _products(text: str) -> tuple[str, ...]:
    products = tuple(p for p in (s.strip() for s in text.split(",")) if p)
    if not products:
        raise argparse.ArgumentTypeError(f"expected product ids separated by commas, got {text!r}")
    return products


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "mercury-replay",
        description="Replay a recorded JSONL stream (or its Parquet export) into P2 over the framed TCP protocol, "
        "optionally injecting seeded anomalies.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="JSONL recording (one event per line) or a Parquet file mercury-export wrote")
    src.add_argument("--from-nats", action="store_true", help="read a range of the JetStream stream instead")
    log = p.add_argument_group("--from-nats range")
    log.add_argument("--start", type=_time, help="first message time (ISO-8601 or Unix seconds)")
    log.add_argument("--end", type=_time, help="last message time (default: the stream's end)")
    log.add_argument("--start-seq", type=_seq, help="first stream sequence (instead of --start)")
    log.add_argument("--end-seq", type=_seq, help="last stream sequence (instead of --end)")
    log.add_argument("--products", type=_products, default=(), help="only these product ids, comma-separated")
    log.add_argument(
        "--nats-url",
        type=_nats_url,
        default=os.environ.get("NATS_URL") or DEFAULT_URL,
        help="default $NATS_URL or %(default)s",
    )
    log.add_argument(
        "--stream", type=_stream, default=os.environ.get("NATS_STREAM") or DEFAULT_STREAM, help="default %(default)s"
    )
    p.add_argument("--rate", type=_rate, default=500.0, help="events/s, 0.001 to 1e9; 0 = as fast as possible")
    p.add_argument(
        "--shuffle-window",
        type=_shuffle_window,
        default=0,
        help="shuffle within windows of N events (N up to 1,000,000)",
    )
    p.add_argument("--duplicate-rate", type=_probability, default=0.0, help="probability an event is sent twice")
    p.add_argument("--drift-rate", type=_probability, default=0.0, help="probability an event's schema is broken")
    p.add_argument("--gap-rate", type=_probability, default=0.0, help="probability an event is dropped")
    p.add_argument(
        "--latency-ms", type=_latency_ms, default=0, help="age ingest_ts_ms/us by this much, up to 86,400,000 (one day)"
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed of every injection, 0 to 2**64-1 (default 0)")
    p.add_argument(
        "--keep-timestamps",
        action="store_true",
        help="send ingest_ts_* and recv_ts_* as recorded (default: restamp ingest_ts_* at send, strip recv_ts_*)",
    )
    p.add_argument("--limit", type=_limit, default=None, help="read at most N valid events from the file")
    p.add_argument("--host", type=_host, default="127.0.0.1", help="P2 host (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=9001, help="P2 port (default 9001)")
    p.add_argument(
        "--max-frame-bytes",
        type=_frame_bytes,
        default=os.environ.get("MAX_FRAME_BYTES") or str(DEFAULT_MAX_FRAME_BYTES),
        help="the receiving P2's MAX_FRAME_BYTES: a larger event is not sent (default $MAX_FRAME_BYTES or %(default)s)",
    )
    p.add_argument("--no-wait-ack", action="store_true", help="do not wait for P2 to acknowledge what was sent")
    p.add_argument(
        "--ack-timeout", type=_ack_timeout, default=10.0, help="seconds to wait for acks, up to 86400 (default 10)"
    )
    return p


@dataclass
class Outcome:
    """What happened, filled in as the run goes so an interrupted run can still be summarized."""

    sent: int = 0
    started: float | None = None
    finished: float | None = None
    ack_waited: bool = False
    ack_timed_out: bool = False
    lost: bool = False
    """P2 closed or sent its final ack before acknowledging every event sent."""
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)


def _fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _open(path: str) -> BinaryIO:
    """Open the recording or raise ``OSError`` with a one-line reason."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise OSError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise OSError(f"is a directory, not a JSONL file: {path}") from None
    except PermissionError:
        raise OSError(f"permission denied: {path}") from None
    except OSError as exc:
        raise OSError(f"cannot open {path}: {exc.strerror or exc}") from None


def _file_size(f: BinaryIO) -> int | None:
    try:
        return os.fstat(f.fileno()).st_size or None
    except (OSError, ValueError):
        return None


class _Progress:
    """A bar on stderr when it is a terminal: bytes of the file, or events when ``--limit`` bounds the run."""

    def __init__(self, reader: JsonlReader | ParquetReader, limit: int | None, file_size: int | None) -> None:
        self._reader = reader
        self._by_events = limit is not None
        self._done = 0
        self._bar = tqdm(
            total=limit if self._by_events else file_size,
            unit=" events" if self._by_events else "B",
            unit_scale=True,
            unit_divisor=1000 if self._by_events else 1024,
            desc=PROG,
            file=sys.stderr,
            disable=not sys.stderr.isatty(),
            leave=False,
        )

    def show(self, sent: int) -> None:
        bar = self._bar
        if bar.disable:
            return
        done = self._reader.events if self._by_events else self._reader.bytes_read
        bar.update(done - self._done)
        self._done = done
        bar.set_postfix_str(f"{sent} sent", refresh=False)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()


class Replay:
    """One run: connect, pace batches through the encoder onto the socket, then collect acks."""

    def __init__(
        self,
        args: argparse.Namespace,
        f: BinaryIO | None,
        options: InjectOptions,
        outcome: Outcome,
        log_reader: NatsRangeReader | None = None,
    ) -> None:
        """Reads ``f``, or the log through ``log_reader`` (opened) when ``f`` is ``None``."""
        self.args = args
        self.outcome = outcome
        self.reader: JsonlReader | ParquetReader | NatsRangeReader
        if log_reader is not None:
            self.reader = log_reader
        elif is_parquet(args.file):
            self.reader = ParquetReader(f, parse=_parse_items(args, options), limit=args.limit)
        else:
            self.reader = JsonlReader(
                f, parse=_parse_items(args, options), limit=args.limit, max_line_bytes=args.max_frame_bytes
            )
        self.source = args.file if log_reader is None else log_reader.name
        self.injector = Injector(options) if options.active else None
        self.queue = EventQueue(self.reader.batches(), self.injector)
        self.encoder = PayloadEncoder(args.keep_timestamps, options.latency_ms, args.max_frame_bytes)
        self.pacer = RatePacer(args.rate, MAX_BATCH)
        self.acks = AckTracker()
        self._acks_changed = asyncio.Event()
        self.peer_closed = False
        self._file_size = _file_size(f) if f is not None else None

    async def run(self) -> int:
        args = self.args
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(args.host, args.port), timeout=CONNECT_TIMEOUT_S
            )
        except ConnectionRefusedError:
            _fail(f"P2 is not listening on {args.host}:{args.port} (connection refused)")
            return EXIT_CONNECTION
        except TimeoutError:
            _fail(f"no answer from {args.host}:{args.port} within {CONNECT_TIMEOUT_S:.0f} s")
            return EXIT_CONNECTION
        except socket.gaierror as exc:
            _fail(f"cannot resolve host {args.host!r}: {exc.strerror}")
            return EXIT_CONNECTION
        except OSError as exc:
            _fail(f"cannot connect to {args.host}:{args.port}: {exc.strerror or exc}")
            return EXIT_CONNECTION
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        ack_task = asyncio.create_task(self._read_acks(reader))
        try:
            rc = await self._send(writer)
            if rc == EXIT_OK and not args.no_wait_ack:
                self.outcome.ack_waited = True
                await self._wait_acks()
                if self.acks.acked < self.outcome.sent and (self.acks.final or self.peer_closed):
                    rc = self._lost()
        finally:
            await self._close(writer, ack_task)
        return rc

    async def _send(self, writer: asyncio.StreamWriter) -> int:
        loop_time = asyncio.get_running_loop().time
        out = self.outcome
        pacer, queue, encoder = self.pacer, self.queue, self.encoder
        with _Progress(self.reader, self.args.limit, self._file_size) as progress:
            out.started = time.perf_counter()
            pacer.start(loop_time())
            while True:
                if self.acks.final or self.peer_closed:
                    return self._lost()
                now = loop_time()
                n = pacer.due(now, out.sent)
                if n == 0:
                    await asyncio.sleep(pacer.delay(now, out.sent))
                    continue
                try:
                    items = queue.take(n)
                except NatsSourceError as exc:
                    out.errors.append(str(exc))
                    return EXIT_CONNECTION if exc.unreachable else EXIT_USAGE
                except OSError as exc:
                    out.errors.append(f"reading {self.source} failed: {exc.strerror or exc}")
                    return EXIT_USAGE
                if not items:
                    break
                skipped = encoder.oversize
                frames = encoder.encode(items, now_us())
                out.sent += len(items) - (encoder.oversize - skipped)
                if not frames:
                    continue
                writer.write(frames)
                try:
                    await writer.drain()
                except OSError:
                    return self._lost()
                out.finished = time.perf_counter()
                if pacer.rate <= 0:
                    await asyncio.sleep(0)
                progress.show(out.sent)
        return EXIT_OK

    def _lost(self) -> int:
        how = "is shutting down (final ack)" if self.acks.final else "closed the connection"
        self.outcome.lost = True
        self.outcome.errors.append(
            f"P2 {how} after {self.outcome.sent} events were sent, {self.acks.acked} acknowledged"
        )
        return EXIT_CONNECTION

    async def _read_acks(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(65536):
                self.acks.feed(data)
                self._acks_changed.set()
        except OSError:
            pass
        self.peer_closed = True
        self._acks_changed.set()

    async def _wait_acks(self) -> None:
        """Until P2 has acknowledged every event sent, says it is closing, or the timeout ends."""
        deadline = time.monotonic() + self.args.ack_timeout
        acks, sent = self.acks, self.outcome.sent
        while acks.acked < sent and not acks.final and not self.peer_closed and not acks.broken:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.outcome.ack_timed_out = True
                return
            self._acks_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acks_changed.wait(), remaining)

    async def _close(self, writer: asyncio.StreamWriter, ack_task: asyncio.Task[None]) -> None:
        """Half-close, then let P2 close its side, so our close never resets a connection it still reads."""
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(ack_task), CLOSE_GRACE_S)
        ack_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ack_task
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), CLOSE_GRACE_S)


def _parse_items(args: argparse.Namespace, options: InjectOptions) -> bool:
    """Aging recorded stamps rewrites every event; otherwise lines stay bytes until a stage must change them."""
    return bool(args.keep_timestamps and options.latency_ms > 0)


def _stream_range(args: argparse.Namespace) -> StreamRange | None:
    """The ``--from-nats`` range, ``None`` for a file; raises :class:`UsageError` for a range that makes no sense."""
    log_opts = ("start", "end", "start_seq", "end_seq", "products")
    if not args.from_nats:
        given = [f"--{k.replace('_', '-')}" for k in log_opts if getattr(args, k)]
        if given:
            raise UsageError(f"{', '.join(given)} only apply with --from-nats")
        return None
    if args.start is None and args.start_seq is None:
        raise UsageError("--from-nats needs --start TIME or --start-seq N")
    if args.start is not None and args.start_seq is not None:
        raise UsageError("give --start or --start-seq, not both")
    if args.end is not None and args.end_seq is not None:
        raise UsageError("give --end or --end-seq, not both")
    if args.start is not None and args.end is not None and args.end < args.start:
        raise UsageError("--end is before --start")
    if args.start_seq is not None and args.end_seq is not None and args.end_seq < args.start_seq:
        raise UsageError("--end-seq is below --start-seq")
    return StreamRange(
        url=args.nats_url,
        stream=args.stream,
        start_time=args.start,
        end_time=args.end,
        start_seq=args.start_seq,
        end_seq=args.end_seq,
        products=tuple(args.products),
    )


def _summary(args: argparse.Namespace, replay: Replay, out: Outcome) -> list[str]:
    r = replay.reader
    duration = (out.finished - out.started) if out.started and out.finished else 0.0
    rate = out.sent / duration if duration > 0 else 0.0
    head = "interrupted: " if out.interrupted else ""
    lines = [
        f"{head}sent {out.sent} events ({r.events} read from {replay.source}) in {duration:.2f} s, "
        f"{rate:,.0f} events/s (target {'max' if args.rate <= 0 else f'{args.rate:g}'})"
    ]
    inj = replay.injector
    parts = [f"{k}={v}" for k, v in (inj.active_counts().items() if inj else ())]
    if args.latency_ms:
        parts.append(f"latency={replay.encoder.aged} (+{args.latency_ms} ms)")
    if parts:
        kinds = ", ".join(f"{k}={v}" for k, v in inj.drift_kinds.items() if v) if inj else ""
        lines.append("injected anomalies: " + " ".join(parts) + (f" (drift kinds: {kinds})" if kinds else ""))
    if isinstance(r, NatsRangeReader) and r.first_seq is not None:
        other = f", {r.skipped_messages} of other products skipped" if r.skipped_messages else ""
        lines.append(f"read {r.messages} messages, stream sequences {r.first_seq}..{r.last_seq}{other}")
    if r.malformed_total:
        what = "events" if isinstance(r, NatsRangeReader) else "rows" if isinstance(r, ParquetReader) else "lines"
        where = "in messages" if isinstance(r, NatsRangeReader) else f"at {what}"
        reasons = ", ".join(f"{k}={v}" for k, v in r.malformed.items() if v)
        numbers = ", ".join(map(str, r.malformed_lines))
        more = ", ..." if r.malformed_total > len(r.malformed_lines) else ""
        lines.append(f"skipped {r.malformed_total} malformed {what} ({reasons}); first {where} {numbers}{more}")
    if r.lenient:
        what = "events" if isinstance(r, NatsRangeReader) else "lines"
        lines.append(
            f"kept {r.lenient} {what} only P2's lenient parse reads (NaN, Infinity, 1e400, a lone surrogate escape) "
            f"as events, for P2 to judge as it did live (lenient={r.lenient})"
        )
    if replay.encoder.unrewritten:
        n = replay.encoder.unrewritten
        lines.append(
            f"sent {n} of them as read, not restamped or aged: Python's json cannot write them back (unrewritten={n})"
        )
    if replay.encoder.oversize:
        lines.append(
            f"skipped {replay.encoder.oversize} events over P2's frame limit of {replay.encoder.max_frame_bytes:,} "
            f"bytes as they would be sent, stamps included (oversize={replay.encoder.oversize})"
        )
    acks = replay.acks
    note = ""
    if out.lost:
        note = " (P2 sent its final ack)" if acks.final else " (P2 closed the connection)"
    elif not out.ack_waited:
        note = " (not waited for)"
    elif out.ack_timed_out:
        note = f" (not all within {args.ack_timeout:g} s)"
    elif acks.final:
        note = " (P2 sent its final ack)"
    elif acks.acked < out.sent and replay.peer_closed:
        note = " (P2 closed the connection)"
    lines.append(f"acknowledged by P2: {acks.acked} of {out.sent}{note}")
    return lines


def _runner() -> asyncio.Runner:
    """uvloop's loop when it is installed: measured ~10% less CPU per event than asyncio's at ``--rate 0``."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is not installed on Windows
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _printable_streams() -> None:
    """A file name that is not UTF-8 reaches us as surrogates; print it escaped rather than fail on it."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _printable_streams()
    try:
        args = build_parser().parse_args(argv)
        options = InjectOptions(
            shuffle_window=args.shuffle_window,
            duplicate_rate=args.duplicate_rate,
            drift_rate=args.drift_rate,
            gap_rate=args.gap_rate,
            latency_ms=args.latency_ms,
            seed=args.seed,
        )
        rng = _stream_range(args)
    except (UsageError, ValueError) as exc:
        _fail(f"{exc} (see --help)")
        return EXIT_USAGE
    if rng is not None:
        return _main_from_nats(args, options, rng)
    try:
        f = _open(args.file)
    except OSError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    out = Outcome()
    with f:
        try:
            replay = Replay(args, f, options, out)
        except OSError as exc:
            _fail(f"{args.file}: {exc}")
            return EXIT_USAGE
        rc = _run(replay, out)
    return _finish(args, replay, out, rc)


def _run(replay: Replay, out: Outcome) -> int:
    try:
        with _runner() as runner:
            return runner.run(replay.run())
    except KeyboardInterrupt:
        out.interrupted = True
        return EXIT_INTERRUPTED


def _main_from_nats(args: argparse.Namespace, options: InjectOptions, rng: StreamRange) -> int:
    reader = NatsRangeReader(rng, limit=args.limit, parse=_parse_items(args, options))
    try:
        reader.open()
    except NatsSourceError as exc:
        _fail(str(exc))
        return EXIT_CONNECTION if exc.unreachable else EXIT_USAGE
    except KeyboardInterrupt:
        reader.close()
        _fail("interrupted before anything was sent")
        return EXIT_INTERRUPTED
    out = Outcome()
    try:
        replay = Replay(args, None, options, out, log_reader=reader)
        rc = _run(replay, out)
    finally:
        reader.close()
    return _finish(args, replay, out, rc)


def _finish(args: argparse.Namespace, replay: Replay, out: Outcome, rc: int) -> int:
    """The summary and errors of a run that started; the exit status."""
    if out.started is None:
        if out.interrupted:
            _fail("interrupted before anything was sent")
        return rc
    for line in _summary(args, replay, out):
        print(f"{PROG}: {line}")
    for err in out.errors:
        _fail(err)
    if rc == EXIT_OK and replay.reader.events == 0 and args.from_nats:
        last = replay.reader.stream_last_seq
        _fail(f"no event in that range of {args.stream} (it holds sequences up to {last})")
        return EXIT_USAGE
    if rc == EXIT_OK and replay.reader.events == 0 and replay.reader.malformed_total:
        _fail(f"no valid event in {args.file}")
        return EXIT_USAGE
    return rc
