"""A loopback cluster of real processes (exchange, P1, P2) on free ports, stopped after each test."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from mercurystream.processes import BIN, Service, child_env, free_port, wait_for
from mercurystream.shared.scrape import Sample, scrape


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.services: list[Service] = []
        self.exchange_port = free_port()
        self.p2_port = free_port()
        self.p2_metrics_port = free_port()
        self.p1_metrics_port = free_port()
        self.record_file = tmp / "record.jsonl"
        self.incidents = tmp / "incidents"

    def _spawn(self, name: str, argv: list[str], env: dict[str, object]) -> Service:
        full = child_env({"STATUS_INTERVAL_S": "1", "LOG_LEVEL": "INFO", **env})
        svc = Service(f"{name}-{sum(s.name.startswith(name) for s in self.services)}", argv, full, self.logs)
        svc.start()
        self.services.append(svc)
        return svc

    def exchange(self, *args: object) -> Service:
        argv = [str(BIN / "mercury-exchange"), "--port", str(self.exchange_port), *map(str, args)]
        svc = self._spawn("exchange", argv, {})
        self.wait("the exchange", lambda: self._http_ok(f"http://127.0.0.1:{self.exchange_port}/healthz"))
        return svc

    def p2(self, **env: object) -> Service:
        base = {
            "PORT": self.p2_port,
            "METRICS_PORT": self.p2_metrics_port,
            "RECORD": "true",
            "RECORD_FILE": self.record_file,
            "INCIDENTS_DIR": self.incidents,
            "DRIFT_SAMPLE_FILE": self.tmp / "drift.jsonl",
            "INCIDENT_CHARTS": "false",
        }
        env = {**base, **env}
        svc = self._spawn("p2", [str(BIN / "mercury-p2")], env)
        self.wait("P2 metrics", lambda: self._http_ok(f"http://127.0.0.1:{env['METRICS_PORT']}/metrics"))
        return svc

    def p1(self, **env: object) -> Service:
        base = {
            "COINBASE_WS_URL": f"ws://127.0.0.1:{self.exchange_port}",
            "P2_PORT": self.p2_port,
            "P1_METRICS_PORT": self.p1_metrics_port,
        }
        svc = self._spawn("p1", [str(BIN / "mercury-p1")], {**base, **env})
        self.wait("P1 metrics", lambda: self._http_ok(f"http://127.0.0.1:{self.p1_metrics_port}/metrics"))
        return svc

    def exchange_stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.exchange_port}/stats", timeout=2) as r:
            return json.loads(r.read())

    def p2_metrics(self, port: int | None = None) -> Sample:
        return scrape(f"http://127.0.0.1:{port or self.p2_metrics_port}/metrics")

    def p1_metrics(self) -> Sample:
        return scrape(f"http://127.0.0.1:{self.p1_metrics_port}/metrics")

    def recorded(self) -> list[dict]:
        if not self.record_file.exists():
            return []
        return [json.loads(line) for line in self.record_file.read_bytes().splitlines() if line.strip()]

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
        running = [s for s in self.services if s.alive()]
        wait_for(what, check, timeout, running)

    @staticmethod
    def _http_ok(url: str) -> bool:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200

    def stop_all(self) -> dict[str, int | None]:
        codes = {}
        for svc in reversed(self.services):
            codes[svc.name] = svc.stop(timeout=15)
        return codes

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


def settle(read: Callable[[], float], quiet_s: float = 1.0, timeout: float = 30.0) -> float:
    """Poll ``read`` until it has not changed for ``quiet_s``; return the settled value."""
    deadline = time.monotonic() + timeout
    last = read()
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    return last
