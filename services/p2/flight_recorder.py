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
- The ring holds at most ``max_bytes`` bytes of lines (the newest line always stays): past it the
  oldest lines go first, counted in :attr:`FlightRecorder.evicted_bytes_bound`. A capture's post
  part stops at ``max_bytes`` too (it completes early), so a capture holds at most twice the bound.
- With ``max_age_s``, the ring also forgets lines that arrived more than ``max_age_s`` before the
  newest arrival (a batch's ``recv_ts_us``, P2's wall clock) or, for a dump, before the dump.
  ``pre_bound`` says which bound cut a capture's pre part: ``events``, ``bytes``, ``age``, or ``none`` when
  the pre part reaches back to the first line the ring ever saw.
- :meth:`FlightRecorder.dump` captures the ring as it is now (type ``manual``, no post part),
  whether or not a capture is active; it honours the cooldown only when asked to.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import islice
from operator import le
from typing import Any

from mercurystream.p2.detectors import Anomaly, Findings

MANUAL = "manual"
SUPPRESSED_LISTED = 100
"""Triggers suppressed into one capture that it lists in full; past it they are only counted
(``suppressed_unlisted`` in ``meta.json``): an overload fires thousands during one post part."""
SUPPRESSED_PRODUCTS = 1000
"""Products of suppressed triggers a capture keeps for its affected symbols, listed or not."""
"""The type of an on-demand capture (an operator's request, not a detector's trigger)."""

PRE_BOUND_EVENTS = "events"
PRE_BOUND_BYTES = "bytes"
PRE_BOUND_AGE = "age"
PRE_BOUND_NONE = "none"

REFUSED_COOLDOWN = "cooldown"
REFUSED_EMPTY = "empty"


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
        "post_bytes",
        "post_target",
        "pre",
        "pre_bound",
        "reason",
        "suppressed",
        "suppressed_products",
        "suppressed_unlisted",
        "triggered_at",
    )

    def __init__(
        self,
        incident_id: str,
        anomaly: Anomaly,
        pre: list[bytes],
        post_target: int,
        wall_s: float,
        pre_bound: str = PRE_BOUND_NONE,
        reason: str | None = None,
    ) -> None:
        """``reason`` is the operator's for a manual capture; ``None`` lets the anomaly describe itself."""
        self.id = incident_id
        self.anomaly = anomaly
        self.pre = pre
        self.post: list[bytes] = []
        self.post_bytes = 0
        self.post_target = post_target
        self.triggered_at = wall_s
        self.complete = False
        self.suppressed: list[dict[str, Any]] = []
        """The first :data:`SUPPRESSED_LISTED` triggers suppressed into this capture."""
        self.suppressed_unlisted = 0
        self.suppressed_products: set[str] = set()
        self.context: dict[str, Any] = {}
        self.pre_bound = pre_bound
        self.reason = reason

    @property
    def type(self) -> str:
        return self.anomaly.type

    @property
    def pre_count(self) -> int:
        return len(self.pre)

    def suppress(self, anomaly: Anomaly, wall_s: float) -> None:
        """A trigger suppressed into this capture: listed while under :data:`SUPPRESSED_LISTED`, else counted."""
        pid = anomaly.product_id
        if pid is not None and len(self.suppressed_products) < SUPPRESSED_PRODUCTS:
            self.suppressed_products.add(pid)
        if len(self.suppressed) >= SUPPRESSED_LISTED:
            self.suppressed_unlisted += 1
            return
        self.suppressed.append(
            {
                "type": anomaly.type,
                "product_id": pid,
                "line": len(self.pre) + len(self.post),
                "at": iso_utc(wall_s),
                "detail": anomaly.detail,
            }
        )

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
        self.suppressed: list[str] = []
        """The type of each trigger suppressed, in order."""


