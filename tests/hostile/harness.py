"""A real ``mercury-p2`` on loopback, driven by one hostile case and judged on three things.

Every case asserts, through :meth:`HostileP2.verdict`:

- **memory**: P2's peak RSS (``VmHWM`` of ``/proc/<pid>/status``) stays within :data:`RSS_BUDGET_MB`;
  a watchdog kills P2 past :data:`RSS_KILL_MB`, so a case that would take gigabytes fails fast
  instead of taking the machine with it;
- **output**: P2's log file and one ``/metrics`` response stay within a size bound;
- **accounting**: every event P2 received is accounted for, from its own metrics: each consumer was
  offered every received event (``mercurystream_consumer_received_total``) and passed it on
  (``mercurystream_consumer_events_total``) or counted it under a reason
  (``mercurystream_consumer_dropped_total{reason}``), none of them under ``consumer_error`` (an
  exception: counted, but a bug); and every frame sent is an event or a frame error
  (``mercurystream_frame_errors_total{reason}``) when the case says how many it sent.

Every wait is bounded (socket timeouts, polling deadlines, process stop timeouts).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import orjson

from mercurystream.processes import BIN, Service, child_env, free_port, wait_for
from mercurystream.shared.framing import FrameDecoder, decode_object, encode_frames
from mercurystream.shared.scrape import Sample, parse

RSS_BUDGET_MB = 100.0
"""Issue 13: P2's peak RSS stays under 100 MB by default under any input."""
RSS_KILL_MB = 400.0
"""Past this the watchdog kills P2: the case has failed, and must not take the machine's memory."""
LOG_MAX_BYTES = 512 * 1024
METRICS_MAX_BYTES = 256 * 1024
IO_TIMEOUT_S = 20.0

EVENTS = "mercurystream_events_total"
FRAME_ERRORS = "mercurystream_frame_errors_total"
RECEIVED = "mercurystream_consumer_received_total"
PASSED_ON = "mercurystream_consumer_events_total"
DROPPED = "mercurystream_consumer_dropped_total"


def wait_until(check, timeout: float = 20.0) -> bool:
    """Poll ``check`` until it holds or ``timeout`` passes; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def trade(
    i: int,
    product: str = "BTC-USD",
    price: object = 100.0,
    size: object = 0.5,
    t: str | None = None,
    **extra: object,
) -> dict:
    """A valid trade as P1 sends it, timed now unless ``t``."""
    now = time.time()
    when = t or time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    return {
        "type": "match",
        "product_id": product,
        "price": price,
        "last_size": size,
        "time": when,
        "trade_id": i,
        "ingest_ts_ms": int(now * 1000),
        **extra,
    }


def payload(event: dict) -> bytes:
    return orjson.dumps(event)


def odd_payloads() -> list[bytes]:
    """Valid JSON of every odd shape the fuzzer found or the issue names, each one event."""
    big = b"9" * 401
    base = payload(trade(500))[:-1]
    return [
        payload({**trade(501), "type": []}),
        payload({**trade(502), "type": {"gap": 1}}),
        base + b',"recv_ts_ms":' + big + b',"recv_ts_us":' + big + b"}",
        payload(trade(503))[:-1] + b',"x":' + b"[" * 900 + b"]" * 900 + b"}",
        payload(trade(504))[:-1] + b',"y":' + b'{"a":' * 300 + b"1" + b"}" * 300 + b"}",
        payload(trade(505, price=0)).replace(b'"price":0', b'"price":-' + big),
        json.dumps({**trade(506), "trade_id": 2**64}).encode(),
        payload({**trade(507), "time": "9" * 5000}),
        json.dumps({"type": "gap", "product_id": "BTC-USD", "first_missing": 2**70, "last_missing": 1}).encode(),
        json.dumps({**trade(508), "product_id": "AB\ud800-USD"}).encode(),
        json.dumps({**trade(509), "side": "\udcff", "venue": "\ud800", "\ud800key": 1}).encode(),
        json.dumps({**trade(510), "type": "\ud800", "time": "\udfff"}).encode(),
        json.dumps({**trade(511), "price": "x", "\ud800key": 1, "k\udcff": 2}).encode(),
    ]


def frame(raw: bytes) -> bytes:
    """One frame around any bytes (a header that tells the truth)."""
    return struct.pack(">I", len(raw)) + raw


class OverBudget(AssertionError):
    """P2's memory went past its budget: the verdict a case awaiting the byte budget (issue 13 items 1-2) expects."""


