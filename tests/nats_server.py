"""A real ``nats-server -js`` for the tests: loopback, a free port, a temporary store, stopped by itself.

No test mocks NATS. Where the binary is missing the tests that need it skip with a reason, unless
``MERCURY_REQUIRE_NATS=1`` (``.ci/run`` sets it), which turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from mercurystream.natsd import find_binary, jetstream_ready
from mercurystream.processes import free_port

READY_TIMEOUT_S = 15.0


def require_binary() -> str:
    """The binary's path; ``pytest.skip`` without it, or ``pytest.fail`` when ``MERCURY_REQUIRE_NATS=1``."""
    import pytest

    path = find_binary()
    if path is None:
        reason = "nats-server is not installed (apt-get install nats-server, or set NATS_SERVER_BIN)"
        if os.environ.get("MERCURY_REQUIRE_NATS") == "1":
            pytest.fail(f"MERCURY_REQUIRE_NATS=1 but {reason}")
        pytest.skip(reason)
    return path


class NatsServerError(Exception):
    """The server exited early or did not become ready; the message names its log."""


class NatsServer:
    """One ``nats-server -js`` child on ``127.0.0.1``; :meth:`restart` keeps the port and the store.

    The child runs in its own session so :meth:`stop` reaches it even if it forked; its output goes
    to ``<store>/server.log`` for the failure message.
    """

    def __init__(self, binary: str, store_dir: Path | None = None, port: int | None = None) -> None:
        self.binary = binary
        self._own_store = store_dir is None
        self.store_dir = Path(tempfile.mkdtemp(prefix="mercury-nats-")) if store_dir is None else store_dir
        self._auto_port = port is None
        self.port = port or free_port()
        self.log_path = self.store_dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> NatsServer:
        """Start and wait until ready; a port taken since it was picked is replaced, on the first start only."""
        for attempt in range(3):
            try:
                return self._start(timeout_s)
            except NatsServerError:
                if not self._auto_port or attempt == 2 or "address already in use" not in self.log_tail():
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start(self, timeout_s: float) -> NatsServer:
        argv = [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir / "js")]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        """Ready when the client port answers with an INFO line that says JetStream is on."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise NatsServerError(f"nats-server exited with {self.proc.returncode}; see {self.log_path}: "
                                      f"{self.log_tail()}")  # fmt: skip
            if jetstream_ready(self.port):
                return
            time.sleep(0.05)
        raise NatsServerError(f"nats-server not ready on {self.url} within {timeout_s:g} s; see {self.log_path}")

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL to the whole group if it lingers."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.proc = None

    def restart(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Stop and start again on the same port with the same store (what a server restart keeps)."""
        self.stop()
        self._auto_port = False
        self.start(timeout_s)

    def close(self) -> None:
        """Kill the server and remove a store this object created."""
        self.kill()
        if self._own_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
