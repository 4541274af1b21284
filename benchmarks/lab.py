"""The benchmark's processes: P2, P1, the exchange, the baseline reader and the load generator, on free ports.

Every service is a real child process (:class:`mercurystream.processes.Service`) with its own
log file under the run's work directory. :class:`Lab` tracks what it started and stops all of it,
whatever happens, so no benchmark leaves a process behind.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from mercurystream.processes import BIN, Service, ServiceError, child_env, free_port, http_ok, wait_for
from mercurystream.shared.recording import closed_files, file_stem
from mercurystream.shared.scrape import Sample, scrape

READY_TIMEOUT_S = 60.0
ROOT = Path(__file__).resolve().parent.parent


def proc_status_mb(pid: int, field: str = "VmHWM") -> float:
    """A memory field of ``/proc/<pid>/status`` in MiB: ``VmHWM`` is the peak resident set, ``VmRSS`` the current."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    raise ServiceError(f"no {field} for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a live process (all its threads) has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """Children of every thread of a live process (``/proc/<pid>/task/*/children``)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


def is_recorder_process(pid: int) -> bool:
    """The Parquet recorder's writer process: a child that lives as long as P2, never a sign of work pending."""
    try:
        return b"mercurystream.p2.recorder_parquet" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


BIND_ATTEMPTS = 3
ADDRESS_IN_USE = "address already in use"


class BindError(ServiceError):
    """A service exited at start because another process took its port first."""

    def __init__(self, message: str, service: Service) -> None:
        super().__init__(message)
        self.service = service


def _log_tail(path: Path, nbytes: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - nbytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class Endpoint:
    """A started service and where to reach it."""

    def __init__(self, service: Service, port: int, metrics_port: int, files: dict[str, Path]) -> None:
        self.service = service
        self.port = port
        self.metrics_port = metrics_port
        self.files = files

    @property
    def pid(self) -> int:
        assert self.service.proc is not None
        return self.service.proc.pid

    def metrics(self) -> Sample:
        return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def peak_rss_mb(self) -> float:
        return proc_status_mb(self.pid, "VmHWM")

    def rss_mb(self) -> float:
        return proc_status_mb(self.pid, "VmRSS")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)