class HostileP2:
    """One ``mercury-p2`` process with its own ports, files and log under ``tmp``."""

    def __init__(self, tmp: Path, **env: object) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.metrics_port = free_port()
        self.env = {
            "HOST": "127.0.0.1",
            "PORT": self.port,
            "METRICS_PORT": self.metrics_port,
            "STATUS_INTERVAL_S": "0.5",
            "LOG_LEVEL": "INFO",
            "RECORD_FILE": tmp / "record.jsonl",
            "INCIDENTS_DIR": tmp / "incidents",
            "DRIFT_SAMPLE_FILE": tmp / "drift.jsonl",
            "INCIDENT_CHARTS": "false",
            **env,
        }
        self.service = Service("p2", [str(BIN / "mercury-p2")], child_env(self.env), tmp)
        self.peak_kb = 0
        self.killed_at_kb: int | None = None
        self._watch = threading.Event()
        self.sent_frames = 0

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> HostileP2:
        self.service.start()
        # P2 serves /metrics before it binds its port; the log says when it listens.
        wait_for("P2's /metrics", lambda: bool(self.metrics_text()), 60, [self.service])
        wait_for("P2's port", lambda: "P2 listening on tcp://" in self.log_text(), 60, [self.service])
        self._watch.set()
        threading.Thread(target=self._watchdog, name="rss-watchdog", daemon=True).start()
        return self

    def stop(self) -> int | None:
        self._read_peak()
        self._watch.clear()
        return self.service.stop(timeout=15)

    @property
    def pid(self) -> int:
        assert self.service.proc is not None
        return self.service.proc.pid

    def alive(self) -> bool:
        return self.service.alive()

    def _read_peak(self) -> None:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                elif line.startswith("VmRSS:") and int(line.split()[1]) > RSS_KILL_MB * 1024 and self.alive():
                    self.killed_at_kb = int(line.split()[1])
                    os.kill(self.pid, signal.SIGKILL)

    def _watchdog(self) -> None:
        while self._watch.is_set() and self.alive():
            self._read_peak()
            time.sleep(0.02)

    @property
    def peak_mb(self) -> float:
        self._read_peak()
        return self.peak_kb / 1024

    # --- driving -----------------------------------------------------------------------------------

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=IO_TIMEOUT_S)
        s.settimeout(IO_TIMEOUT_S)
        return s

    def send(self, payloads: Iterable[bytes], chunk_frames: int = 1000) -> int:
        """Send whole frames on one connection, wait until P2 acknowledged them all; the last ack."""
        payloads = list(payloads)
        with self.connect() as s:
            for i in range(0, len(payloads), chunk_frames):
                s.sendall(encode_frames(payloads[i : i + chunk_frames]))
            self.sent_frames += len(payloads)
            return self.wait_ack(s, len(payloads))

    def wait_ack(self, s: socket.socket, n: int) -> int:
        decoder = FrameDecoder()
        acked = 0
        deadline = time.monotonic() + IO_TIMEOUT_S
        while acked < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"P2 acknowledged {acked} of {n} frames within {IO_TIMEOUT_S}s")
            data = s.recv(65536)
            if not data:
                raise AssertionError(f"P2 closed the connection after acknowledging {acked} of {n} frames")
            for p in decoder.feed(data):
                obj, _ = decode_object(p)
                if obj is not None and "ack" in obj:
                    acked = max(acked, int(obj["ack"]))
        return acked

    # --- reading -----------------------------------------------------------------------------------

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def metrics(self) -> Sample:
        return parse(self.metrics_text())

    def log_text(self) -> str:
        return self.service.log_path.read_text(errors="replace")

    def log_bytes(self) -> int:
        return self.service.log_path.stat().st_size

    def accounting(self, m: Sample) -> tuple[float, dict[str, tuple[float, float, float]]]:
        """``(events received, {consumer: (received, passed on, dropped over every reason)})``."""
        per = {
            c: (received, m.value(PASSED_ON, consumer=c), m.total(DROPPED, consumer=c))
            for c, received in m.by_label(RECEIVED, "consumer").items()
        }
        return m.value(EVENTS), per

    def settle(self, timeout: float = 30.0) -> Sample:
        """Poll ``/metrics`` until every consumer is done with every event received and nothing moves."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            m = self.metrics()
            events, per = self.accounting(m)
            done = all(r == events and r == p + d for r, p, d in per.values())
            key = (events, tuple(sorted(per.items())))
            if (done and key == last) or time.monotonic() > deadline:
                return m
            last = key if done else None
            time.sleep(0.2)

    # --- the three assertions ----------------------------------------------------------------------

    def verdict(
        self,
        frames_sent: int | None = None,
        rss_mb: float = RSS_BUDGET_MB,
        log_max: int = LOG_MAX_BYTES,
        metrics_max: int = METRICS_MAX_BYTES,
        settle_s: float = 30.0,
    ) -> Sample:
        """Assert memory, output size and accounting; returns the settled metrics for more checks."""
        if self.killed_at_kb is not None:
            raise OverBudget(
                f"P2 killed by the watchdog at {self.killed_at_kb / 1024:.0f} MB RSS (budget {rss_mb:.0f} MB)"
            )
        assert self.alive(), f"P2 died (code {self.service.proc.returncode}); log tail: {self.log_text()[-2000:]}"
        m = self.settle(settle_s)
        events, per = self.accounting(m)
        assert per, "no consumer reports mercurystream_consumer_received_total"
        for consumer, (received, passed, dropped) in per.items():
            assert received == events, f"{consumer}: offered {received} of {events} events received"
            assert received == passed + dropped, (
                f"{consumer}: received {received} != passed on {passed} + dropped {dropped}"
            )
        raised = m.total(DROPPED, reason="consumer_error")
        assert raised == 0, f"consumers raised on {raised} events (counted, but each is a bug): {self._errors()}"
        if frames_sent is not None:
            errors = m.total(FRAME_ERRORS)
            assert events + errors == frames_sent, f"{frames_sent} frames sent, {events} events + {errors} frame errors"
        drift = Path(self.env["DRIFT_SAMPLE_FILE"])
        for n, line in enumerate(drift.read_bytes().splitlines() if drift.is_file() else [], 1):
            try:
                orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise AssertionError(f"drift sample {n} is not JSON ({exc}): {line[:200]!r}") from None
        size = len(self.metrics_text().encode())
        assert size <= metrics_max, f"/metrics is {size} bytes (bound {metrics_max})"
        assert self.log_bytes() <= log_max, f"the log is {self.log_bytes()} bytes (bound {log_max})"
        assert "Traceback" not in self.log_text(), f"a traceback in P2's log: {self.log_text()[-3000:]}"
        if self.peak_mb >= rss_mb:
            raise OverBudget(f"P2's peak RSS {self.peak_mb:.1f} MB (budget {rss_mb:.0f} MB)")
        return m

    def _errors(self) -> str:
        return " / ".join(line[:300] for line in self.log_text().splitlines() if "consumer_error" in line)[:3000]

    def guard(self):
        """A context for driving P2: a socket error after the watchdog killed P2 reads as that verdict."""
        return _Guard(self)


class _Guard:
    def __init__(self, p2: HostileP2) -> None:
        self.p2 = p2

    def __enter__(self) -> HostileP2:
        return self.p2

    def __exit__(self, typ, exc, tb) -> bool:
        if exc is not None and isinstance(exc, OSError | AssertionError) and self.p2.killed_at_kb is not None:
            raise OverBudget(
                f"P2 killed by the watchdog at {self.p2.killed_at_kb / 1024:.0f} MB RSS "
                f"(budget {RSS_BUDGET_MB:.0f} MB) while the case ran"
            ) from exc
        return False
