"""The forensics consumer: detectors → anomaly metrics → flight recorder → incident bundles.

All the logic is in plain classes (:mod:`detectors`, :mod:`flight_recorder`, :mod:`incident.bundle`);
this shell wires them per batch: one wall-clock read, one detector pass, metric increments per type
per batch, one recorder feed. Disk writes (bundles, drift samples) happen on the writer thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from mercurystream.p2.batch import Batch
from mercurystream.p2.bus import Bus
from mercurystream.p2.config import P2Settings
from mercurystream.p2.consumer import Consumer
from mercurystream.p2.detectors import (
    ANOMALY_TYPES,
    DUPLICATE,
    LATENCY_SPIKE,
    OUT_OF_ORDER,
    SCHEMA_DRIFT,
    SEQUENCE_GAP,
    TRIGGER_TYPES,
    Detectors,
    Findings,
)
from mercurystream.p2.flight_recorder import MANUAL, Capture, DumpRefused, FlightRecorder, iso_utc
from mercurystream.p2.incident.bundle import BundleWriter
from mercurystream.p2.incident.spare import SpareCpu
from mercurystream.p2.log_spans import LogSpans
from mercurystream.p2.metrics import P2Metrics
from mercurystream.shared.schema import BACKFILL, GAP

GAP_SOURCES = ("heartbeat", "trade_id")
"""How P1 finds a gap (``p1/gaps.py``); any other source is counted as ``other``, so the label stays bounded."""

CONFIG_KEYS = (
    "LATENCY_SPIKE_THRESHOLD_MS",
    "LATENCY_BUFFER_SIZE",
    "LATENCY_EVAL_EVERY",
    "LATENCY_SPIKE_CONSECUTIVE",
    "DUPLICATE_LRU_MAX",
    "GAP_REORDER_WINDOW",
    "FLIGHT_PRE_EVENTS",
    "FLIGHT_RING_BYTES",
    "FLIGHT_POST_EVENTS",
    "FLIGHT_COOLDOWN_S",
    "FLIGHT_MAX_AGE_S",
    "INCIDENTS_DIR",
    "DRIFT_SAMPLE_FILE",
    "DRIFT_SAMPLES_PER_MIN",
)
"""The settings in force that a bundle's meta.json records."""