class Lab:
    """Starts processes for one measurement and stops them all on :meth:`stop_all`."""

    def __init__(self, workdir: Path, pool: Path) -> None:
        self.workdir = workdir
        self.pool = pool
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.services: list[Service] = []
        self.loadgens: list[LoadGen] = []
        self._seq = 0

    def env(self, extra: dict[str, Any] | None = None) -> dict[str, str]:
        """The environment for a child: :func:`child_env`, with the repo importable, plus ``extra``."""
        env = child_env()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        env.update({k: str(v) for k, v in (extra or {}).items()})
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, Any]) -> Service:
        self._seq += 1
        svc = Service(f"{self._seq:03d}-{name}", argv, self.env(env), self.logs)
        svc.start()
        self.services.append(svc)
        return svc

    def _ready(self, what: str, svc: Service, check: Callable[[], bool]) -> None:
        """Wait until ``check`` holds; :class:`BindError` if the service died because its port was taken."""
        try:
            wait_for(what, check, READY_TIMEOUT_S, [svc])
        except ServiceError as exc:
            if svc.alive() or ADDRESS_IN_USE not in _log_tail(svc.log_path).lower():
                raise
            raise BindError(str(exc), svc) from exc

    def _bound(self, start: Callable[[], Endpoint]) -> Endpoint:
        """``start()``, again on other ports when the last one lost its port.

        A port :func:`free_port` found free can be taken before the service binds it (the load
        generator's and P1's connections draw from the same ephemeral range): the service then
        exits at start, and is started again, up to :data:`BIND_ATTEMPTS` times.
        """
        for attempt in range(1, BIND_ATTEMPTS + 1):
            try:
                return start()
            except BindError as exc:
                if attempt == BIND_ATTEMPTS:
                    raise
                self.services.remove(exc.service)
        raise AssertionError("unreachable")

    def p2(self, **settings: Any) -> Endpoint:
        """P2 with every consumer its settings turn on; ``settings`` override the environment."""
        return self._bound(lambda: self._p2(**settings))

    def _p2(self, **settings: Any) -> Endpoint:
        port, metrics_port = free_port(), free_port()
        d = self.workdir / f"p2-{self._seq + 1:03d}"
        d.mkdir()
        files = {"record": d / "record.jsonl", "incidents": d / "incidents", "drift": d / "drift.jsonl"}
        env = {
            "HOST": "127.0.0.1",
            "PORT": port,
            "METRICS_PORT": metrics_port,
            "RECORD_FILE": files["record"],
            "INCIDENTS_DIR": files["incidents"],
            "DRIFT_SAMPLE_FILE": files["drift"],
            # The load streams move their trade dates a day per pool cycle, ahead of the wall clock
            # on a long sweep; the bound's check costs the same whatever its value.
            "MAX_FUTURE_SKEW_S": 10 * 365 * 86400,
            **settings,
        }
        svc = self._spawn("p2", [str(BIN / "mercury-p2")], env)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        self._ready("P2 metrics", svc, lambda: http_ok(url))
        return Endpoint(svc, port, metrics_port, files)

    def baseline(self) -> Endpoint:
        return self._bound(self._baseline)

    def _baseline(self) -> Endpoint:
        port, metrics_port = free_port(), free_port()
        argv = [sys.executable, "-m", "benchmarks.baseline_reader", "--port", str(port)]
        svc = self._spawn("baseline", [*argv, "--metrics-port", str(metrics_port)], {})
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        self._ready("the baseline reader", svc, lambda: http_ok(url))
        return Endpoint(svc, port, metrics_port, {})

    def exchange(self, rate: float, max_queue: int = 100_000, *, flood: bool = False) -> Endpoint:
        """``flood``: trades only as fast as the slowest subscriber reads them; ``rate`` then spaces their times."""
        return self._bound(lambda: self._exchange(rate, max_queue, flood))

    def _exchange(self, rate: float, max_queue: int, flood: bool) -> Endpoint:
        port = free_port()
        argv = [str(BIN / "mercury-exchange"), "--port", str(port), "--rate", str(rate), "--max-queue", str(max_queue)]
        if flood:
            argv.append("--flood")
        svc = self._spawn("exchange", argv, {})
        self._ready("the exchange", svc, lambda: http_ok(f"http://127.0.0.1:{port}/healthz"))
        return Endpoint(svc, port, port, {})

    def p1(self, exchange: Endpoint, p2: Endpoint, **settings: Any) -> Endpoint:
        return self._bound(lambda: self._p1(exchange, p2, **settings))

    def _p1(self, exchange: Endpoint, p2: Endpoint, **settings: Any) -> Endpoint:
        metrics_port = free_port()
        env = {
            "COINBASE_WS_URL": f"ws://127.0.0.1:{exchange.port}",
            "P2_HOST": "127.0.0.1",
            "P2_PORT": p2.port,
            "P1_METRICS_PORT": metrics_port,
            **settings,
        }
        svc = self._spawn("p1", [str(BIN / "mercury-p1")], env)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        self._ready("P1 metrics", svc, lambda: http_ok(url))
        return Endpoint(svc, 0, metrics_port, {})

    def loadgen(
        self,
        port: int,
        rate: float,
        *,
        duration: float | None = None,
        count: int | None = None,
        shape: str = "p1",
        skip: int = 0,
        storm: int = 0,
        seed: int = 0,
    ) -> LoadGen:
        """A load generator of the pool's stream; ``shape``, ``skip``, ``storm``, ``seed`` as its flags."""
        argv = [sys.executable, "-m", "benchmarks.loadgen", "--pool", str(self.pool), "--port", str(port)]
        argv += ["--rate", str(rate), "--shape", shape, "--skip", str(skip), "--storm", str(storm), "--seed", str(seed)]
        argv += ["--duration", str(duration)] if duration is not None else ["--count", str(count)]
        self._seq += 1
        gen = LoadGen(argv, self.env({}), self.logs / f"{self._seq:03d}-loadgen.err")
        self.loadgens.append(gen)
        return gen

    def stop(self, *endpoints: Endpoint) -> None:
        for ep in endpoints:
            ep.service.stop(timeout=15)

    def stop_all(self) -> None:
        for gen in self.loadgens:
            gen.kill()
        self.loadgens.clear()
        for svc in reversed(self.services):
            svc.stop(timeout=15)
        self.services.clear()


class LoadGen:
    """One load generator process: :meth:`sent` blocks until it has written its last frame."""

    def __init__(self, argv: list[str], env: dict[str, str], err_path: Path) -> None:
        self.err_path = err_path
        self._err = open(err_path, "wb")  # noqa: SIM115 - closed in finish()
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self._lines: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        threading.Thread(target=self._read, name="loadgen-stdout", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(b"")

    def _line(self, timeout_s: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            line = b""
        if not line:
            code = self.proc.poll()
            why = f"exited with code {code}" if code is not None else f"said nothing for {timeout_s:.0f}s"
            raise ServiceError(f"load generator {why}; see {self.err_path}")
        return orjson.loads(line)

    def sent(self, timeout_s: float) -> dict[str, Any]:
        return self._line(timeout_s)

    def finish(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait for the receiver to close the connection and the process to exit."""
        try:
            closed = self._line(timeout_s)
            self.proc.wait(timeout_s)
            return closed
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(5)
        if not self._err.closed:
            self._err.close()


def remove_recording(path: Path) -> None:
    """A step's recording gone: the open file (P2 appends, so the next step's starts empty), the files
    it rolled, and any Parquet file still being written."""
    path.unlink(missing_ok=True)
    stem = file_stem(path)
    for entry in closed_files(stem):
        Path(entry.path).unlink(missing_ok=True)
    for part in path.parent.glob(f"{stem.name}.*.parquet.part"):
        part.unlink(missing_ok=True)


def poll_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Call ``check`` until it is true or ``timeout_s`` passes; scrapes that fail count as false."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError, ValueError):
            if check():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
