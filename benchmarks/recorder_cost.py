"""What P2's recorder costs per event in each format: its writer's step, timed in-process, plus the bytes it leaves.

The lines are recorded lines in P1's exact shape (the benchmark pool: the offline exchange's trades
normalized by P1's pipeline) with realistic ingest and receive stamps. Each format's writer gets
them in handoffs of :data:`~mercurystream.p2.recorder.COALESCE_LINES`, each a list of read-sized
batches (:data:`BATCH_LINES`), as the recorder hands them over at load, through its ``write`` step
on this thread (the same code its thread runs), and is then closed, so the Parquet figure includes
its last row group and footer. The measuring runs in a fresh process under P2's runtime settings
(``p2.app.tune_runtime``: with its pinned mmap threshold, a large join is a fresh mapping whose
pages fault in, as in P2), so it neither inherits nor changes the caller's. ``us_per_event`` is wall
time to the end of the close; ``cpu_us_per_event`` is this thread's CPU, the work that contends for
the GIL with P2's loop; ``child_cpu_us_per_event`` is the Parquet writer process's CPU from the
moment it is ready to its exit, less what an exit with no data costs (its start, mostly
importing pyarrow, and that exit are left out and reported apart as ``child_start_cpu_s`` and
``child_exit_cpu_s``): work on another core, not on P2's.

``scanner`` prices the writer process's line scanner (``shared/_rowscan.c``) against the plain
decode it sits beside: both turn the same messages into columns in this process, alternating,
and ``speedup`` is the median plain time over the median scanner time (absent when it is not built).

    .venv/bin/python -m benchmarks.recorder_cost                  # JSON on stdout
    .venv/bin/python -m benchmarks.recorder_cost --events 50000 --runs 1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from benchmarks.kernels import PAYS
from benchmarks.lab import cpu_seconds
from benchmarks.stream import generate_pool
from mercurystream.p2.recorder import COALESCE_LINES, JsonlWriter
from mercurystream.p2.recorder_parquet import ParquetRecordWriter
from mercurystream.shared.event import recv_suffix

START_US = 1_764_940_000_000_000
BATCH_LINES = 200
"""Lines per batch within a handoff: about one 64 KiB socket read of P1's events (``profile_p2``'s reads)."""
ROOT = Path(__file__).resolve().parent.parent


def recorded_lines(n: int, seed: int = 1) -> list[bytes]:
    """``n`` lines as P2 records them: P1's payload, ingest stamps a few µs apart, receive stamps spliced."""
    out = []
    for i, payload in enumerate(generate_pool(n, seed)):
        event = orjson.loads(payload)
        ingest_us = START_US + i * 7
        event["ingest_ts_ms"], event["ingest_ts_us"] = ingest_us // 1000, ingest_us
        out.append(orjson.dumps(event)[:-1] + recv_suffix(ingest_us + 180 + i % 50))
    return out


def _writer(fmt: str, folder: Path) -> JsonlWriter:
    if fmt == "jsonl":
        return JsonlWriter(folder / "rec.jsonl")
    return ParquetRecordWriter(folder / "rec.jsonl", rotate_bytes=1 << 40, rotate_s=1e9)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child_overhead_cpu_s() -> tuple[float, float]:
    """CPU seconds the Parquet writer process takes with no data: to get ready (pyarrow's import), then to exit."""
    with tempfile.TemporaryDirectory(prefix="recorder-cost-") as tmp:
        writer = _writer("parquet", Path(tmp))
        assert isinstance(writer, ParquetRecordWriter)
        before = _children_cpu_s()
        writer.start()
        ready = cpu_seconds(writer.child_pid) if writer.child_pid is not None else 0.0
        writer.close(60)
        return ready, _children_cpu_s() - before - ready


def _chunks(lines: list[bytes]) -> list[list[bytes]]:
    """The lines as the recorder hands them to its writer at load: :data:`COALESCE_LINES` at a time."""
    return [lines[i : i + COALESCE_LINES] for i in range(0, len(lines), COALESCE_LINES)]


