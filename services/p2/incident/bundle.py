"""Incident bundles on disk, written atomically by one thread off the event loop.

A bundle is ``INCIDENTS_DIR/<YYYYmmdd_HHMMSS>_<8 hex>/`` with ``events.jsonl``, ``meta.json``,
``report.md`` and, when a renderer is installed, ``chart.png``. It is assembled in a temporary
directory inside ``INCIDENTS_DIR`` (a dot name, which readers skip) and renamed into place, so a
crash leaves at worst a stale temporary directory, never a half bundle under its final name. The
writer holds an ``flock`` on its temporary directory while it fills it, and :class:`BundleWriter`
removes at start the ``.tmp_*`` directories nobody holds: those a killed P2 left behind. Another P2
writing into the same directory (the demo's two do) keeps its own.

The chart runs as ``python -m mercurystream.p2.incident.chart <dir>`` in a subprocess: P2 never
imports matplotlib, which would cost tens of MB of resident memory for one picture per incident.
:class:`BundleWriter` draws it *after* the bundle is in place, and only when its ``spare`` gate says
P2 has CPU to spare: incidents tend to fire when P2 is near its limit, and a CPU-second of matplotlib
then made P2 fall further behind. Until the chart is drawn, ``report.md`` is the summary from
``meta.json`` and says the chart and the evidence are pending (parsing every captured line for the
evidence is tens of milliseconds of the GIL, taken from a loop that is busiest when incidents
fire); the chart lands by temporary file and rename, then the full report replaces the summary.
The same thread appends drift samples, so P2 has one writer thread for all forensic output.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.util
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from loguru import logger

from mercurystream.p2.detectors import LATENCY_SPIKE, describe
from mercurystream.p2.flight_recorder import MANUAL, Capture, iso_utc
from mercurystream.p2.incident.report import (
    CHART_FAILED,
    CHART_FILE,
    CHART_NOT_DRAWN,
    CHART_PENDING,
    EVENTS_FILE,
    META_FILE,
    REPORT_FILE,
    ReportError,
    meta_json,
    render_report,
    write_report,
)
from mercurystream.shared.clip import clip
from mercurystream.shared.event import latency_ms
from mercurystream.shared.logger import LogSampler
from mercurystream.shared.recording import cut_torn_line
from mercurystream.shared.schema import BACKFILL, control_of

CHART_MODULE = "mercurystream.p2.incident.chart"
TMP_PREFIX = ".tmp_"

ChartCommand = Callable[[Path], list[str]]


def chart_command(bundle_dir: Path) -> list[str]:
    """The subprocess that renders ``chart.png`` into ``bundle_dir``."""
    return [sys.executable, "-m", CHART_MODULE, str(bundle_dir)]


def chart_available() -> bool:
    """Whether the chart module is installed, without importing it (or matplotlib)."""
    try:
        return importlib.util.find_spec(CHART_MODULE) is not None
    except (ImportError, ValueError):
        return False


def affected_symbols(capture: Capture) -> list[str]:
    """The trigger's product and those of triggers suppressed into the capture; for a latency spike
    (which has no product), the products of the captured events above the threshold, else all.

    Each is clipped to ``shared.clip.LABEL_MAX`` characters: a producer's 900 KB product id (drift,
    but still in the ring) would otherwise be copied into ``meta.json`` and the report whole.
    """
    return sorted({clip(s) for s in _affected(capture)})


def _affected(capture: Capture) -> list[str]:
    symbols = {capture.anomaly.product_id, *capture.suppressed_products}
    symbols.discard(None)
    if capture.type == MANUAL:
        return _products(capture.lines())
    if capture.type == LATENCY_SPIKE:
        thr = capture.anomaly.detail.get("threshold_ms", 0.0)
        every: set[str] = set()
        for line in capture.lines():
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(event, dict) or not isinstance(event.get("product_id"), str):
                continue
            every.add(event["product_id"])
            lat = latency_ms(event)
            if lat is not None and lat > thr:
                symbols.add(event["product_id"])
        if not symbols:
            symbols = every
    return sorted(str(s) for s in symbols)


def _products(lines: list[bytes]) -> list[str]:
    """Every product id among the lines, sorted (a manual dump has no trigger product)."""
    seen: set[str] = set()
    for line in lines:
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("product_id"), str):
            seen.add(event["product_id"])
    return sorted(seen)


_GAP_MARKS = (b'"gap"', b'"backfill"', b'"backfilled"')
MAX_GAPS = 100
"""Gaps listed in one bundle's meta at most (each announced gap is one small entry)."""