class ForensicsConsumer(Consumer):
    """Detects anomalies on every event and captures incidents around the triggering ones."""

    name = "forensics"
    label = "FORENSICS"

    def __init__(
        self,
        bus: Bus,
        settings: P2Settings,
        metrics: P2Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        chart: bool = True,
        close_timeout_s: float = 30.0,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        """``busy`` (optional, called from the writer thread) holds incident charts back while it
        says P2 is loaded, on top of P2's own CPU share (:class:`SpareCpu`)."""
        super().__init__(bus, settings.BUS_QUEUE_EVENTS)
        self.settings = settings
        self.metrics = metrics
        self._wall = wall_clock
        self.close_timeout_s = close_timeout_s
        self.detectors = Detectors.from_settings(settings)
        self.recorder: FlightRecorder | None = None
        if settings.FLIGHT_RECORDER:
            self.recorder = FlightRecorder(
                settings.FLIGHT_PRE_EVENTS,
                settings.FLIGHT_POST_EVENTS,
                settings.FLIGHT_COOLDOWN_S,
                clock=clock,
                wall_clock=wall_clock,
                max_age_s=settings.FLIGHT_MAX_AGE_S,
                max_bytes=settings.FLIGHT_RING_BYTES,
            )
        self.spans = LogSpans(settings.FLIGHT_PRE_EVENTS + settings.FLIGHT_POST_EVENTS + 1)
        self._nats_url = getattr(settings, "NATS_URL", None)
        chart = chart and settings.INCIDENT_CHARTS
        self.spare_cpu = SpareCpu(busy=busy)
        self.writer = BundleWriter(
            settings.INCIDENTS_DIR,
            metrics,
            drift_file=settings.DRIFT_SAMPLE_FILE,
            chart=chart,
            spare=self.spare_cpu.spare,
            max_dir_bytes=settings.INCIDENTS_MAX_BYTES,
            drift_max_bytes=settings.DRIFT_SAMPLE_MAX_BYTES,
        )
        self.config = {k: _plain(getattr(settings, k)) for k in CONFIG_KEYS}
        self._anomaly_metric = {t: metrics.anomalies_total.labels(type=t) for t in ANOMALY_TYPES}
        self._suppressed_metric = {t: metrics.incident_triggers_suppressed_total.labels(type=t) for t in TRIGGER_TYPES}
        for t in (*TRIGGER_TYPES, MANUAL):
            metrics.incidents_total.labels(type=t)
        self.captures_started = 0
        self.finalized_incomplete = 0
        self.gap_notices = 0
        self.backfilled = 0
        self.backfill_ids = {"recovered": 0, "unrecoverable": 0}
        self._notice_metric = {s: metrics.gap_notices_total.labels(s) for s in (*GAP_SOURCES, "other")}
        self._backfill_metric = {k: metrics.backfill_ids_total.labels(k) for k in self.backfill_ids}

    @property
    def counts(self) -> dict[str, int]:
        """Exact anomaly counts by type since start."""
        return self.detectors.counts

    @property
    def incidents_written(self) -> int:
        return self.writer.written

    @property
    def last_bundle_path(self) -> Path | None:
        return self.writer.last_path

    def open(self) -> None:
        self.writer.start()

    def handle(self, batch: Batch) -> None:
        if batch.controls or batch.backfilled:
            self._count_gaps(batch)
        wall = self._wall()
        findings = self.detectors.process(batch, wall)
        if self.recorder is None:
            if findings:
                self._count(batch, findings, wall)
            return
        base = self.recorder.seen
        if batch.origin is not None:
            self.spans.add(base, len(batch.lines), batch.origin)
        if not findings:
            completed = self.recorder.feed(batch.lines, (), batch.recv_ts_us).completed
        else:
            completed = self._on_anomalies(batch, findings, wall, base)
        for cap in completed:
            self._submit(cap)

    def _submit(self, cap: Capture) -> None:
        """Hand a capture to the writer, with the stream sequences its lines came from when it read the log."""
        first = cap.context.pop("first_line", None)
        if first is not None:
            nats = self.spans.covering(first, first + cap.pre_count + cap.post_count - 1)
            if nats is not None:
                cap.context["nats"] = {**nats, "url": self._nats_url}
        self.writer.submit(cap)

    def _count_gaps(self, batch: Batch) -> None:
        """P1's gap notices, backfill results and backfilled trades, into their counters."""
        if batch.backfilled:
            self.backfilled += len(batch.backfilled)
            self.metrics.backfilled_total.inc(len(batch.backfilled))
        for _, c in batch.controls:
            if c["type"] == GAP:
                self.gap_notices += 1
                self._notice_metric.get(c["source"], self._notice_metric["other"]).inc()
            elif c["type"] == BACKFILL:
                for k, metric in self._backfill_metric.items():
                    self.backfill_ids[k] += c[k]
                    metric.inc(c[k])

    def _count(self, batch: Batch, findings: Findings, wall: float) -> Findings:
        """Export the anomaly counts and drift samples; return the triggers."""
        per_type = findings.per_type
        samples = []
        if SCHEMA_DRIFT in per_type:
            samples = [
                _drift_sample(detail, batch.lines[i], wall)
                for i, t, _, _, detail, _ in findings.rows
                if t == SCHEMA_DRIFT and detail["sampled"]
            ]
        for t, n in per_type.items():
            self._anomaly_metric[t].inc(n)
        if samples:
            self.writer.append_drift(samples)
        if TRIGGER_TYPES.isdisjoint(per_type):
            return Findings([])
        return findings.triggers()

    def _on_anomalies(self, batch: Batch, findings: Findings, wall: float, base: int) -> list[Capture]:
        """``base`` is the recorder's line number of the batch's first line."""
        triggers = self._count(batch, findings, wall)
        res = self.recorder.feed(batch.lines, triggers, batch.recv_ts_us)
        for cap in res.started:
            self.captures_started += 1
            cap.context = {
                "counters_at_trigger": self._counters_at(findings, cap.anomaly.index),
                "config": self.config,
                "first_line": base + cap.anomaly.index - cap.pre_count + 1,
            }
        if res.suppressed:
            for t, n in Counter(res.suppressed).items():
                self._suppressed_metric[t].inc(n)
        return res.completed

    def _counters_at(self, findings: Findings, index: int) -> dict[str, int]:
        """Counters as they stood right after the trigger event (inclusive), not at the batch's end."""
        now = self.detectors.counts
        per_type = findings.per_type
        at = {t: now[t] - per_type.get(t, 0) for t in ANOMALY_TYPES}
        for i, t, n, *_ in findings.rows:
            if i > index:
                break
            at[t] += n
        return {"processed": self.processed + index + 1, **at, "incidents_written": self.writer.written}

    def status_line(self) -> str:
        c = self.detectors.counts
        return (
            f"processed={self.processed} | drift={c[SCHEMA_DRIFT]} | dup={c[DUPLICATE]} | ooo={c[OUT_OF_ORDER]} "
            f"| gaps={c[SEQUENCE_GAP]} | spikes={c[LATENCY_SPIKE]} | incidents={self.writer.written}"
            + (
                f" | gap_notices={self.gap_notices} backfilled={self.backfilled} "
                f"unrecoverable={self.backfill_ids['unrecoverable']}"
                if self.gap_notices or self.backfilled
                else ""
            )
        )

    def dump(self, reason: str, *, respect_cooldown: bool = False, source: str = MANUAL) -> Capture:
        """Capture the ring as it is now and queue the bundle; raises :class:`DumpRefused`.

        Runs on the loop's thread only (the ring has no lock): ``handle`` never yields mid-batch, so
        a dump sees the ring between two batches. The id is known when this returns; the writer
        thread writes the bundle.
        """
        if self.recorder is None:
            raise DumpRefused("disabled", "the flight recorder is off (FLIGHT_RECORDER=false)")
        if not self.writer.accepts():
            raise DumpRefused("backlog", "too many incident bundles are waiting to be written")
        cap = self.recorder.dump(reason, respect_cooldown=respect_cooldown, source=source)
        cap.context = {
            "counters_at_trigger": {
                "processed": self.processed,
                **self.detectors.counts,
                "incidents_written": self.writer.written,
            },
            "config": self.config,
            "first_line": self.recorder.seen - cap.pre_count,
        }
        self._submit(cap)
        return cap

    def finalize(self) -> Capture | None:
        """Hand an active capture to the writer as it stands, marked incomplete."""
        if self.recorder is None:
            return None
        cap = self.recorder.finalize()
        if cap is not None:
            self.finalized_incomplete += 1
            self._submit(cap)
        return cap

    async def close(self) -> None:
        """On stop (SIGTERM included): finalize the active capture, then wait, bounded, for the writes."""
        self.finalize()
        await asyncio.to_thread(self.writer.stop, self.close_timeout_s)


def _plain(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


DRIFT_SAMPLE_EVENT_BYTES = 4096
"""A drift sample holds the event whole up to this size; a longer one (a 900 KB product id) only its
start, as text, and its size: 100 samples a minute of 1 MB events would fill a disk in days. So does
an event no strict JSON parser reads (``NaN``, a 401-digit number, invalid UTF-8, which P2's lenient
parse accepts): embedded whole, it made the sample file's line unreadable."""


def _strict_json(line: bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


def _drift_sample(d: dict[str, Any], line: bytes, wall: float) -> bytes:
    sample: dict[str, Any] = {
        "time": iso_utc(wall),
        "missing": d["missing"],
        "mismatched": d["mismatched"],
        "unexpected": d["unexpected"],
    }
    if len(line) <= DRIFT_SAMPLE_EVENT_BYTES and _strict_json(line):
        sample["event"] = orjson.Fragment(line)
    else:
        sample["event_start"] = line[:DRIFT_SAMPLE_EVENT_BYTES].decode("utf-8", "replace")
        sample["event_bytes"] = len(line)
    return orjson.dumps(sample)