class DumpRefused(Exception):
    """A dump that was not taken: ``reason`` is a short label for metrics, ``str()`` one line for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class FlightRecorder:
    """Ring of the last ``pre_events`` lines (and, with ``max_age_s``, of the last ``max_age_s``
    seconds of arrivals) plus at most one capture of ``post_events`` more.

    ``clock`` (monotonic seconds) paces the cooldown and ``wall_clock`` stamps triggers; both are
    read once per batch that has triggers, never per event. The age bound keeps one
    ``[arrival_us, lines]`` span per arrival, not a stamp per line.
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
        max_age_s: float = 0.0,
        max_bytes: int = 4 << 20,
    ) -> None:
        """``max_age_s`` 0 leaves the ring bounded by ``pre_events`` and ``max_bytes`` alone."""
        if pre_events <= 0 or post_events < 0 or cooldown_s < 0 or max_age_s < 0 or max_bytes <= 0:
            raise ValueError("pre_events and max_bytes must be > 0, post_events, cooldown_s and max_age_s >= 0")
        self.max_bytes = max_bytes
        self._ring_bytes = 0
        self.evicted_bytes_bound = 0
        """Lines the byte bound removed from the ring (oldest first)."""
        self.post_cut_bytes = 0
        """Captures whose post part the byte bound completed before ``post_events`` lines."""
        self.pre_events = pre_events
        self.post_events = post_events
        self.cooldown_s = cooldown_s
        self.max_age_s = max_age_s
        self._max_age_us = round(max_age_s * 1_000_000)
        self._spans: deque[list[int]] | None = deque() if max_age_s > 0 else None
        self._span_lines = 0
        self._arrival_us = 0
        self._cut = PRE_BOUND_NONE
        """Which bound removed the line just before the ring's oldest."""
        self._last_capture: float | None = None
        self._clock = clock
        self._wall = wall_clock
        self._new_id = new_id
        self._ring: deque[bytes] = deque(maxlen=pre_events)
        """Its ``maxlen`` forgets the oldest line as each new one enters, in C."""
        self._active: Capture | None = None
        self._last_trigger: float | None = None
        self.seen = 0
        self.started = 0
        self.suppressed = 0
        self.dumped = 0

    @property
    def active(self) -> Capture | None:
        return self._active

    @property
    def ring_len(self) -> int:
        return len(self._ring)

    @property
    def ring_bytes(self) -> int:
        return self._ring_bytes

    @property
    def pre_bound(self) -> str:
        """Which bound cut the ring's oldest end now: ``events``, ``bytes``, ``age`` or ``none``."""
        return self._cut

    def feed(
        self, lines: Sequence[bytes], triggers: Findings | Sequence[Anomaly] = (), arrival_us: int | None = None
    ) -> FeedResult:
        """Record a batch. ``triggers`` hold indices into ``lines`` and must be sorted by index.

        ``arrival_us`` (the batch's ``recv_ts_us``) ages the ring when ``max_age_s`` is set; without
        it the wall clock is read."""
        res = FeedResult()
        n = len(lines)
        if self._spans is not None:
            self._arrival_us = arrival_us if arrival_us is not None else int(self._wall() * 1_000_000)
            self._expire(self._arrival_us - self._max_age_us)
        if not triggers:
            self._advance(lines, 0, n, res)
            return res
        if not isinstance(triggers, Findings):
            triggers = Findings.of(triggers)
        now = self._clock()
        wall = self._wall()
        if self._active is None and self._cooling(now) and _in_order(triggers.indices, n):
            # Nothing can start before the batch ends: every trigger is suppressed, and the ring only
            # grows. No trigger is made an object: in a storm this is nearly every event's path.
            self.suppressed += len(triggers)
            res.suppressed.extend(triggers.types)
            self._advance(lines, 0, n, res)
            return res
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
            self._extend_post(cap, chunk, res)
        self._extend_ring(chunk)
        if self._spans is not None:
            self._arrived(end - start)

    def _extend_post(self, cap: Capture, chunk: Sequence[bytes], res: FeedResult) -> None:
        need = cap.post_target - len(cap.post)
        part = chunk if len(chunk) <= need else chunk[:need]
        room = self.max_bytes - cap.post_bytes
        size = sum(map(len, part))
        if size > room:
            total = 0
            k = 0
            for k, line in enumerate(part):  # noqa: B007 - k is the cut
                total += len(line)
                if total > room:
                    break
            part = part[: max(k, 1 if not cap.post else 0)]
            size = sum(map(len, part))
            cap.post.extend(part)
            cap.post_bytes += size
            self.post_cut_bytes += 1
            self._complete(cap, res)
            return
        cap.post.extend(part)
        cap.post_bytes += size
        if len(cap.post) >= cap.post_target:
            self._complete(cap, res)

    def _extend_ring(self, chunk: Sequence[bytes]) -> None:
        """Add lines; forget the oldest past ``pre_events`` lines, then past ``max_bytes`` bytes."""
        ring = self._ring
        limit = self.pre_events
        k = len(chunk)
        if k >= limit:
            if ring or k > limit:
                self._cut = PRE_BOUND_EVENTS
            ring.clear()
            chunk = chunk[k - limit :] if k > limit else chunk
            ring.extend(chunk)
            self._ring_bytes = sum(map(len, chunk))
        else:
            over = len(ring) + k - limit
            if over > 0:
                self._cut = PRE_BOUND_EVENTS
                self._ring_bytes -= sum(map(len, islice(ring, over)))
            ring.extend(chunk)
            self._ring_bytes += sum(map(len, chunk))
        if self._ring_bytes > self.max_bytes:
            size = self._ring_bytes
            evicted = 0
            while size > self.max_bytes and len(ring) > 1:
                size -= len(ring.popleft())
                evicted += 1
            self._ring_bytes = size
            self.evicted_bytes_bound += evicted
            self._cut = PRE_BOUND_BYTES

    def _arrived(self, k: int) -> None:
        """Account ``k`` lines just added at the current arrival; drop the spans the count bound cut."""
        spans = self._spans
        if spans and spans[-1][0] == self._arrival_us:
            spans[-1][1] += k
        else:
            spans.append([self._arrival_us, k])
        self._span_lines += k
        over = self._span_lines - len(self._ring)
        if over <= 0:
            return
        self._span_lines -= over
        while over:
            head = spans[0]
            if head[1] <= over:
                over -= head[1]
                spans.popleft()
            else:
                head[1] -= over
                over = 0

    def _expire(self, cutoff_us: int) -> None:
        """Forget the lines that arrived before ``cutoff_us``."""
        spans = self._spans
        ring = self._ring
        while spans and spans[0][0] < cutoff_us:
            k = spans.popleft()[1]
            self._span_lines -= k
            self._cut = PRE_BOUND_AGE
            if k >= len(ring):
                ring.clear()
                self._ring_bytes = 0
            else:
                for _ in range(k):
                    self._ring_bytes -= len(ring.popleft())

    def _cooling(self, now: float) -> bool:
        """Whether a trigger at ``now`` falls within the cooldown of the last capture's."""
        return self._last_trigger is not None and now - self._last_trigger < self.cooldown_s

    def _trigger(self, anomaly: Anomaly, now: float, wall: float, res: FeedResult) -> None:
        cap = self._active
        if cap is not None or self._cooling(now):
            self.suppressed += 1
            res.suppressed.append(anomaly.type)
            if cap is not None:
                cap.suppress(anomaly, wall)
            return
        self._last_trigger = self._last_capture = now
        self.started += 1
        cap = Capture(self._new_id(wall), anomaly, list(self._ring), self.post_events, wall, self.pre_bound)
        res.started.append(cap)
        if self.post_events == 0:
            self._complete(cap, res)
        else:
            self._active = cap

    def _complete(self, cap: Capture, res: FeedResult) -> None:
        cap.complete = True
        self._active = None
        res.completed.append(cap)

    def dump(self, reason: str, *, respect_cooldown: bool = False, source: str = MANUAL) -> Capture:
        """The ring as it is now as a complete ``manual`` capture; raises :class:`DumpRefused`.

        An active capture goes on untouched. With ``respect_cooldown``, a dump is refused while a
        capture is active or within ``cooldown_s`` of the last capture of any type; a dump never
        starts the detectors' cooldown, so it cannot suppress a real trigger. ``source`` says who asked.
        """
        now = self._clock()
        wall = self._wall()
        if respect_cooldown:
            if self._active is not None:
                raise DumpRefused(REFUSED_COOLDOWN, f"a {self._active.type} capture is in progress")
            last = self._last_capture
            if last is not None and now - last < self.cooldown_s:
                raise DumpRefused(
                    REFUSED_COOLDOWN,
                    f"in cooldown: the last capture started {now - last:.1f} s ago "
                    f"(FLIGHT_COOLDOWN_S={self.cooldown_s:g})",
                )
        if self._spans is not None:
            self._expire(int(wall * 1_000_000) - self._max_age_us)
        if not self._ring:
            within = f" within the last {self.max_age_s:g} s" if self._spans is not None else ""
            raise DumpRefused(REFUSED_EMPTY, f"the flight recorder holds no events{within}; nothing to dump")
        self._last_capture = now
        self.dumped += 1
        pre = list(self._ring)
        detail = {"source": source, "respect_cooldown": respect_cooldown}
        anomaly = Anomaly(MANUAL, len(pre) - 1, 0, None, detail)
        cap = Capture(self._new_id(wall), anomaly, pre, 0, wall, self.pre_bound, reason)
        cap.complete = True
        return cap

    def finalize(self) -> Capture | None:
        """At shutdown: the active capture with what it has, marked incomplete, or ``None``."""
        cap = self._active
        if cap is None:
            return None
        self._active = None
        cap.complete = False
        return cap


def _in_order(at: Sequence[int], n: int) -> bool:
    """Whether the triggers' indices are sorted and inside a batch of ``n`` lines."""
    return at[0] >= 0 and at[-1] < n and all(map(le, at, islice(at, 1, None)))
