"""The load generator: a separate process that sends the benchmark stream to a TCP receiver at a paced rate.

``python -m benchmarks.loadgen --pool FILE --port N --rate R --duration S`` connects (retrying while
the receiver starts), then every ~1 ms writes the frames owed by then, all stamped with that moment's
wall clock, as P1 stamps a batch. It reads the receiver's acks as P1 does, so P2 keeps paying for them.

``--shape`` picks the events' tail (P1's stamps, the seed's, a replayed incident line's) and
``--skip N`` starts N frames into the stream, so consecutive runs against one receiver continue its
trade ids and times; ``--storm W`` instead resends the stream's first W events, shuffled, as
duplicates that are all out of order (the receiver must have had those W first, in order).

It prints one JSON line when the last frame is written (the harness starts its grace period then)
and one when the receiver has closed the connection. The first line says whether the target rate
was *achieved*: the last frame must be written within 1 % of the nominal duration. A receiver that
reads too slowly fills the socket and shows up as ``blocked_s``; a generator that cannot render fast
enough would show up as a miss with little ``blocked_s`` (``generator_limited``).

Exit status: 0 sent everything; 2 bad arguments; 3 could not connect or the receiver went away.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import struct
import sys
import time
from pathlib import Path

import orjson

from benchmarks.stream import SHAPES, FrameStream, StormStream, read_pool
from mercurystream.shared.clock import now_us
from mercurystream.shared.runtime import tune_gc
from mercurystream.shared.transport import AckDecoder, AckError

TICK_S = 0.001
MAX_CHUNK_S = 0.01
"""A generator that fell behind catches up in chunks of at most this much time's events."""
ACHIEVED_TOLERANCE = 0.99
SEND_TIMEOUT_S = 30.0
"""A receiver that takes nothing for this long is treated as gone."""
EXIT_OK, EXIT_USAGE, EXIT_CONNECTION = 0, 2, 3


class Pacer:
    """How many frames are owed at a given moment to send ``total`` at ``rate`` from :meth:`start`, sans I/O.

    Frames go out a tick's worth at a time (``per_tick``, the last ones excepted). Why: a loop that
    sent whatever was owed the moment it came round never slept at high rates; at 150,000 frames/s
    it wrote four frames a turn and spent most of a core doing it, on a machine whose other core
    runs the receiver under test.
    """

    def __init__(self, rate: float, total: int, tick_s: float = TICK_S, max_chunk_s: float = MAX_CHUNK_S) -> None:
        if rate <= 0 or total < 0:
            raise ValueError("rate must be positive and total >= 0")
        self.rate = rate
        self.total = total
        self.tick_s = tick_s
        self.max_chunk = max(1, int(rate * max_chunk_s))
        self.per_tick = max(1, int(rate * tick_s))
        self.sent = 0
        self.t0 = 0.0
        self.max_lag_s = 0.0

    def start(self, now: float) -> None:
        self.t0 = now
        self.sent = 0

    @property
    def done(self) -> bool:
        return self.sent >= self.total

    def owed(self, now: float) -> int:
        return min(self.total, int((now - self.t0) * self.rate)) - self.sent

    def due(self, now: float) -> int:
        """Frames to write now: none until a tick's worth is owed, at most one catch-up chunk; records the lag."""
        owed = self.owed(now)
        if owed <= 0 or (owed < self.per_tick and self.sent + owed < self.total):
            return 0
        lag = owed / self.rate - self.tick_s
        if lag > self.max_lag_s:
            self.max_lag_s = lag
        return min(owed, self.max_chunk)

    def wait(self, now: float) -> float:
        """Seconds until a tick's worth of frames (or the last of them) is owed; at least a tick."""
        next_due = self.t0 + min(self.total, self.sent + self.per_tick) / self.rate
        return max(self.tick_s, next_due - now) if next_due > now else 0.0

    def record(self, n: int) -> None:
        self.sent += n


class AckReader:
    """Keeps the latest ``{"ack": N}`` the receiver sent; frames that are not acks are ignored."""

    def __init__(self) -> None:
        self._decoder = AckDecoder()
        self.acked = 0
        self.final = False

    def feed(self, data: bytes) -> None:
        for msg in self._decoder.feed(data):
            if not isinstance(msg, AckError):
                self.acked, self.final = msg.count, msg.final


def connect(host: str, port: int, timeout_s: float) -> socket.socket:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=2.0)
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _drain(sock: socket.socket, acks: AckReader) -> bool:
    """Read whatever the receiver sent without blocking; ``False`` once it closed the connection."""
    while True:
        try:
            data = sock.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data:
            return False
        acks.feed(data)