def measure(fmt: str, lines: list[bytes], child_exit_s: float = 0.0) -> dict[str, float]:
    """One run: every line through the writer's step, then close; time, CPU and the bytes on disk.

    A Parquet writer's process is started and ready (pyarrow loaded) before the clock starts; the
    CPU it had used by then, read from ``/proc``, and ``child_exit_s`` (its exit with no data) are
    taken off its total, so what is left is its work, however much its start varies.
    """
    handoffs = [[chunk[j : j + BATCH_LINES] for j in range(0, len(chunk), BATCH_LINES)] for chunk in _chunks(lines)]
    with tempfile.TemporaryDirectory(prefix="recorder-cost-") as tmp:
        folder = Path(tmp)
        writer = _writer(fmt, folder)
        children = _children_cpu_s()
        if isinstance(writer, ParquetRecordWriter):
            writer.start()
            pid = writer.child_pid
            children += cpu_seconds(pid) if pid is not None else 0.0
        wall, cpu = time.perf_counter(), time.thread_time()
        for handoff in handoffs:
            writer.write(handoff)
        writer.close(600)
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        children = _children_cpu_s() - children
        size = sum(p.stat().st_size for p in folder.iterdir())
        if writer.written != len(lines) or writer.errors:
            raise RuntimeError(f"{fmt}: wrote {writer.written} of {len(lines)}, {writer.errors} errors")
    n = len(lines)
    child = max(0.0, children - child_exit_s) if fmt == "parquet" else 0.0
    return {
        "us_per_event": wall / n * 1e6,
        "cpu_us_per_event": cpu / n * 1e6,
        "child_cpu_us_per_event": child / n * 1e6,
        "bytes_per_event": size / n,
    }


def price_scanner(lines: list[bytes], repeats: int) -> dict[str, float] | None:
    """The scanner's speedup over the plain decode on the writer process's messages (``None``: not built)."""
    from mercurystream.shared.parquet import RowEncoder, scan_columns

    messages = [(b"".join(chunk), len(chunk)) for chunk in _chunks(lines)]
    if scan_columns(*messages[0]) is None:
        return None
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(max(3, repeats)):
        for scan, out in times.items():
            encoder = RowEncoder()
            t = time.perf_counter()
            for data, n in messages:
                encoder.encode_joined(data, n, scan=scan)
            out.append(time.perf_counter() - t)
    plain, scanned = statistics.median(times[False]), statistics.median(times[True])
    n = len(lines)
    return {
        "plain_us_per_event": round(plain / n * 1e6, 3),
        "scan_us_per_event": round(scanned / n * 1e6, 3),
        "speedup": round(plain / scanned, 2),
        "pays": plain / scanned >= PAYS,
    }


KEYS = ("us_per_event", "cpu_us_per_event", "child_cpu_us_per_event", "bytes_per_event")


def run(events: int, runs: int) -> dict[str, object]:
    """:func:`run_here` in a fresh process (see the module's docstring)."""
    argv = [sys.executable, "-m", "benchmarks.recorder_cost", "--events", str(events), "--runs", str(runs), "--here"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"recorder_cost failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def run_here(events: int, runs: int) -> dict[str, object]:
    """Both formats measured in this process, ``runs`` times each; medians."""
    lines = recorded_lines(events)
    t0 = time.perf_counter()
    import mercurystream.shared.parquet  # noqa: F401 - timed: the Parquet writer process pays this once

    result: dict[str, object] = {
        "events": events,
        "runs": runs,
        "line_bytes": sum(map(len, lines)) / len(lines),
        "pyarrow_import_s": round(time.perf_counter() - t0, 3),
    }
    overheads = [child_overhead_cpu_s() for _ in range(runs)]
    exit_s = statistics.median(e for _, e in overheads)
    result["child_start_cpu_s"] = round(statistics.median(r + e for r, e in overheads), 3)
    result["child_exit_cpu_s"] = round(exit_s, 3)
    samples: dict[str, list[dict[str, float]]] = {"jsonl": [], "parquet": []}
    for _ in range(runs):  # the formats alternate, so a change in the machine's load reaches both
        for fmt, out in samples.items():
            out.append(measure(fmt, lines, exit_s))
    for fmt, out in samples.items():
        result[fmt] = {key: round(statistics.median(s[key] for s in out), 3) for key in KEYS}
    scanner = price_scanner(lines, runs)
    if scanner is not None:
        result["scanner"] = scanner
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recorder_cost", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000, help="recorded lines per run (default 200000)")
    p.add_argument("--runs", type=int, default=3, help="runs per format; medians are reported (default 3)")
    p.add_argument("--here", action="store_true", help="measure in this process, after P2's runtime settings")
    args = p.parse_args(argv)
    if args.events <= 0 or args.runs <= 0:
        p.error("--events and --runs must be positive")
    if args.here:
        from mercurystream.p2.app import tune_runtime

        tune_runtime()
    json.dump((run_here if args.here else run)(args.events, args.runs), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