def gaps_of(lines: list[bytes]) -> list[dict[str, Any]]:
    """The gaps P1 announced in these lines, each with what its backfill recovered, in order of announcement.

    ``{product_id, first_missing, last_missing, source, backfilled, recovered, unrecoverable, status}``:
    ``backfilled`` counts the bundle's trades marked backfilled with an id in the range; ``recovered``
    and ``unrecoverable`` are from P1's ``backfill`` result (``None`` until it arrived), and ``status``
    is ``recovered`` (every id), ``partial``, ``unrecovered`` (none) or ``pending`` (no result in the
    bundle: the capture ended first, or backfill is off). Only lines naming one of the marks are parsed.
    """
    gaps: dict[tuple[str, int, int], dict[str, Any]] = {}
    trades: list[tuple[str, int]] = []
    for line in lines:
        if not any(m in line for m in _GAP_MARKS):
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        if event.get("backfilled") is True and isinstance(event.get("product_id"), str):
            if type(event.get("trade_id")) is int:
                trades.append((event["product_id"], event["trade_id"]))
            continue
        c = control_of(event)
        if c is None:
            continue
        key = (c["product_id"], c["first_missing"], c["last_missing"])
        entry = gaps.get(key)
        if entry is None:
            if len(gaps) >= MAX_GAPS:
                continue
            entry = gaps[key] = {
                "product_id": key[0],
                "first_missing": key[1],
                "last_missing": key[2],
                "source": c["source"],
                "backfilled": 0,
                "recovered": None,
                "unrecoverable": None,
                "status": "pending",
            }
        if c["type"] == BACKFILL:
            entry["recovered"] = c["recovered"]
            entry["unrecoverable"] = c["unrecoverable"]
            size = key[2] - key[1] + 1
            entry["status"] = (
                "recovered" if c["recovered"] == size else "unrecovered" if c["recovered"] == 0 else "partial"
            )
    for pid, tid in trades:
        for (gpid, lo, hi), entry in gaps.items():
            if gpid == pid and lo <= tid <= hi:
                entry["backfilled"] += 1
                break
    return list(gaps.values())


def build_meta(capture: Capture) -> dict[str, Any]:
    """``meta.json``: everything needed to understand and reproduce the incident without P2."""
    a = capture.anomaly
    a.resolve()
    ctx = capture.context
    return {
        "incident_id": capture.id,
        "type": a.type,
        "reason": capture.reason if capture.reason is not None else describe(a),
        "detail": a.detail,
        "product_id": a.product_id,
        "triggered_at": iso_utc(capture.triggered_at),
        "affected_symbols": affected_symbols(capture),
        "total_events": capture.pre_count + capture.post_count,
        "pre_events": capture.pre_count,
        "pre_bound": capture.pre_bound,
        "post_events": capture.post_count,
        "post_target": capture.post_target,
        "trigger_line": capture.trigger_line,
        "complete": capture.complete,
        "counters_at_trigger": ctx.get("counters_at_trigger", {}),
        "config": ctx.get("config", {}),
        "suppressed_triggers": capture.suppressed,
        "suppressed_unlisted": capture.suppressed_unlisted,
        "gaps": gaps_of(capture.lines()),
        **_nats_of(capture),
    }


def _nats_of(capture: Capture) -> dict[str, Any]:
    """``{"nats": {...}}`` when the capture's lines came from the JetStream log (``p2.log_spans``), with
    every product among them: the ``--products`` that replays the shard's share of that range."""
    nats = capture.context.get("nats")
    if not nats:
        return {}
    return {"nats": {**nats, "products": _products(capture.lines())}}


