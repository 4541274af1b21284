"""In-process profile of P2, stage by stage, against the parsing limit measured in the same run.

Why in-process: the real benchmark drives P2 over TCP and finds the zero-drop rate by a sweep,
which says *whether* P2 keeps up but not *where* its time goes. This builds the stream P1 sends
(the offline exchange's trades on three products, normalized and stamped by P1's own pipeline,
framed), cuts it into socket-sized reads, and pushes every read through the production objects
built by :class:`P2App` from :class:`P2Settings` (every consumer on, the flight recorder on,
``RECORD=true`` to a temporary file): ``IngestDecoder.feed`` → ``TcpSource`` publish → each
consumer's pending batches, timing each stage. The parse-only baseline (frame decoding plus
``orjson.loads`` of every payload, nothing else) runs on the same reads in the same process.
A third figure sends the same reads through the real asyncio shells on uvloop (the consumers' task,
per-batch metrics, the recorder's thread), which is what a saturated P2 pays short of the socket.
Over TCP, with the load generator on the same two cores, P2 measured about 20 % slower again.
``--record-format parquet`` records Parquet instead: the writer process (several µs an event, on
the other core, not in the table) cannot keep up with a loop running flat out, so the recorder
spends much of the run at its bound and takes its batches in bursts; the asyncio figure's CPU is
this process's alone, and its wall time includes waiting for the writer process at the end.

    .venv/bin/python benchmarks/profile_p2.py                 # table
    .venv/bin/python benchmarks/profile_p2.py --cprofile 25   # plus the top functions
    .venv/bin/python benchmarks/profile_p2.py --cprofile 25 --sort cumulative
    .venv/bin/python benchmarks/profile_p2.py --shape storm   # a benchmark scenario's stream instead
    .venv/bin/python benchmarks/profile_p2.py --json          # one JSON object, for tools
    .venv/bin/python benchmarks/profile_p2.py --record-format parquet   # the recorder writing Parquet
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from mercurystream.exchange.market import MATCH, Market
from mercurystream.p1.pipeline import IngestPipeline
from mercurystream.p2.app import P2App, loop_factory, tune_runtime
from mercurystream.p2.config import P2Settings
from mercurystream.p2.server import IngestDecoder
from mercurystream.shared.framing import FrameDecoder, encode_frames
from mercurystream.shared.schema import wire_decoder

P1_BATCH = 64
"""Messages P1 normalizes and stamps together (one clock read each)."""

WIRE_DELAY_US = 300
"""P1 stamp to P2 read, for the stream's latencies: well below any spike threshold."""

WIRE_RATE = 200_000
"""Events/s at which P1 stamps the stream (the target rate), whatever the exchange time says."""

TYPED_DECODER = wire_decoder()
"""P2's typed decoder (``shared.schema.WireTrade``), for the typed parse-only figure."""