def _write(sock: socket.socket, data: bytes) -> tuple[bool, float]:
    """Write ``data``; ``(still open, seconds blocked on a full socket)``.

    The first attempt does not wait. Only what did not fit is written blocking, so the generator
    sleeps in the kernel until the receiver makes room, instead of polling for writability and
    sending a few kilobytes per wake-up: that loop cost a whole core at 170k events/s, which the
    receiver under test then lacked on a two-core machine.
    """
    try:
        done = sock.send(data, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        done = 0
    except OSError:
        return False, 0.0
    if done == len(data):
        return True, 0.0
    t = time.perf_counter()
    try:
        sock.sendall(memoryview(data)[done:])
    except OSError:
        return False, time.perf_counter() - t
    return True, time.perf_counter() - t


def send(
    sock: socket.socket, stream: FrameStream | StormStream, pacer: Pacer
) -> tuple[dict[str, float | int | bool], AckReader]:
    """The paced loop: the send-side figures (the first JSON line) and the acks read so far."""
    # Blocking, so flags decide per call; the kernel's send timeout bounds a write to a stuck receiver.
    sock.setblocking(True)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(SEND_TIMEOUT_S), 0))
    acks = AckReader()
    clock = time.perf_counter
    sleep = time.sleep
    take = stream.take
    blocked = render = 0.0
    open_ = True
    pacer.start(clock())
    while open_ and not pacer.done:
        open_ = _drain(sock, acks)
        now = clock()
        n = pacer.due(now)
        if n == 0:
            sleep(pacer.wait(now))
            continue
        data = take(n, now_us())
        render += clock() - now
        pacer.record(n)
        open_, waited = _write(sock, data)
        blocked += waited
    elapsed = clock() - pacer.t0
    nominal = pacer.total / pacer.rate
    achieved = pacer.sent / elapsed if elapsed > 0 else 0.0
    ok = open_ and pacer.done and elapsed <= nominal / ACHIEVED_TOLERANCE
    figures = {
        "event": "sent",
        "target_rate": pacer.rate,
        "sent": pacer.sent,
        "elapsed_s": round(elapsed, 4),
        "nominal_s": round(nominal, 4),
        "achieved_rate": round(achieved, 1),
        "achieved": ok,
        "receiver_closed": not open_,
        "max_lag_ms": round(pacer.max_lag_s * 1000, 3),
        "blocked_s": round(blocked, 4),
        "render_s": round(render, 4),
        "generator_limited": not ok and blocked < 0.02 * elapsed,
        "acked_at_end": acks.acked,
    }
    return figures, acks


def linger(sock: socket.socket, acks: AckReader, timeout_s: float) -> bool:
    """Half-close and read acks until the receiver closes, so our close never resets unread data."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    sock.setblocking(True)
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            return True
        if not data:
            return True
        acks.feed(data)
    return False


def _emit(obj: dict) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", type=Path, required=True, help="pool JSONL written by benchmarks.stream.write_pool")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, required=True, help="events per second")
    p.add_argument("--duration", type=float, default=None, help="seconds of sending (or --count)")
    p.add_argument("--count", type=int, default=None, help="events to send (or --duration)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="p1", help="the events' stamps and extra keys")
    p.add_argument("--skip", type=int, default=0, help="frames of the stream to skip (a sweep's earlier steps)")
    p.add_argument("--storm", type=int, default=0, metavar="W", help="resend the first W events, shuffled")
    p.add_argument("--seed", type=int, default=0, help="the storm's shuffle")
    p.add_argument("--connect-timeout", type=float, default=15.0)
    p.add_argument("--linger", type=float, default=60.0, help="seconds to wait for the receiver to close")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    if args.rate <= 0 or (args.duration is None) == (args.count is None):
        print("loadgen: error: give a positive --rate and exactly one of --duration, --count", file=sys.stderr)
        return EXIT_USAGE
    if args.skip < 0 or args.storm < 0 or (args.skip and args.storm):
        print("loadgen: error: --skip and --storm are >= 0, and not both", file=sys.stderr)
        return EXIT_USAGE
    total = args.count if args.count is not None else round(args.rate * args.duration)
    try:
        pool = read_pool(args.pool)
        stream: FrameStream | StormStream
        if args.storm:
            stream = StormStream(pool, args.storm, args.seed, args.shape)
        else:
            stream = FrameStream(pool, args.shape)
            stream.position = args.skip
    except (OSError, ValueError) as exc:
        print(f"loadgen: error: pool {args.pool}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        sock = connect(args.host, args.port, args.connect_timeout)
    except OSError as exc:
        print(f"loadgen: error: cannot connect to {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_CONNECTION
    # Rendering allocates a tuple per frame and never a cycle: without this, young collections
    # took about 8 % of the generator's core, which the receiver under test shares.
    tune_gc()
    with sock:
        result, acks = send(sock, stream, Pacer(args.rate, total))
        _emit(result)
        closed = result["receiver_closed"] or linger(sock, acks, args.linger)
        _emit({"event": "closed", "acked": acks.acked, "final_ack": acks.final, "receiver_closed": closed})
    return EXIT_OK if result["sent"] == total and not result["receiver_closed"] else EXIT_CONNECTION


if __name__ == "__main__":
    sys.exit(main())
