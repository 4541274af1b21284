"""A local ``nats-server -js`` for ``make demo-cluster`` and the benchmark: loopback, a free port, a temp store.

The tests have their own fixture (``tests/nats_server.py``, which kills and restarts the server) on this
module's binary lookup and readiness probe; this one runs
the server as a :class:`~mercurystream.processes.Service` beside the other services, and reads its
resident memory and CPU time from ``/proc`` for the benchmark's results.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from pathlib import Path

import orjson

from mercurystream.processes import Service, ServiceError, child_env, free_port

DEFAULT_PATHS = ("/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server")
MISSING = "nats-server is not installed (apt-get install nats-server, or set NATS_SERVER_BIN to its path)"


def find_binary() -> str | None:
    """``NATS_SERVER_BIN``, else ``nats-server`` on PATH, else Debian's location."""
    explicit = os.environ.get("NATS_SERVER_BIN")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("nats-server") or next((p for p in DEFAULT_PATHS if os.access(p, os.X_OK)), None)


class NatsServer:
    """One JetStream server as a service: :meth:`start` waits until its INFO says JetStream is on."""

    def __init__(self, binary: str, run_dir: Path, port: int | None = None, name: str = "nats") -> None:
        self.port = port or free_port()
        self.store = run_dir / f"{name}-store"
        argv = [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)]
        self.service = Service(name, argv, child_env(), run_dir)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        proc = self.service.proc
        return proc.pid if proc is not None else None

    def start(self, timeout_s: float = 15.0) -> NatsServer:
        shutil.rmtree(self.store, ignore_errors=True)
        self.service.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.service.alive():
                raise ServiceError(f"nats-server exited early; see {self.service.log_path}")
            if jetstream_ready(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise ServiceError(f"nats-server not ready on {self.url} within {timeout_s:g} s; see {self.service.log_path}")

    def stop(self) -> None:
        self.service.stop()
        shutil.rmtree(self.store, ignore_errors=True)

    def usage(self) -> tuple[float, int]:
        """(CPU seconds used so far, resident bytes now), from ``/proc``; zeros where it cannot be read."""
        return proc_usage(self.pid)


def jetstream_ready(port: int) -> bool:
    """The client port answers with an INFO line that says JetStream is on."""
    with contextlib.suppress(OSError, ValueError), socket.create_connection(("127.0.0.1", port), 1) as s:
        s.settimeout(1)
        line = s.recv(65536)
        return line.startswith(b"INFO ") and bool(orjson.loads(line[5:].strip()).get("jetstream"))
    return False


def proc_usage(pid: int | None) -> tuple[float, int]:
    """(user + system CPU seconds, RSS bytes) of a Linux process; ``(0.0, 0)`` when unknown."""
    if pid is None:
        return 0.0, 0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0.0, 0
    return cpu, rss