class Stream:
    """The framed bytes of ``n`` P1 events, cut into reads of ``chunk_bytes``, with a receive clock per read."""

    def __init__(self, n: int, chunk_bytes: int, exchange_rate: float, seed: int = 7) -> None:
        start_us = time.time_ns() // 1000 - int(n / exchange_rate * 1e6) - 10_000_000
        market = Market(rate=exchange_rate, seed=seed, start_us=start_us)
        market.tickers = False
        pipeline = IngestPipeline()
        payloads: list[bytes] = []
        ingest: list[int] = []
        offset = 0
        step = max(1, int(P1_BATCH / exchange_rate * 1e6))
        wire_start_us = time.time_ns() // 1000
        while len(payloads) < n:
            offset += step
            msgs = [orjson.loads(text) for _, kind, text in market.advance(offset) if kind == MATCH]
            for i in range(0, len(msgs), P1_BATCH):
                group = msgs[i : i + P1_BATCH]
                now = wire_start_us + len(payloads) * 1_000_000 // WIRE_RATE
                out, _ = pipeline.process(group, now)
                payloads.extend(out)
                ingest.extend([now] * len(out))
        del payloads[n:], ingest[n:]
        self.events = n
        self.payload_bytes = sum(len(p) for p in payloads)
        data = encode_frames(payloads)
        self.chunks = [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
        # The receive clock of each read: the newest P1 stamp the read completes, plus the wire.
        self.clock: list[int] = []
        pos = 0
        frame = 0
        end_of_frame = []
        for p in payloads:
            pos += 4 + len(p)
            end_of_frame.append(pos)
        read_end = 0
        for chunk in self.chunks:
            read_end += len(chunk)
            while frame < n and end_of_frame[frame] <= read_end:
                frame += 1
            self.clock.append(ingest[max(frame - 1, 0)] + WIRE_DELAY_US)


class ShapeStream:
    """A scenario's stream (``benchmarks.stream``: ``p1``, ``seed``, ``replayed`` or ``storm``), as :class:`Stream`.

    The pool is rendered in chunks of ``P1_BATCH`` frames, each stamped with one clock as the load
    generator does, and cut into reads of ``chunk_bytes``. The storm first sends its window in
    order (the priming) and then resends it shuffled, so most of it is duplicates out of order.
    """

    def __init__(self, n: int, chunk_bytes: int, shape: str) -> None:
        if __package__ in (None, ""):  # run as a script: benchmarks/ is a package of the checkout
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from benchmarks.stream import FrameStream, StormStream, generate_pool

        pool = generate_pool(min(n, 50_000))
        base_us = time.time_ns() // 1000 - 10_000_000
        parts: list[bytes] = []
        stamps: list[int] = []
        if shape == "storm":
            window = min(STORM_WINDOW, len(pool))
            prime = FrameStream(pool, "p1")
            sources: list[tuple[Any, int]] = [(prime, window), (StormStream(pool, window), n - window)]
        else:
            sources = [(FrameStream(pool, shape), n)]
        for src, count in sources:
            while count > 0:
                k = min(P1_BATCH, count)
                now = base_us + len(parts) * P1_BATCH * 1_000_000 // WIRE_RATE
                parts.append(src.take(k, now))
                stamps.append(now)
                count -= k
        self.events = n
        data = b"".join(parts)
        self.payload_bytes = len(data) - 4 * n
        self.chunks = [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
        self.clock = []
        ends = list(accumulate(map(len, parts)))
        read_end = 0
        part = 0
        for chunk in self.chunks:
            read_end += len(chunk)
            while part < len(parts) - 1 and ends[part] < read_end:
                part += 1
            self.clock.append(stamps[part] + WIRE_DELAY_US)


DRAIN_S = 120.0
"""How long the stage timing waits, after the last read, for a consumer still behind."""

STORM_WINDOW = 20_000
"""As ``benchmarks.scenarios.STORM_WINDOW``."""


class ReplayClock:
    """Returns the stream's receive stamps in order, one per read."""

    def __init__(self, stamps: list[int]) -> None:
        self._it = iter(stamps)
        self._last = stamps[0]

    def __call__(self) -> int:
        self._last = next(self._it, self._last)
        return self._last


def parse_only(stream: Stream, loads: Callable[[bytes], Any] = orjson.loads) -> float:
    """Seconds for the parsing limit: frames out of each read, ``loads`` on each payload.

    The limit is ``orjson.loads`` (generic JSON, as the baseline reader parses); P2 itself decodes
    P1's events typed with msgspec, so the same loop with that decoder is printed beside it.
    """
    decoder = FrameDecoder()
    n = 0
    t0 = time.perf_counter()
    for chunk in stream.chunks:
        for p in decoder.feed(chunk):
            loads(p)
            n += 1
    elapsed = time.perf_counter() - t0
    assert n == stream.events, (n, stream.events)
    return elapsed


def build_app(tmp: Path, record_format: str = "jsonl") -> P2App:
    settings = P2Settings(
        PORT=0,
        METRICS_PORT=0,
        RECORD=True,
        RECORD_FILE=tmp / "record.jsonl",
        RECORD_FORMAT=record_format,
        FORENSICS=True,
        FLIGHT_RECORDER=True,
        INCIDENTS_DIR=tmp / "incidents",
        DRIFT_SAMPLE_FILE=tmp / "drift.jsonl",
        BUS_QUEUE_EVENTS=10_000_000,
        BUS_QUEUE_BYTES=1 << 40,  # every event reaches every consumer, even a recorder behind its writer process
    )
    return P2App(settings, registry=CollectorRegistry())


def sync_writer(recorder: Any, path: Path) -> Any:
    """A writer of the recorder's format for the same lines, driven on this thread."""
    if recorder.format == "parquet":
        from mercurystream.p2.recorder_parquet import ParquetRecordWriter

        w = recorder.writer
        return ParquetRecordWriter(path, rotate_bytes=w.rotate_bytes, rotate_s=w.rotate_s)
    return type(recorder.writer)(path)


def run_pipeline(
    stream: Stream, tmp: Path, profiler: cProfile.Profile | None = None, record_format: str = "jsonl"
) -> dict[str, Any]:
    """Seconds per stage over the whole stream, with the production objects of one :class:`P2App`."""
    app = build_app(tmp, record_format)
    source = app.source
    consumers = app.consumers
    for c in consumers:
        c.open()
    recorder = next(c for c in consumers if c.name == "recorder")
    ingest = IngestDecoder(source.max_frame_bytes, ReplayClock(stream.clock))
    names = ["ingest", "publish", "shared: groups", "shared: trades", *(c.name for c in consumers), "release"]
    spent = dict.fromkeys(names, 0)
    pending = [(c.name, c.process_pending) for c in consumers]
    clock = time.perf_counter_ns
    feed = ingest.feed
    accept = source.accept
    recorded: list[list[bytes]] = []
    if profiler is not None:
        profiler.enable()
    wall0 = clock()
    for chunk in stream.chunks:
        t0 = clock()
        got = feed(chunk)
        t1 = clock()
        accept(got, "profile")
        t2 = clock()
        spent["ingest"] += t1 - t0
        spent["publish"] += t2 - t1
        batch = got.batch
        if batch is not None:
            recorded.append(batch.lines)
            # What the first consumer to ask would compute for all of them, timed on its own.
            t0 = clock()
            batch.groups()
            t1 = clock()
            batch.trades().by_product()
            t2 = clock()
            spent["shared: groups"] += t1 - t0
            spent["shared: trades"] += t2 - t1
            batch = None
        for name, process in pending:
            t0 = clock()
            process()
            spent[name] += clock() - t0
        # The last reference to the batch's events goes here: freeing them is a cost of its own.
        t0 = clock()
        got = None
        spent["release"] += clock() - t0
    wall = clock() - wall0
    # A Parquet recorder takes nothing while its writer process holds a full bound of handoffs:
    # give it the rest once that process catches up (the waiting is not P2's work, not timed).
    deadline = time.monotonic() + DRAIN_S
    while any(c.processed < stream.events for c in consumers) and time.monotonic() < deadline:
        time.sleep(0.001)
        for name, process in pending:
            t0 = clock()
            process()
            spent[name] += clock() - t0
    if profiler is not None:
        profiler.disable()
    # The recorder's writer thread ran beside the loop above: wait for it, then do the same writes
    # on this thread, timed in its CPU (a Parquet close waits for the writer process), so the
    # thread's share of P2's core is in the table too.
    asyncio.run(_close(consumers))
    lines = recorder.writer.written
    writer = sync_writer(recorder, tmp / "record-sync.jsonl")
    t0 = time.thread_time_ns()
    chunk: list[list[bytes]] = []
    size = 0
    for lines_of_batch in recorded:  # in the recorder's handoffs: about coalesce_lines lines each
        chunk.append(lines_of_batch)
        size += len(lines_of_batch)
        if size >= recorder.coalesce_lines:
            writer.write(chunk)
            chunk, size = [], 0
    writer.write(chunk)
    writer.close()
    spent["recorder thread"] = time.thread_time_ns() - t0
    for c in consumers:
        if c.processed != stream.events:
            raise SystemExit(f"{c.name} processed {c.processed} of {stream.events} events")
    if lines != stream.events:
        raise SystemExit(f"recorder wrote {lines} of {stream.events} events")
    return {"stages_s": {k: v / 1e9 for k, v in spent.items()}, "wall_s": wall / 1e9, "batches": len(recorded)}


class _Transport:
    """Enough of an asyncio transport for one connection's acks."""

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 0) if name == "peername" else None

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


def run_loop(stream: Stream, tmp: Path, record_format: str = "jsonl") -> tuple[float, float]:
    """Seconds for the whole stream through the real asyncio shells on uvloop (no socket), and the
    CPU seconds this process spent meanwhile (every thread: the loop, the recorder's; not the
    Parquet writer process).

    One read is handed to the connection per loop iteration, as a saturated reader would: the
    consumers' task wakes, each consumer takes whatever is queued, and the task yields; the
    scheduling, the per-batch metrics and the recorder's thread are all in the figure.
    """

    async def drive() -> tuple[float, float]:
        app = build_app(tmp, record_format)
        app.source.clock_us = ReplayClock(stream.clock)
        await app.start_consumers()
        conn = app.source.protocol()
        conn.connection_made(_Transport())
        t0, cpu0 = time.perf_counter(), time.process_time()
        for chunk in stream.chunks:
            conn.data_received(chunk)
            await asyncio.sleep(0)
        while not app.drained():  # a Parquet recorder is drained once its writer process acknowledges
            await asyncio.sleep(0.001)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await app.stop_consumers()
        return elapsed, cpu

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(drive())


async def _close(consumers: list[Any]) -> None:
    for c in consumers:
        await c.stop()


def combine(runs: list[dict[str, Any]], stat: Any) -> dict[str, float]:
    return {k: stat(r["stages_s"][k] for r in runs) for k in runs[0]["stages_s"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000, help="events per run (default 200000)")
    ap.add_argument("--chunk-bytes", type=int, default=64 * 1024, help="bytes per socket read (default 65536)")
    ap.add_argument("--exchange-rate", type=float, default=2_000.0, help="trades/s of exchange time (default 2000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs (default 3)")
    ap.add_argument(
        "--stat",
        choices=("median", "min"),
        default="median",
        help="per-stage statistic over the runs (min: A/B on a noisy host)",
    )
    ap.add_argument(
        "--shape",
        choices=("market", "p1", "seed", "replayed", "storm"),
        default="market",
        help="market: P1's pipeline over the exchange's market (default); else a benchmark scenario's stream",
    )
    ap.add_argument("--record-format", choices=("jsonl", "parquet"), default="jsonl", help="RECORD_FORMAT")
    ap.add_argument("--cprofile", type=int, default=0, metavar="N", help="also print the top N functions")
    ap.add_argument("--sort", default="tottime", help="the top functions' order (pstats: tottime, cumulative, ...)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)
    if args.events <= 0 or args.chunk_bytes <= 0 or args.repeat <= 0 or not args.exchange_rate > 0:
        print("profile_p2: --events, --chunk-bytes, --repeat and --exchange-rate must be positive", file=sys.stderr)
        return 2
    tune_runtime()
    stream: Any
    if args.shape == "market":
        stream = Stream(args.events, args.chunk_bytes, args.exchange_rate)
    else:
        stream = ShapeStream(args.events, args.chunk_bytes, args.shape)
    n = stream.events
    parse_runs: list[float] = []
    typed_runs: list[float] = []
    runs: list[dict[str, Any]] = []
    loop_runs: list[float] = []
    loop_cpu_runs: list[float] = []
    profiler = cProfile.Profile() if args.cprofile else None
    with tempfile.TemporaryDirectory(prefix="profile_p2-") as tmpdir:
        for r in range(args.repeat):
            gc.collect()
            parse_runs.append(parse_only(stream))
            typed_runs.append(parse_only(stream, TYPED_DECODER.decode))
            gc.collect()
            run_dir = Path(tmpdir) / f"run{r}"
            run_dir.mkdir()
            runs.append(run_pipeline(stream, run_dir, profiler if r == args.repeat - 1 else None, args.record_format))
            gc.collect()
            loop_dir = Path(tmpdir) / f"loop{r}"
            loop_dir.mkdir()
            loop_s, loop_cpu_s = run_loop(stream, loop_dir, args.record_format)
            loop_runs.append(loop_s)
            loop_cpu_runs.append(loop_cpu_s)
    stat = statistics.median if args.stat == "median" else min
    parse_s = stat(parse_runs)
    typed_s = stat(typed_runs)
    stages = combine(runs, stat)
    wall_s = stat(r["wall_s"] for r in runs)
    loop_s = stat(loop_runs)
    loop_cpu_s = stat(loop_cpu_runs)
    total_s = sum(stages.values())
    result = {
        "record_format": args.record_format,
        "events": n,
        "reads": len(stream.chunks),
        "events_per_read": n / len(stream.chunks),
        "payload_bytes_mean": stream.payload_bytes / n,
        "parse_only_us": parse_s / n * 1e6,
        "stages_us": {k: v / n * 1e6 for k, v in stages.items()},
        "total_us": total_s / n * 1e6,
        "loop_wall_us": wall_s / n * 1e6,
        "events_per_s": n / total_s,
        "parse_only_events_per_s": n / parse_s,
        "typed_decode_only_us": typed_s / n * 1e6,
        "ratio": parse_s / total_s,
        "asyncio_us": loop_s / n * 1e6,
        "asyncio_events_per_s": n / loop_s,
        "asyncio_ratio": parse_s / loop_s,
        "asyncio_cpu_us": loop_cpu_s / n * 1e6,
    }
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        print(
            f"{n} events, {len(stream.chunks)} reads of {args.chunk_bytes} B "
            f"({result['events_per_read']:.0f} events/read, {result['payload_bytes_mean']:.0f} B/event), "
            f"{args.stat} of {args.repeat}, RECORD_FORMAT={args.record_format}"
        )
        print(f"{'stage':<18}{'µs/event':>10}{'share':>8}")
        for k, v in result["stages_us"].items():
            print(f"{k:<18}{v:>10.3f}{v / result['total_us']:>8.1%}")
        print(f"{'total':<18}{result['total_us']:>10.3f}   → {result['events_per_s']:,.0f} events/s on one core")
        print(f"{'  (loop wall)':<18}{result['loop_wall_us']:>10.3f}   (incl. the writer thread's GIL share)")
        print(
            f"{'parse only':<18}{result['parse_only_us']:>10.3f}   → {result['parse_only_events_per_s']:,.0f} events/s"
        )
        print(f"{'  (typed decode)':<18}{result['typed_decode_only_us']:>10.3f}   (the same with P2's msgspec decoder)")
        print(f"ratio to the parsing limit: {result['ratio']:.2f}")
        print(
            "through the asyncio shells (uvloop, consumers' task, recorder thread): "
            f"{result['asyncio_us']:.3f} µs/event"
            f" → {result['asyncio_events_per_s']:,.0f} events/s, ratio {result['asyncio_ratio']:.2f}; "
            f"this process's CPU {result['asyncio_cpu_us']:.3f} µs/event"
        )
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(args.sort).print_stats(args.cprofile)
        print(out.getvalue(), file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
