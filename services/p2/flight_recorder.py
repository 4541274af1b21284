"""The flight recorder: an always-on ring of recent raw lines and the capture state machine around it.

Pure state, no I/O and no event loop: :meth:`FlightRecorder.feed` takes a batch of recorded lines
with the anomalies that trigger a capture, and returns the captures it started, the ones it
completed and the triggers it suppressed. Writing a completed capture is the bundle writer's job.

Arithmetic (the contract the bundle's meta reports):

- The trigger event is the **last pre event**: the pre part is the ring right after the trigger
  event entered it, so it holds ``min(events seen, pre_events)`` lines ending with the trigger.
  In ``events.jsonl`` the trigger event is line ``pre_count`` (1-based).
- The post part is the next ``post_events`` lines after the trigger event.
- At most one capture is active. A trigger while one is active, or less than ``cooldown_s`` after
  the last accepted trigger, is suppressed: counted, and listed in the active capture if there is
  one (with its line number in that capture's ``events.jsonl``).
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from mercurystream.p2.detectors import Anomaly


def new_incident_id(wall_s: float) -> str:
    """``YYYYmmdd_HHMMSS_<8 hex>`` from the trigger's UTC wall time."""
    return f"{datetime.fromtimestamp(wall_s, UTC):%Y%m%d_%H%M%S}_{secrets.token_hex(4)}"


def iso_utc(wall_s: float) -> str:
    """Wall-clock seconds as ISO-8601 UTC with microseconds and a ``Z``."""
    return datetime.fromtimestamp(wall_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Capture:
    """One incident's lines and facts. ``context`` is filled by the owner (counters, configuration)."""

    __slots__ = (
        "anomaly",
        "complete",
        "context",
        "id",
        "post",
        "post_target",
        "pre",
        "suppressed",
        "triggered_at",
    )

    def __init__(self, incident_id: str, anomaly: Anomaly, pre: list[bytes], post_target: int, wall_s: float) -> None:
        self.id = incident_id
        self.anomaly = anomaly
        self.pre = pre
        self.post: list[bytes] = []
        self.post_target = post_target
        self.triggered_at = wall_s
        self.complete = False
        self.suppressed: list[dict[str, Any]] = []
        self.context: dict[str, Any] = {}

    @property
    def type(self) -> str:
        return self.anomaly.type

    @property
    def pre_count(self) -> int:
        return len(self.pre)

    @property
    def post_count(self) -> int:
        return len(self.post)

    @property
    def trigger_line(self) -> int:
        """The trigger event's 1-based line number in ``events.jsonl``: the last pre line."""
        return len(self.pre)

    def lines(self) -> list[bytes]:
        return self.pre + self.post

    def __repr__(self) -> str:
        return (
            f"Capture({self.id!r}, {self.type!r}, pre={self.pre_count}, post={self.post_count}/"
            f"{self.post_target}, complete={self.complete})"
        )


class FeedResult:
    """What one :meth:`FlightRecorder.feed` did. A capture may be both started and completed."""

    __slots__ = ("completed", "started", "suppressed")

    def __init__(self) -> None:
        self.started: list[Capture] = []
        self.completed: list[Capture] = []
        self.suppressed: list[Anomaly] = []


class FlightRecorder:
    """Ring of the last ``pre_events`` lines plus at most one capture of ``post_events`` more.

    ``clock`` (monotonic seconds) paces the cooldown and ``wall_clock`` stamps triggers; both are
    read once per batch that has triggers, never per event.
    """

    def __init__(
        self,
        pre_events: int = 5000,
        post_events: int = 2000,
        cooldown_s: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        new_id: Callable[[float], str] = new_incident_id,
    ) -> None:
        if pre_events <= 0 or post_events < 0 or cooldown_s < 0:
            raise ValueError("pre_events must be > 0, post_events and cooldown_s >= 0")
        self.pre_events = pre_events
        self.post_events = post_events
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._wall = wall_clock
        self._new_id = new_id
        self._ring: deque[bytes] = deque(maxlen=pre_events)
        self._active: Capture | None = None
        self._last_trigger: float | None = None
        self.seen = 0
        self.started = 0
        self.suppressed = 0

    @property
    def active(self) -> Capture | None:
        return self._active

    @property
    def ring_len(self) -> int:
        return len(self._ring)

    def feed(self, lines: Sequence[bytes], triggers: Sequence[Anomaly] = ()) -> FeedResult:
        """Record a batch. ``triggers`` hold indices into ``lines`` and must be sorted by index."""
        res = FeedResult()
        n = len(lines)
        if not triggers:
            self._advance(lines, 0, n, res)
            return res
        now = self._clock()
        wall = self._wall()
        pos = 0
        for a in triggers:
            i = a.index
            if not 0 <= i < n or i + 1 < pos:
                raise ValueError(f"trigger index {i} out of order or outside the batch of {n}")
            if i >= pos:
                self._advance(lines, pos, i + 1, res)
                pos = i + 1
            self._trigger(a, now, wall, res)
        self._advance(lines, pos, n, res)
        return res

    def _advance(self, lines: Sequence[bytes], start: int, end: int, res: FeedResult) -> None:
        if start >= end:
            return
        chunk = lines if start == 0 and end == len(lines) else lines[start:end]
        self.seen += end - start
        cap = self._active
        if cap is not None:
            need = cap.post_target - len(cap.post)
            cap.post.extend(chunk if end - start <= need else chunk[:need])
            if len(cap.post) >= cap.post_target:
                self._complete(cap, res)
        self._ring.extend(chunk)

    def _trigger(self, anomaly: Anomaly, now: float, wall: float, res: FeedResult) -> None:
        cap = self._active
        if cap is not None or (self._last_trigger is not None and now - self._last_trigger < self.cooldown_s):
            self.suppressed += 1
            res.suppressed.append(anomaly)
            if cap is not None:
                cap.suppressed.append(
                    {
                        "type": anomaly.type,
                        "product_id": anomaly.product_id,
                        "line": len(cap.pre) + len(cap.post),
                        "at": iso_utc(wall),
                        "detail": anomaly.detail,
                    }
                )
            return
        self._last_trigger = now
        self.started += 1
        cap = Capture(self._new_id(wall), anomaly, list(self._ring), self.post_events, wall)
        res.started.append(cap)
        if self.post_events == 0:
            self._complete(cap, res)
        else:
            self._active = cap

    def _complete(self, cap: Capture, res: FeedResult) -> None:
        cap.complete = True
        self._active = None
        res.completed.append(cap)

    def finalize(self) -> Capture | None:
        """At shutdown: the active capture with what it has, marked incomplete, or ``None``."""
        cap = self._active
        if cap is None:
            return None
        self._active = None
        cap.complete = False
        return cap
