"""Every anomaly in an incident bundle, found again by P2's own detectors, for the chart and report.

A bundle keeps the events, not the anomalies, so they are re-detected: :func:`find_marks` runs
:class:`~mercurystream.p2.detectors.Detectors`, built from the ``config`` in ``meta.json`` where it
is usable, over the bundle's events in line order. The detectors start cold at line 1, so the marks
are what P2 would see from the bundle alone: a duplicate whose first copy is older than the bundle,
a reordering against an earlier event, or a latency window that had filled before the capture are
not found again, and the first match of each product only sets the gap baseline.

This module is light (no matplotlib): the report imports :data:`STYLES` to describe the markers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from heapq import nlargest
from typing import Any

from mercurystream.p2.batch import Batch
from mercurystream.p2.detectors import (
    DUPLICATE,
    LATENCY_SPIKE,
    OUT_OF_ORDER,
    SCHEMA_DRIFT,
    SEQUENCE_GAP,
    Detectors,
    LatencySpikeDetector,
    nearest_rank,
)

MARK_TYPES = (DUPLICATE, OUT_OF_ORDER, SEQUENCE_GAP, SCHEMA_DRIFT, LATENCY_SPIKE)
"""The order of the anomaly types in the chart's strip and legend."""


@dataclass(frozen=True, slots=True)
class MarkStyle:
    """How one anomaly type is drawn, and the same in words for the report."""

    color: str
    marker: str
    words: str
    """With its article, to go in a sentence: "an orange diamond"."""


STYLES: dict[str, MarkStyle] = {
    DUPLICATE: MarkStyle("#ff7f0e", "D", "an orange diamond"),
    OUT_OF_ORDER: MarkStyle("#9467bd", "|", "a purple tick"),
    SEQUENCE_GAP: MarkStyle("#8c564b", "v", "a brown downward triangle"),
    SCHEMA_DRIFT: MarkStyle("#e377c2", "s", "a pink square"),
    LATENCY_SPIKE: MarkStyle("#17becf", "^", "a cyan upward triangle"),
}

_SETTINGS: dict[str, tuple[str, str]] = {
    "DUPLICATE_LRU_MAX": ("duplicate_lru_max", "positive"),
    "GAP_REORDER_WINDOW": ("gap_reorder_window", "non_negative"),
    "LATENCY_SPIKE_THRESHOLD_MS": ("latency_threshold_ms", "number"),
    "LATENCY_BUFFER_SIZE": ("latency_buffer_size", "positive"),
    "LATENCY_EVAL_EVERY": ("latency_eval_every", "positive"),
    "LATENCY_SPIKE_CONSECUTIVE": ("latency_consecutive", "positive"),
}
"""meta.json's ``config`` keys (P2's setting names) → :class:`Detectors` keyword and accepted values."""

_MAX_SETTING = 10**9
"""Larger integers are not taken from meta.json: a corrupt value must not size a detector's buffers."""


@dataclass(frozen=True, slots=True)
class Mark:
    """One anomaly at ``line`` of ``events.jsonl``; ``count`` is what it adds to its type's counter
    (the missing ids it confirms for a gap, else 1)."""

    line: int
    product_id: str | None
    count: int


@dataclass
class Marks:
    """The re-detected anomalies by type (every type in :data:`MARK_TYPES` present, in line order)."""

    by_type: dict[str, list[Mark]] = field(default_factory=lambda: {t: [] for t in MARK_TYPES})
    settings: dict[str, Any] = field(default_factory=dict)
    """The detector settings used, by P2's setting names."""
    from_meta: list[str] = field(default_factory=list)
    """Which of ``settings`` came from meta.json (the rest are P2's defaults)."""

    def lines(self, anomaly_type: str) -> list[int]:
        return [m.line for m in self.by_type.get(anomaly_type, ())]

    def counter(self, anomaly_type: str) -> int:
        """What P2's counter for the type would add over the bundle (missing ids for gaps)."""
        return sum(m.count for m in self.by_type.get(anomaly_type, ()))


def _accepts(kind: str, value: object) -> bool:
    if kind == "number":
        return (type(value) is int or type(value) is float) and math.isfinite(value) and value >= 0
    if type(value) is not int or value > _MAX_SETTING:
        return False
    return value > 0 if kind == "positive" else value >= 0