def write_bundle(
    incidents_dir: Path,
    capture: Capture,
    *,
    chart: ChartCommand | None = None,
    chart_timeout_s: float = 20.0,
    chart_note: str | None = None,
    summary_only: bool = False,
) -> Path:
    """Write one bundle atomically and return its final path; raises ``OSError`` (nothing left behind).

    With ``chart``, the chart is drawn before the rename (synchronously: for tools and tests, not for
    P2's writer thread). Without, ``chart_note`` is what the report says about the missing chart, and
    ``summary_only`` leaves the report's evidence to the rewrite that comes with the chart
    (:func:`render_report`).
    """
    incidents_dir.mkdir(parents=True, exist_ok=True)
    final = incidents_dir / capture.id
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{capture.id}_", dir=incidents_dir))
    lock = None
    try:
        lock = _lock_dir(tmp)
        os.chmod(tmp, 0o755)
        (tmp / EVENTS_FILE).write_bytes(_jsonl(capture.lines()))
        (tmp / META_FILE).write_bytes(meta_json(build_meta(capture)))
        replay_path = str(final / EVENTS_FILE)
        if chart is not None and not run_chart(chart, tmp, chart_timeout_s):
            (tmp / CHART_FILE).unlink(missing_ok=True)  # possibly half written by a renderer that failed
            chart_note = CHART_FAILED
        report = render_report(tmp, replay_path, chart_note=chart_note, summary_only=summary_only and chart is None)
        (tmp / REPORT_FILE).write_text(report, encoding="utf-8")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)
    return final


def _lock_dir(path: Path) -> int | None:
    """An exclusive ``flock`` on a directory, held by the returned descriptor until it is closed (or
    the process dies); ``None`` if it is already held elsewhere."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_leftovers(incidents_dir: Path) -> tuple[int, list[str]]:
    """Remove the temporary bundle directories (``.tmp_*``, directories only, not symlinks) that no
    writer holds: what a P2 killed mid-write left. Returns how many were removed and why others could
    not be."""
    try:
        entries = list(os.scandir(incidents_dir))
    except FileNotFoundError:
        return 0, []
    except OSError as exc:
        return 0, [f"{incidents_dir}: {exc.strerror or exc}"]
    removed = 0
    failed: list[str] = []
    for entry in entries:
        if not entry.name.startswith(TMP_PREFIX):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            lock = _lock_dir(Path(entry.path))
            if lock is None:
                continue
            try:
                shutil.rmtree(entry.path)
            finally:
                os.close(lock)
        except OSError as exc:
            failed.append(f"{entry.name}: {exc.strerror or exc}")
            continue
        removed += 1
    return removed, failed


def _tree_bytes(path: str) -> int:
    """Bytes of the files under ``path`` (a bundle: a few files, no symlinks followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def prune_bundles(incidents_dir: Path, max_bytes: int, keep: Path | None = None) -> list[str]:
    """Remove the oldest bundles until those left total at most ``max_bytes``; returns the names removed.

    A bundle's name starts with its UTC trigger time, so name order is age order. ``keep`` (the
    bundle just written) is never removed, nor anything but a bundle directory: dot names (a writer's
    temporary directory) and plain files are left alone and not counted.
    """
    try:
        entries = sorted(
            (e for e in os.scandir(incidents_dir) if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)),
            key=lambda e: e.name,
        )
    except OSError:
        return []
    sizes = [_tree_bytes(e.path) for e in entries]
    total = sum(sizes)
    removed: list[str] = []
    for entry, size in zip(entries, sizes, strict=True):
        if total <= max_bytes:
            break
        if keep is not None and entry.name == keep.name:
            continue
        try:
            shutil.rmtree(entry.path)
        except OSError:
            continue
        total -= size
        removed.append(entry.name)
    return removed


def run_chart(chart: ChartCommand, bundle_dir: Path, timeout_s: float) -> bool:
    """Draw ``chart.png`` into ``bundle_dir`` with the renderer subprocess; whether it is there now.
    A renderer that failed or was killed leaves no partial file behind."""
    if _run_chart(chart(bundle_dir), timeout_s) and (bundle_dir / CHART_FILE).is_file():
        return True
    for stray in bundle_dir.glob(f".{CHART_FILE}*.tmp"):
        stray.unlink(missing_ok=True)
    return False


