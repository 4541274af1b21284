"""P2's memory budget, measured on a real ``mercury-p2`` process with its default settings.

Each case drives P2 with hostile or overloading input over loopback and reads the peak resident
set (``VmHWM`` in ``/proc/<pid>/status``): under 100 MB whatever the input, under 80 MB through an
overload of clean input (issue 13). Every case also checks that what went in is accounted for.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from mercurystream.shared.framing import HEADER, encode_frames

BIN = Path(sys.executable).parent
MB = 1 << 20
ANY_INPUT_MB = 100
CLEAN_OVERLOAD_MB = 80

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc for VmHWM")


class P2Process:
    """``mercury-p2`` on free loopback ports, logging to a file; stopped by SIGTERM."""

    def __init__(self, tmp: Path, **env: object) -> None:
        self.log = tmp / "p2.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PORT", "METRICS_PORT", "HOST"))}
        base.update(
            HOST="127.0.0.1",
            PORT="0",
            METRICS_PORT="0",
            LOG_LEVEL="INFO",
            INCIDENTS_DIR=str(tmp / "incidents"),
            DRIFT_SAMPLE_FILE=str(tmp / "drift.jsonl"),
            RECORD_FILE=str(tmp / "rec.jsonl"),
        )
        base.update({k: str(v) for k, v in env.items()})
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen([str(BIN / "mercury-p2")], env=base, stderr=self._out, stdout=self._out)
        deadline = time.monotonic() + 60
        while True:
            text = self.log.read_text(errors="replace")
            m = re.search(r"listening on tcp://127\.0\.0\.1:(\d+), metrics on http://127\.0\.0\.1:(\d+)", text)
            if m:
                self.port, self.metrics_port = int(m.group(1)), int(m.group(2))
                return
            assert self.proc.poll() is None, text
            assert time.monotonic() < deadline, text
            time.sleep(0.05)

    def peak_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024

    def metric(self, name: str, **labels: str) -> float:
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        total = 0.0
        for line in body.splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            got = head[len(name) :]
            if got == (f"{{{want}}}" if want else "") or (not want and got == ""):
                total += float(value)
        return total

    def wait_for(self, what: str, check, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


@pytest.fixture
def p2(tmp_path: Path):
    procs: list[P2Process] = []

    def start(**env: object) -> P2Process:
        procs.append(P2Process(tmp_path, **env))
        return procs[-1]

    yield start
    for p in procs:
        p.stop()


START = datetime.now(UTC) - timedelta(hours=1)
_ticks = itertools.count()


def trade(tid: int, product: str = "BTC-USD", **extra: object) -> bytes:
    """A P1 trade; each one a millisecond of exchange time after the one made before it (a busy
    market: the analytics' windows, bounded by time, hold what such a market fills them with)."""
    at = START + timedelta(milliseconds=next(_ticks))
    ev = {
        "type": "match",
        "product_id": product,
        "price": 100.5,
        "last_size": 0.25,
        "time": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "trade_id": tid,
        "ingest_ts_ms": int(time.time() * 1000),
    }
    ev.update(extra)
    return orjson.dumps(ev)


def blast(port: int, chunks: list[bytes]) -> None:
    """Send ``chunks`` on one connection as fast as P2 reads, then half-close and read the acks to
    the end (closing with acks unread would reset the connection and lose what P2 had not read)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        for c in chunks:
            s.sendall(c)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(120)
        while s.recv(1 << 16):
            pass


def events_in(p: P2Process) -> float:
    return p.metric("mercurystream_events_total")


def settled(p: P2Process, n: int) -> None:
    p.wait_for(f"{n} events", lambda: events_in(p) >= n)
    p.wait_for("queues drained", lambda: p.metric("mercurystream_queue_depth") == 0 or False, timeout=60)


def test_six_thousand_events_of_200_kb_stay_within_budget(p2) -> None:
    p = p2()
    pad = "x" * 200_000
    n = 6000
    chunks = []
    for k in range(0, n, 10):
        # every 500th a duplicate: flight-recorder captures of these big lines too
        chunks.append(encode_frames([trade(i if i % 500 else i - 1, pad=pad) for i in range(k, k + 10)]))
    blast(p.port, chunks)
    settled(p, n)
    peak = p.peak_mb()
    print(f"peak RSS, 6,000 events of 200 KB: {peak:.1f} MB")
    assert peak < ANY_INPUT_MB
    received = p.metric("mercurystream_consumer_received_total", consumer="forensics")
    passed = p.metric("mercurystream_consumer_events_total", consumer="forensics")
    dropped = sum(
        p.metric("mercurystream_consumer_dropped_total", consumer="forensics", reason=r)
        for r in ("queue_full", "queue_bytes", "consumer_error")
    )
    assert received == n == passed + dropped
    assert p.metric("mercurystream_budget_evictions_total", bound="flight_ring_bytes") > 0


def test_random_trade_ids_over_a_thousand_products_stay_within_budget(p2) -> None:
    p = p2()
    rng = random.Random(7)
    n = 400_000
    chunks = [
        encode_frames([trade(rng.randrange(1 << 50), f"P{rng.randrange(1000):04d}-USD") for _ in range(2000)])
        for _ in range(n // 2000)
    ]
    blast(p.port, chunks)
    settled(p, n)
    peak = p.peak_mb()
    print(f"peak RSS, {n} random ids over 1,000 products: {peak:.1f} MB")
    assert peak < ANY_INPUT_MB
    assert p.metric("mercurystream_budget_evictions_total", bound="dedupe_ids") > 0


def stall(port: int, size: int) -> socket.socket | None:
    """A connection holding an unfinished frame of ``size`` bytes (``None`` if P2 closed it at once)."""
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.sendall(HEADER.pack(size + 1000) + b"x" * size)
    except OSError:
        s.close()
        return None
    return s


async def producer_is_served(port: int, n: int) -> int:
    """P1's sink protocol (frames out, acks in) publishes ``n`` events; how many P2 acknowledged."""
    from mercurystream.p1.metrics import P1Metrics
    from mercurystream.p1.sink import TcpSink

    sink = TcpSink("127.0.0.1", port, 10_000, 0.5, 1 << 20, P1Metrics(), backoff_base_s=0.05)
    await sink.start()
    try:
        for k in range(0, n, 100):
            sink.publish([trade(10_000_000 + i) for i in range(k, k + 100)])
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 60
        while sink.buffer.acked < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return sink.buffer.acked
    finally:
        await sink.stop(5.0)


def test_three_hundred_stalled_connections_of_1_mb_stay_within_budget_and_a_producer_is_served(p2) -> None:
    p = p2()
    held = [s for _ in range(300) if (s := stall(p.port, 1_000_000 - 2000)) is not None]
    try:
        p.wait_for("partial budget enforced", lambda: p.metric("mercurystream_partial_frame_bytes") <= 32 * MB)
        assert asyncio.run(producer_is_served(p.port, 2000)) == 2000
        # hundreds more hostile connections, idle this time, while the producer keeps going
        idle = [socket.create_connection(("127.0.0.1", p.port)) for _ in range(300)]
        try:
            assert asyncio.run(producer_is_served(p.port, 1000)) == 1000
            peak = p.peak_mb()
            print(f"peak RSS, 300 stalled 1 MB frames + 300 idle connections: {peak:.1f} MB")
            assert peak < ANY_INPUT_MB
            assert p.metric("mercurystream_connections") <= 256
            assert p.metric("mercurystream_connections_closed_total", reason="partial_budget") > 0
            assert p.metric("mercurystream_connections_closed_total", reason="evicted") > 0
        finally:
            for s in idle:
                s.close()
    finally:
        for s in held:
            with contextlib.suppress(OSError):
                s.close()


def test_an_overload_of_clean_input_stays_under_80_mb(p2) -> None:
    p = p2()
    n = 600_000
    per = 1000
    chunks = [encode_frames([trade(k + i) for i in range(per)]) for k in range(0, n, per)]
    blast(p.port, chunks)
    settled(p, n)
    peak = p.peak_mb()
    print(f"peak RSS, {n} clean events as fast as P2 reads: {peak:.1f} MB")
    assert peak < CLEAN_OVERLOAD_MB