def detector_settings(meta: object) -> tuple[dict[str, Any], list[str]]:
    """:class:`Detectors` keyword arguments from ``meta["config"]``, and the setting names taken from
    it; a missing or unusable value keeps the detector's default."""
    config = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(config, dict):
        return {}, []
    kwargs: dict[str, Any] = {}
    used: list[str] = []
    for name, (kw, kind) in _SETTINGS.items():
        value = config.get(name)
        if _accepts(kind, value):
            kwargs[kw] = value
            used.append(name)
    return kwargs, used


def _settings_of(det: Detectors) -> dict[str, Any]:
    lat = det.latency
    return {
        "DUPLICATE_LRU_MAX": det.duplicate.max_ids,
        "GAP_REORDER_WINDOW": det.sequence_gap.window,
        "LATENCY_SPIKE_THRESHOLD_MS": lat.threshold_ms,
        "LATENCY_BUFFER_SIZE": lat.buffer_size,
        "LATENCY_EVAL_EVERY": lat.eval_every,
        "LATENCY_SPIKE_CONSECUTIVE": lat.consecutive,
    }


def find_marks(events: Iterable[tuple[int, dict[str, Any]]], meta: object = None) -> Marks:
    """Re-detect the anomalies of ``(line, event)`` pairs in line order with P2's detectors.

    ``meta`` is the bundle's ``meta.json`` (anything else means defaults). Lines that are not JSON
    objects are not events to P2 either, so the caller leaves them out; line numbers keep their place.
    """
    kwargs, used = detector_settings(meta)
    try:
        det = Detectors(**kwargs)
    except ValueError:
        det, used = Detectors(), []
    lines: list[int] = []
    dicts: list[dict[str, Any]] = []
    for line, ev in events:
        lines.append(line)
        dicts.append(ev)
    marks = Marks(settings=_settings_of(det), from_meta=used)
    by_type = marks.by_type
    for a in det.process(Batch.of_events(dicts)):
        bucket = by_type.get(a.type)
        if bucket is not None:
            bucket.append(Mark(lines[a.index], a.product_id, a.count))
    return marks


MAX_P99_POINTS = 1000
"""At most this many evaluations are computed for the rolling p99 line (evenly spaced), so an
``LATENCY_EVAL_EVERY`` of 1 over a large bundle stays cheap to draw."""


def window_p99(latencies: list[float], k: int, size: int) -> float:
    """The p99 (nearest rank) of the ``size`` samples ending with the ``k``-th (fewer at the start)."""
    window = latencies[max(0, k - size) : k]
    n = len(window)
    return nlargest(n - nearest_rank(n) + 1, window)[-1]


def rolling_p99(
    lines: list[int], latencies: list[float], settings: dict[str, Any], max_points: int = MAX_P99_POINTS
) -> tuple[list[int], list[float]]:
    """The p99 the latency detector evaluates, at the line of each evaluation: the samples
    :meth:`LatencySpikeDetector.step <mercurystream.p2.detectors.LatencySpikeDetector.step>` evaluates
    when the bundle is replayed into a fresh P2, over the last ``LATENCY_BUFFER_SIZE`` samples
    (fewer at the cold start); only every few evaluations when there are more than ``max_points``.

    ``lines`` and ``latencies`` are the samples in line order, as :func:`find_marks` saw them;
    ``settings`` is :attr:`Marks.settings`.
    """
    every = settings.get("LATENCY_EVAL_EVERY")
    size = settings.get("LATENCY_BUFFER_SIZE")
    threshold = settings.get("LATENCY_SPIKE_THRESHOLD_MS")
    if type(every) is not int or type(size) is not int or every <= 0 or size <= 0:
        return [], []
    if type(threshold) not in (int, float):
        return [], []
    cadence = LatencySpikeDetector(threshold, size, every, 1)
    step = cadence.step
    evaluated = [k for k, v in enumerate(latencies, 1) if step(v) is not None]
    stride = max(1, math.ceil(len(evaluated) / max(1, max_points)))
    at: list[int] = []
    p99: list[float] = []
    for k in evaluated[::stride]:
        at.append(lines[k - 1])
        p99.append(window_p99(latencies, k, size))
    return at, p99