def _jsonl(lines: list[bytes]) -> bytes:
    """The lines as JSONL. A raw CR or LF inside a JSON text can only be insignificant whitespace,
    so it becomes a space: the file keeps one event per line and line numbers stay exact."""
    if not lines:
        return b""
    body = b"\n".join(lines)
    if body.count(b"\n") != len(lines) - 1 or b"\r" in body:
        body = b"\n".join(line.replace(b"\r", b" ").replace(b"\n", b" ") for line in lines)
    return body + b"\n"


def _run_chart(cmd: list[str], timeout_s: float) -> bool:
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False, preexec_fn=_lower_priority)
    except subprocess.TimeoutExpired:
        logger.warning(f"incident chart: no result within {timeout_s:g} s; bundle written without it")
        return False
    except OSError as exc:
        logger.warning(f"incident chart: cannot run the renderer ({exc}); bundle written without it")
        return False
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        logger.warning(f"incident chart: renderer exited {proc.returncode}: {tail[0][:300]}")
        return False
    return True


_POLL = ("poll", None)
"""What the writer thread does when no job came within a poll interval: look at pending charts."""


class BundleWriter:
    """One daemon thread that writes bundles and appends drift samples, fed from the event loop.

    ``submit`` and ``append_drift`` never block. Failures are logged and counted
    (``incident_write_errors_total``) and the pipeline goes on. At most ``max_pending`` bundles
    wait at once; one more is counted as a write error rather than held in memory. After each bundle,
    the oldest bundles are removed while the directory's bundles exceed ``max_dir_bytes``
    (``INCIDENTS_MAX_BYTES``): incidents come at most one a cooldown, but a feed that keeps
    misbehaving would otherwise fill the disk with them. The drift sample file, likewise, moves to
    ``<file>.1`` (replacing the one before) when an append would take it past ``drift_max_bytes``.

    Charts are drawn after their bundle is in place, one at a time, when ``spare()`` says P2 has CPU
    to spare (polled every ``chart_poll_s`` while charts wait; ``None`` draws at once). At most
    ``max_pending_charts`` wait; beyond that, and for everything still waiting at :meth:`stop`, the
    report is rewritten to say the chart was not drawn (``mercury-report`` draws it later).
    """

    def __init__(
        self,
        incidents_dir: Path,
        metrics: Any = None,
        *,
        drift_file: Path | None = None,
        chart: bool | ChartCommand = True,
        chart_timeout_s: float = 20.0,
        max_pending: int = 16,
        spare: Callable[[], bool] | None = None,
        chart_poll_s: float = 0.25,
        max_pending_charts: int = 32,
        max_dir_bytes: int | None = None,
        drift_max_bytes: int | None = None,
    ) -> None:
        self.incidents_dir = Path(incidents_dir)
        self.drift_max_bytes = drift_max_bytes
        self.drift_rotations = 0
        """Times the drift file was moved to ``<file>.1`` to stay under ``drift_max_bytes``."""
        self.max_dir_bytes = max_dir_bytes
        self.pruned = 0
        """Bundles removed, oldest first, to keep the directory under ``max_dir_bytes``."""
        self.drift_file = Path(drift_file) if drift_file is not None else None
        self._metrics = metrics
        self._chart_opt = chart
        self._chart: ChartCommand | None = None
        self.chart_timeout_s = chart_timeout_s
        self.max_pending = max_pending
        self._spare = spare
        self.chart_poll_s = chart_poll_s
        self.max_pending_charts = max_pending_charts
        self._queue: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._cv = threading.Condition()
        self._pending = 0
        self._pending_bundles = 0
        self._charts: deque[Path] = deque()
        self._drawing = False
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._drift_fd: int | None = None
        self._drift_cut: tuple[int, int, int, int] | None = None
        self._log = LogSampler()
        self.written = 0
        self.written_by_type: dict[str, int] = {}
        self.errors = 0
        self.last_path: Path | None = None
        self.drift_written = 0
        self.drift_errors = 0
        self.charts_drawn = 0
        self.charts_failed = 0
        self.charts_not_drawn = 0
        self.leftovers_removed = 0
        """Unfinished bundle directories of an earlier, killed P2 removed at the first start."""
        self._swept = False

    def start(self) -> None:
        if self._thread is not None:
            return
        if not self._swept:
            self._swept = True
            self._sweep()
        self._stopping = False
        if self._chart_opt is True:
            self._chart = chart_command if chart_available() else None
            if self._chart is None:
                logger.info(f"incident chart: {CHART_MODULE} not installed; bundles are written without chart.png")
        elif callable(self._chart_opt):
            self._chart = self._chart_opt
        self._thread = threading.Thread(target=self._run, name="incident-writer", daemon=True)
        self._thread.start()

    def _sweep(self) -> None:
        removed, failed = remove_leftovers(self.incidents_dir)
        self.leftovers_removed = removed
        if removed:
            logger.warning(
                f"incident writer: removed {removed} unfinished bundle directories ({TMP_PREFIX}*) "
                f"left in {self.incidents_dir} by a P2 that stopped mid-write"
            )
        if failed:
            logger.warning(f"incident writer: could not remove {len(failed)} {TMP_PREFIX}* directories: {failed[:3]}")

    def submit(self, capture: Capture) -> bool:
        """Queue a completed (or finalized) capture; ``False`` if it was refused and counted."""
        if self._pending_bundles >= self.max_pending:
            self._failed(capture, "too many bundles waiting to be written")
            return False
        self.start()
        with self._cv:
            self._pending += 1
            self._pending_bundles += 1
        self._queue.put(("bundle", capture))
        return True

    def append_drift(self, lines: list[bytes]) -> None:
        """Queue drift sample lines (without newlines) for the sample file."""
        if not lines or self.drift_file is None:
            return
        self.start()
        with self._cv:
            self._pending += 1
        self._queue.put(("drift", lines))

    def accepts(self) -> bool:
        """Whether :meth:`submit` would take one more bundle now."""
        return self._pending_bundles < self.max_pending

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def charts_pending(self) -> int:
        """Bundles in place whose chart is still to be drawn (including one being drawn)."""
        return len(self._charts) + self._drawing

    def wait_idle(self, timeout: float) -> bool:
        """Block until everything queued so far is written (charts aside); ``False`` on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: self._pending == 0, timeout)

    def wait_charts(self, timeout: float) -> bool:
        """Block until no chart waits to be drawn; ``False`` on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: self._pending == 0 and not self.charts_pending, timeout)

    def stop(self, timeout: float = 10.0) -> bool:
        """Write what is queued (up to ``timeout``), then end the thread; ``False`` if it had to be left.

        Shutdown is bounded: bundles still queued, and those whose chart was waiting for spare CPU,
        are left without a chart, and their reports say so.
        """
        thread = self._thread
        if thread is None:
            return True
        self._stopping = True
        self._queue.put(None)
        thread.join(timeout)
        if thread.is_alive():
            logger.warning(f"incident writer: {self._pending} writes still pending after {timeout:g} s")
            return False
        self._thread = None
        return True

    def _run(self) -> None:
        get = self._queue.get
        next_check = 0.0
        while True:
            if self._charts:
                try:
                    job = get(timeout=max(0.0, next_check - time.monotonic()))
                except queue.Empty:
                    job = _POLL
            else:
                job = get()
            if job is None:
                break
            kind, payload = job
            try:
                if kind == "bundle":
                    self._write(payload)
                elif kind == "drift":
                    self._append(payload)
            except Exception:
                logger.exception(f"incident writer: unexpected failure on a {kind} job")
            finally:
                if kind != "poll":
                    with self._cv:
                        self._pending -= 1
                        if kind == "bundle":
                            self._pending_bundles -= 1
                        self._cv.notify_all()
            # Checked after any job, not only on a quiet queue: a stream of drift samples must not starve charts.
            if self._charts and not self._stopping and time.monotonic() >= next_check:
                next_check = time.monotonic() + self.chart_poll_s
                if self._is_spare():
                    self._draw_next()
        while self._charts:
            self._give_up(self._charts.popleft(), CHART_NOT_DRAWN)
        if self._drift_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._drift_fd)
            self._drift_fd = None

    def _write(self, capture: Capture) -> None:
        note = None
        if self._chart is not None:
            note = CHART_NOT_DRAWN if self._stopping else CHART_PENDING
        try:
            path = write_bundle(self.incidents_dir, capture, chart_note=note, summary_only=note == CHART_PENDING)
        except Exception as exc:
            self._failed(capture, str(exc))
            return
        self.written += 1
        self.written_by_type[capture.type] = self.written_by_type.get(capture.type, 0) + 1
        self.last_path = path
        if self._metrics is not None:
            self._metrics.incidents_total.labels(type=capture.type).inc()
        if self.max_dir_bytes is not None:
            self._prune(path)
        state = "complete" if capture.complete else "incomplete"
        logger.info(
            f"incident {capture.id} ({capture.type}, {state}): {capture.pre_count} pre + "
            f"{capture.post_count} post events -> {path}"
        )
        if note == CHART_NOT_DRAWN:
            self.charts_not_drawn += 1
        elif note == CHART_PENDING:
            if len(self._charts) >= self.max_pending_charts:
                self._give_up(self._charts.popleft(), CHART_NOT_DRAWN)
            self._charts.append(path)

    def _prune(self, written: Path) -> None:
        removed = prune_bundles(self.incidents_dir, self.max_dir_bytes or 0, keep=written)
        if not removed:
            return
        self.pruned += len(removed)
        if self._metrics is not None:
            self._metrics.incidents_pruned_total.inc(len(removed))
        if self._log.should_log("pruned"):
            logger.warning(
                f"incident writer: removed {len(removed)} oldest bundles (first {removed[0]}) to keep "
                f"{self.incidents_dir} under INCIDENTS_MAX_BYTES={self.max_dir_bytes}"
            )

    def _draw_next(self) -> None:
        self._drawing = True  # before the pop, so charts_pending never reads 0 while one is drawn
        path = self._charts.popleft()
        try:
            drawn = run_chart(self._chart, path, self.chart_timeout_s)
            try:
                write_report(path, str(path / EVENTS_FILE), chart_note=None if drawn else CHART_FAILED)
            except (OSError, ReportError) as exc:
                logger.warning(f"incident chart: {path}: report not updated ({exc})")
        finally:
            with self._cv:
                self._drawing = False
                self._cv.notify_all()
        if drawn:
            self.charts_drawn += 1
            logger.info(f"incident chart: {path / CHART_FILE}")
        else:
            self.charts_failed += 1

    def _is_spare(self) -> bool:
        if self._spare is None:
            return True
        try:
            return self._spare()
        except Exception:
            if self._log.should_log("chart_gate"):
                logger.exception("incident chart: the spare-CPU check failed; charts wait")
            return False

    def _give_up(self, path: Path, note: str) -> None:
        self.charts_not_drawn += 1
        try:
            write_report(path, str(path / EVENTS_FILE), chart_note=note)
        except (OSError, ReportError) as exc:
            logger.warning(f"incident chart: {path}: report not updated ({exc})")
        with self._cv:
            self._cv.notify_all()

    def _failed(self, capture: Capture, why: str) -> None:
        with self._cv:
            self.errors += 1
        if self._metrics is not None:
            self._metrics.incident_write_errors_total.inc()
        logger.error(f"incident {capture.id} ({capture.type}) not written: {why}")

    def _append(self, lines: list[bytes]) -> None:
        """Append whole lines or none: a write that fails part way is cut back to where it started, so
        the file never ends in a torn line, and the lines it held are counted as dropped. Each append
        holds an ``flock`` on the file, as another P2 may append to the same one (the demo's two do)."""
        data = b"\n".join(lines) + b"\n"
        try:
            fd = self._drift_locked(len(data))
        except OSError as exc:
            self._drift_dropped(lines, exc)
            return
        try:
            start = self._cut_torn_tail(fd)
            try:
                _write_all(fd, data)
            except OSError as exc:
                self._drift_dropped(lines, exc)
                self._cut_back(fd, start)
                return
        except OSError as exc:
            self._drift_dropped(lines, exc)
            return
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            if self._drift_fd is None:
                os.close(fd)
        self.drift_written += len(lines)
        if self._metrics is not None:
            self._metrics.drift_samples_total.inc(len(lines))

    def _drift_locked(self, incoming: int) -> int:
        """The drift file's descriptor, locked, with room for ``incoming`` more bytes (:meth:`_has_room`)."""
        for _ in range(3):
            if self._drift_fd is None:
                self.drift_file.parent.mkdir(parents=True, exist_ok=True)
                self._drift_fd = os.open(self.drift_file, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            fd = self._drift_fd
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if self._has_room(fd, incoming):
                    return fd
            except OSError:
                self._drift_fd = None
                os.close(fd)
                raise
            self._drift_fd = None
            os.close(fd)
        raise OSError(errno.EAGAIN, "the drift sample file kept being replaced")

    def _has_room(self, fd: int, incoming: int) -> bool:
        """Whether ``fd`` (locked) is still the file at the path and takes ``incoming`` bytes under
        ``drift_max_bytes``. A full one is moved to ``<file>.1`` here; either way ``False`` reopens
        the path (another P2 sharing the file may have moved it)."""
        st = os.fstat(fd)
        try:
            at_path = os.stat(self.drift_file)
        except FileNotFoundError:
            return False
        if (at_path.st_dev, at_path.st_ino) != (st.st_dev, st.st_ino):
            return False
        cap = self.drift_max_bytes
        if cap is None or not st.st_size or st.st_size + incoming <= cap:
            return True
        os.replace(self.drift_file, f"{self.drift_file}.1")
        self.drift_rotations += 1
        return False

    def _drift_dropped(self, lines: list[bytes], exc: OSError) -> None:
        """Count lines lost to ``exc`` and let the next append reopen the file (it may have been replaced)."""
        self.drift_errors += len(lines)
        reason = errno.errorcode.get(exc.errno or 0, "error").lower()
        if self._metrics is not None:
            self._metrics.drift_samples_dropped_total.labels(reason=reason).inc(len(lines))
        self._log.warning(
            "drift_sample_write", f"drift samples not written to {self.drift_file} ({len(lines)} lost): {exc}"
        )
        self._drift_fd = None

    def _cut_back(self, fd: int, size: int) -> None:
        """Truncate to ``size``; if that fails too, the next append does it, unless the file changed."""
        try:
            _os_ftruncate(fd, size)
        except OSError as exc:
            with contextlib.suppress(OSError):
                st = os.fstat(fd)
                self._drift_cut = (st.st_dev, st.st_ino, st.st_size, size)
            logger.error(f"drift samples: {self.drift_file} may end in a failed write ({exc}); the next append cuts it")

    def _cut_torn_tail(self, fd: int) -> int:
        """The file's size once what a failed write left is removed: back to where that write started
        if the file is as it left it, else a last line without its newline (a killed writer's). The
        torn bytes are logged, since they are no whole sample."""
        st = os.fstat(fd)
        size = st.st_size
        pending, self._drift_cut = self._drift_cut, None
        if pending is not None and pending[:3] == (st.st_dev, st.st_ino, size):
            _os_ftruncate(fd, pending[3])
            logger.warning(
                f"drift samples: cut the {size - pending[3]} bytes of the failed write from {self.drift_file}"
            )
            return pending[3]
        end, cut = cut_torn_line(fd, truncate=_os_ftruncate)
        if cut:
            logger.warning(f"drift samples: cut {cut} bytes of a torn last line from {self.drift_file}")
        return end


_os_write = os.write
_os_ftruncate = os.ftruncate


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written: a full disk first writes short, then fails."""
    view = memoryview(data)
    while view:
        view = view[_os_write(fd, view) :]


def _lower_priority() -> None:
    """Chart rendering yields the CPU to the pipeline: an incident often means P2 is already behind."""
    os.nice(10)
