"""Running the services as child processes: shared by the demo, the end-to-end tests and the benchmark.

Each child gets its own session (so a stop reaches its whole process group) and its output
goes to a log file, optionally echoed to the console.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent
"""Where the console scripts of this environment are."""


def service_variables() -> frozenset[str]:
    """Every environment variable P1 or P2 reads, taken from their settings classes so it cannot go stale."""
    from mercurystream.p1.config import P1Settings
    from mercurystream.p2.config import P2Settings

    return frozenset(P1Settings.model_fields) | frozenset(P2Settings.model_fields)


def child_env(extra: dict[str, object] | None = None, keep: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment minus the services' variables (except ``keep``), plus ``extra``.

    A developer's shell may export ``PORT`` or ``RECORD_FILE``; the demo, the end-to-end tests and
    the benchmark set up their services themselves and must not be redirected by it.
    """
    drop = {v.upper() for v in service_variables()} - set(keep)
    env = {k: v for k, v in os.environ.items() if k.upper() not in drop}
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


class ServiceError(Exception):
    """A service died or did not become ready; the message is one line for the user."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Service:
    """A child process whose output goes to a log file, optionally echoed to the console."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._echo = threading.Event()
        self._echo_filter: Callable[[str], bool] = lambda line: True

    def start(self) -> None:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, name=f"log-{self.name}", daemon=True).start()

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._log.write(raw)
            self._log.flush()
            if self._echo.is_set():
                line = raw.decode(errors="replace").rstrip()
                if self._echo_filter(line):
                    print(f"  [{self.name}] {line}", flush=True)

    def echo(self, on: bool, keep: Callable[[str], bool] | None = None) -> None:
        if keep is not None:
            self._echo_filter = keep
        (self._echo.set if on else self._echo.clear)()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


def wait_for(what: str, check: Callable[[], bool], timeout: float, services: list[Service]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in services:
            if not s.alive():
                raise ServiceError(f"{s.name} exited early (code {s.proc.returncode}); see {s.log_path}")
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.25)
    raise ServiceError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200
