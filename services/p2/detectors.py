"""Data-quality detectors: plain classes with exact counters, driven a batch at a time by :class:`Detectors`.

The definitions are the contract of issue 3; each class docstring states the precise rule, including
the corner cases the issue leaves open. The detectors are independent: a drifted event is still
checked by every other detector whose fields it carries with the right JSON type.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from heapq import nlargest
from itertools import accumulate, chain, islice, repeat
from operator import attrgetter, itemgetter
from typing import Any

from mercurystream.p2.recent_ids import RecentIds
from mercurystream.shared.event import EventColumns, increasing, latency_ms, nondecreasing, pick

SCHEMA_DRIFT = "schema_drift"
DUPLICATE = "duplicate"
OUT_OF_ORDER = "out_of_order"
SEQUENCE_GAP = "sequence_gap"
LATENCY_SPIKE = "latency_spike"

ANOMALY_TYPES = (SCHEMA_DRIFT, DUPLICATE, OUT_OF_ORDER, SEQUENCE_GAP, LATENCY_SPIKE)
TRIGGER_TYPES = frozenset({DUPLICATE, SEQUENCE_GAP, LATENCY_SPIKE})
"""Anomaly types that start a flight-recorder capture; drift and out-of-order are counted only."""

REQUIRED: dict[str, str] = {
    "type": "str",
    "product_id": "str",
    "price": "number",
    "last_size": "number",
    "time": "str",
    "trade_id": "int",
    "ingest_ts_ms": "int",
}
"""Required keys and their JSON kind. ``number`` is an int or a float; a bool is never a number."""

KNOWN_KEYS = frozenset(REQUIRED) | {
    "sequence",
    "side",
    "best_bid",
    "best_ask",
    "ingest_ts_us",
    "recv_ts_ms",
    "recv_ts_us",
}
"""Keys of the normalized event; anything else is listed as unexpected in a drift sample."""

MAX_PRODUCTS = 10_000
"""Per-product state is created for at most this many product ids per detector, so a stream of
random product ids cannot exhaust memory; events of products beyond it are counted as untracked."""

_JSON_NAMES = {str: "str", int: "int", float: "float", bool: "bool", type(None): "null", list: "array", dict: "object"}


def json_kind(value: object) -> str:
    """The JSON name of a parsed value's type, for drift samples."""
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _kind_ok(kind: str, value: object) -> bool:
    t = type(value)
    if kind == "number":
        return t is int or t is float
    if kind == "int":
        return t is int
    return t is str


class Anomaly:
    """One detection: ``index`` is the position of the causing event in the batch given to ``process``.

    ``count`` is how much it adds to its type's counter (the number of missing ids for a gap, else 1).
    ``evidence``, when set, computes costly detail (a latency spike's p99 values); :meth:`resolve`
    runs it once, so only anomalies that become incidents pay for it, on the bundle writer's thread.
    """

    __slots__ = ("count", "detail", "evidence", "index", "product_id", "type")

    def __init__(
        self,
        type: str,
        index: int,
        count: int,
        product_id: str | None,
        detail: dict[str, Any],
        evidence: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.type = type
        self.index = index
        self.count = count
        self.product_id = product_id
        self.detail = detail
        self.evidence = evidence

    def resolve(self) -> dict[str, Any]:
        """``detail`` completed with the deferred evidence."""
        if self.evidence is not None:
            self.detail = {**self.detail, **self.evidence()}
            self.evidence = None
        return self.detail

    def __repr__(self) -> str:
        return f"Anomaly({self.type!r}, index={self.index}, count={self.count}, product_id={self.product_id!r})"


class DriftDetector:
    """``schema_drift``: a required key is missing or has the wrong JSON type.

    Every drifted event is counted. At most ``samples_per_min`` of them per wall-clock minute are
    marked ``sampled`` (the caller writes those to the sample file), so an upstream format change
    cannot fill the disk while the count stays exact.
    """

    def __init__(self, samples_per_min: int = 100) -> None:
        self.samples_per_min = samples_per_min
        self.count = 0
        self.sampled = 0
        self.unsampled = 0
        self._minute = -1
        self._in_minute = 0

    def observe(self, event: dict[str, Any], now_s: float) -> dict[str, Any] | None:
        """The drift detail of ``event``, or ``None`` when it has every required key well typed."""
        missing = []
        mismatched = []
        for key, kind in REQUIRED.items():
            if key not in event:
                missing.append(key)
            elif not _kind_ok(kind, event[key]):
                mismatched.append({"key": key, "expected": kind, "got": json_kind(event[key])})
        if not missing and not mismatched:
            return None
        self.count += 1
        minute = int(now_s // 60)
        if minute != self._minute:
            self._minute = minute
            self._in_minute = 0
        sampled = self._in_minute < self.samples_per_min
        if sampled:
            self._in_minute += 1
            self.sampled += 1
        else:
            self.unsampled += 1
        return {
            "missing": missing,
            "mismatched": mismatched,
            "unexpected": sorted(str(k) for k in event if k not in KNOWN_KEYS),
            "sampled": sampled,
        }


class DuplicateDetector:
    """``duplicate``: per product, a trade id already among its last ``max_ids`` distinct trade ids.

    "Last" is by most recent occurrence, as in an LRU: every sighting of an id (a duplicate too)
    makes it the most recent, and when a new id would make ``max_ids + 1`` distinct ids, the one
    seen longest ago is forgotten (:class:`RecentIds`, O(1) amortized per sighting, O(1) per batch
    and almost no memory while a product's ids run without holes). :meth:`observe_new` takes a
    product's ids of a batch at once when they increase from above every id the product ever had,
    so none can be a duplicate.
    """

    def __init__(self, max_ids: int = 50_000) -> None:
        if max_ids <= 0:
            raise ValueError("max_ids must be positive")
        self.max_ids = max_ids
        self.count = 0
        self.untracked = 0
        self._state: dict[str, RecentIds] = {}

    @property
    def products(self) -> int:
        """Products with state (at most :data:`MAX_PRODUCTS`)."""
        return len(self._state)

    def observe(self, product_id: str, trade_id: int) -> bool:
        """Remember ``trade_id``; ``True`` (and counted) if it is a duplicate."""
        return bool(self.observe_many([(0, product_id, trade_id)]))

    def observe_many(self, items: Iterable[tuple[int, str, int]]) -> list[tuple[int, str, int]]:
        """Feed ``(index, product_id, trade_id)`` in arrival order; the items that are duplicates."""
        state = self._state
        max_ids = self.max_ids
        hits = []
        for item in items:
            _, pid, tid = item
            recent = state.get(pid)
            if recent is None:
                if len(state) >= MAX_PRODUCTS:
                    self.untracked += 1
                    continue
                recent = state[pid] = RecentIds(max_ids)
            if tid in recent:
                recent.seen_again(tid)
                hits.append(item)
                continue
            recent.add(tid)
        self.count += len(hits)
        return hits

    def observe_new(self, product_id: str, trade_ids: Sequence[int], rising: bool | None = None) -> bool:
        """Take one product's ids of a batch if none can be a duplicate; ``False`` (nothing done) if not.

        ``rising`` is whether ``trade_ids`` strictly increase, when the caller knows.
        """
        if not trade_ids:
            return True
        recent = self._state.get(product_id)
        if recent is None:
            if len(self._state) >= MAX_PRODUCTS:
                return False
        elif not trade_ids[0] > recent.high:
            return False
        if not (increasing(trade_ids) if rising is None else rising):
            return False
        if recent is None:
            recent = self._state[product_id] = RecentIds(self.max_ids)
        recent.add_run(trade_ids)
        return True


_FIXED_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z").fullmatch
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def parse_time_us(s: str) -> int | None:
    """An ISO-8601 time as integer microseconds since the epoch (naive means UTC); ``None`` if not a time."""
    try:
        dt = datetime.fromisoformat(s)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return (dt - _EPOCH) // _ONE_US
    except (ValueError, OverflowError):
        return None


class OutOfOrderDetector:
    """``out_of_order``: per product, an event whose ``time`` is strictly earlier than the latest seen.

    Times in Coinbase's fixed form (``YYYY-MM-DDTHH:MM:SS.ffffffZ``, ASCII digits) order like their
    strings, so two of them are compared as strings without parsing. Any other string is parsed
    with ``datetime.fromisoformat`` to integer microseconds (exact, unlike float seconds); a string
    that is not a time is counted in ``unparsed`` and neither checked nor remembered. An equal time
    is not out of order. An out-of-order event does not move the latest time back.
    """

    def __init__(self) -> None:
        self.count = 0
        self.unparsed = 0
        self.untracked = 0
        # product -> [latest time string, it is in fixed form, its microseconds or None until needed]
        self._state: dict[str, list[Any]] = {}

    @property
    def products(self) -> int:
        """Products with state (at most :data:`MAX_PRODUCTS`)."""
        return len(self._state)

    def observe(self, product_id: str, time: str) -> str | None:
        """The latest time ``time`` is earlier than (counted), or ``None``."""
        hits = self.observe_many([(0, product_id, time)])
        return hits[0][3] if hits else None

    def observe_many(self, items: list[tuple[int, str, str]]) -> list[tuple[int, str, str, str]]:
        """Feed ``(index, product_id, time)`` in arrival order; ``(index, product_id, time, latest)``
        for each event earlier than the latest time of its product."""
        state = self._state
        fixed = _FIXED_TIME
        hits = []
        for i, pid, t in items:
            st = state.get(pid)
            if st is not None:
                latest = st[0]
                if t == latest:
                    continue
                if st[1] and fixed(t) is not None:
                    if t < latest:
                        hits.append((i, pid, t, latest))
                    else:
                        st[0] = t
                        st[2] = None
                    continue
                latest = self._slow(st, t)
                if latest is not None:
                    hits.append((i, pid, t, latest))
                continue
            if len(state) >= MAX_PRODUCTS:
                self.untracked += 1
            elif fixed(t) is not None:
                state[pid] = [t, True, None]
            else:
                us = parse_time_us(t)
                if us is None:
                    self.unparsed += 1
                else:
                    state[pid] = [t, False, us]
        self.count += len(hits)
        return hits

    def observe_fixed(self, product_id: str, times: Sequence[str]) -> bool:
        """Take one product's fixed-form times of a batch if they are in order from its latest; else ``False``.

        The caller has checked the fixed form (``timeparse.all_fixed_form``); nothing is done on ``False``.
        """
        if not times:
            return True
        st = self._state.get(product_id)
        if st is None:
            if len(self._state) >= MAX_PRODUCTS:
                return False
        elif not st[1] or times[0] < st[0]:
            return False
        if not nondecreasing(times):
            return False
        last = times[-1]
        if st is None:
            self._state[product_id] = [last, True, None]
        elif last != st[0]:
            st[0] = last
            st[2] = None
        return True

    def _slow(self, st: list[Any], time: str) -> str | None:
        us = parse_time_us(time)
        if us is None:
            self.unparsed += 1
            return None
        latest_us = st[2]
        if latest_us is None:
            latest_us = st[2] = parse_time_us(st[0])
        if us < latest_us:
            return st[0]
        if us > latest_us:
            st[0] = time
            st[1] = _FIXED_TIME(time) is not None
            st[2] = us
        return None


class _GapState:
    __slots__ = ("high", "n", "ranges")

    def __init__(self, trade_id: int) -> None:
        self.high = trade_id
        self.n = 1
        # [lo, hi, deadline]: ids lo..hi skipped and not arrived; confirmed once n >= deadline.
        # Sorted by lo, which is also creation order, so deadlines never decrease along the list.
        self.ranges: list[list[int]] = []


_LO = itemgetter(0)


class SequenceGapDetector:
    """``sequence_gap``: per product, match trade ids skipped and still missing ``window`` events later.

    Precisely, for the ``match`` events of a product that carry an int ``trade_id`` (the only events
    this detector sees, and the only ones that advance its window):

    - the first one sets the baseline: ids at or below it are never reported missing;
    - an id above the highest seen so far, ``high``, skips ``high+1 .. id-1``; that range becomes
      missing, due at the event ``window`` events after the one that revealed it;
    - an id that is missing arrives late: it leaves the missing set (inside the window this is at
      most an out-of-order event, never a gap); any other id at or below ``high`` is ignored here
      (a duplicate is the duplicate detector's business);
    - after each event, every missing id that is due is confirmed and counted once.

    Missing ids are kept as ranges, so a jump of 10^9 ids costs one range, and a range lives at most
    ``window`` events, so memory stays O(window) per product whatever the ids do.
    """

    def __init__(self, window: int = 50) -> None:
        if window < 0:
            raise ValueError("window must be >= 0")
        self.window = window
        self.count = 0
        self.untracked = 0
        self._state: dict[str, _GapState] = {}

    @property
    def products(self) -> int:
        """Products with state (at most :data:`MAX_PRODUCTS`)."""
        return len(self._state)

    def observe(self, product_id: str, trade_id: int) -> list[list[int]] | None:
        """Feed one match event; the ``[lo, hi]`` ranges it confirms missing (counted), or ``None``."""
        hits = self.observe_many([(0, product_id, trade_id)])
        return hits[0][2] if hits else None

    def observe_many(self, items: list[tuple[int, str, int]]) -> list[tuple[int, str, list[list[int]], int]]:
        """Feed ``(index, product_id, trade_id)`` of match events in arrival order;
        ``(index, product_id, confirmed [lo, hi] ranges, missing count)`` for each event that confirms."""
        state = self._state
        window = self.window
        hits = []
        for i, pid, tid in items:
            st = state.get(pid)
            if st is None:
                if len(state) >= MAX_PRODUCTS:
                    self.untracked += 1
                else:
                    state[pid] = _GapState(tid)
                continue
            n = st.n = st.n + 1
            high = st.high
            ranges = st.ranges
            if tid == high + 1:
                st.high = tid
            elif tid > high:
                ranges.append([high + 1, tid - 1, n + window])
                st.high = tid
            elif ranges:
                _arrived(ranges, tid)
            if ranges and ranges[0][2] <= n:
                confirmed = _confirm(ranges, n)
                missing = sum(hi - lo + 1 for lo, hi in confirmed)
                self.count += missing
                hits.append((i, pid, confirmed, missing))
        return hits

    def observe_contiguous(self, product_id: str, trade_ids: Sequence[int], rising: bool | None = None) -> bool:
        """Take one product's match ids of a batch if they continue its ids with none skipped; else ``False``.

        Nothing can be skipped, arrive late or fall due then, so only the position moves.
        """
        if not trade_ids:
            return True
        st = self._state.get(product_id)
        k = len(trade_ids)
        first = trade_ids[0]
        if st is None:
            if len(self._state) >= MAX_PRODUCTS:
                return False
        elif st.ranges or first != st.high + 1:
            return False
        if trade_ids[-1] - first != k - 1 or not (increasing(trade_ids) if rising is None else rising):
            return False
        if st is None:
            st = self._state[product_id] = _GapState(first)
            k -= 1
        st.high = trade_ids[-1]
        st.n += k
        return True

    def pending(self, product_id: str) -> list[tuple[int, int]]:
        """Ranges of ``product_id`` skipped but not yet due (for tests and introspection)."""
        st = self._state.get(product_id)
        return [] if st is None else [(r[0], r[1]) for r in st.ranges]


def _confirm(ranges: list[list[int]], n: int) -> list[list[int]]:
    """Remove and return the ranges due at event ``n`` (a prefix of the list)."""
    done = 0
    for r in ranges:
        if r[2] > n:
            break
        done += 1
    confirmed = [[r[0], r[1]] for r in ranges[:done]]
    del ranges[:done]
    return confirmed


def _arrived(ranges: list[list[int]], trade_id: int) -> None:
    """Take a late ``trade_id`` out of the missing ranges, splitting one if it lands inside."""
    i = bisect_right(ranges, trade_id, key=_LO) - 1
    if i < 0:
        return
    r = ranges[i]
    lo, hi, deadline = r
    if trade_id > hi:
        return
    if lo == hi:
        del ranges[i]
    elif trade_id == lo:
        r[0] = lo + 1
    elif trade_id == hi:
        r[1] = hi - 1
    else:
        r[1] = trade_id - 1
        ranges.insert(i + 1, [trade_id + 1, hi, deadline])


def nearest_rank(n: int, q_percent: int = 99) -> int:
    """The 1-based nearest rank of the ``q_percent`` quantile of ``n`` samples: ``ceil(q*n/100)``."""
    return max(1, (q_percent * n + 99) // 100)


class LatencySpikeDetector:
    """``latency_spike``: rolling p99 of P1→P2 latency above the threshold at N evaluations in a row.

    The window is the last ``buffer_size`` samples; an evaluation happens at every ``eval_every``-th
    sample (over the samples so far while the window fills). p99 is the nearest-rank quantile, the
    sample at rank ``ceil(0.99 n)``. After ``consecutive`` evaluations above the threshold in a row,
    a spike is counted and the run restarts from zero.

    The test needs no sorted structure: the p99 exceeds the threshold exactly when at least
    ``n - rank + 1`` window samples do, so the detector keeps a count of samples above the threshold,
    brought up to date a batch at a time (:meth:`observe_many`). A spike keeps a copy of the samples
    behind it (:class:`SpikeEvidence`); the p99 values are computed from it only if the spike becomes
    an incident, so a sustained overload (a spike every few evaluations) does not add selection work
    to an already late stream.
    """

    def __init__(
        self, threshold_ms: float = 100.0, buffer_size: int = 3000, eval_every: int = 100, consecutive: int = 2
    ) -> None:
        if buffer_size <= 0 or eval_every <= 0 or consecutive <= 0:
            raise ValueError("buffer_size, eval_every and consecutive must be positive")
        self.threshold_ms = float(threshold_ms)
        self.buffer_size = buffer_size
        self.eval_every = eval_every
        self.consecutive = consecutive
        self.count = 0
        self.samples = 0
        self.evaluations = 0
        self.run = 0
        self.above = 0
        self._window: deque[float] = deque(maxlen=buffer_size)
        self._evicted: deque[float] = deque(maxlen=eval_every * consecutive)

    def observe(self, latency_ms: float) -> SpikeEvidence | None:
        """Add one sample; the spike (counted) if this sample's evaluation completes a run."""
        spikes = self.observe_many((latency_ms,))
        return spikes[0][1] if spikes else None

    def observe_many(self, values: Sequence[float]) -> list[tuple[int, SpikeEvidence]]:
        """Add samples in order; ``(position in values, spike)`` for each spike.

        Only an evaluation needs the count above the threshold, and that count is the window's
        before the batch, plus the new samples above it so far, minus those that have left the
        window: two prefix sums over the batch (C-level passes) give it at any position, so the
        Python-level work is one step per ``eval_every`` samples, late stream or not.
        """
        k = len(values)
        if not k:
            return []
        window = self._window
        thr = self.threshold_ms
        above_thr = thr.__lt__
        size = self.buffer_size
        every = self.eval_every
        before = self.samples
        w = len(window)
        leaving = max(0, w + k - size)
        """How many of the window's samples and then of ``values`` leave the window in this batch."""
        # In an overload every sample is above the threshold: the prefix counts are then the
        # positions themselves, and one short-circuiting pass finds that out.
        if all(map(above_thr, values)):
            new_above: Sequence[int] = range(k + 1)
            every_above = self.above == w
        else:
            new_above = list(accumulate(map(above_thr, values), initial=0))
            every_above = False
        if every_above:
            gone_above: Sequence[int] = range(leaving + 1)
        else:
            gone_above = list(accumulate(map(above_thr, islice(chain(window, values), leaving)), initial=0))
        out: list[tuple[int, SpikeEvidence]] = []
        samples: list[float] | None = None
        """The evicted samples, the window and ``values`` in one list, made at the batch's first spike
        and shared by all of them: under a sustained overload a spike comes every few evaluations."""
        for pos in range((every - 1 - before) % every, k, every):
            end = w + pos + 1
            start = max(0, end - size)
            n = end - start
            self.evaluations += 1
            if self.above + new_above[pos + 1] - gone_above[start] >= n - nearest_rank(n) + 1:
                self.run += 1
                if self.run >= self.consecutive:
                    self.run = 0
                    self.count += 1
                    if samples is None:
                        samples = [*self._evicted, *window, *values]
                    out.append((pos, self._spike(samples, start, end, before + pos + 1)))
            else:
                self.run = 0
        if leaving:
            self._evicted.extend(islice(chain(window, values), leaving))
        window.extend(values)
        self.above += new_above[k] - gone_above[leaving]
        self.samples = before + k
        return out

    def observe_quiet(self, values: Sequence[float]) -> bool:
        """:meth:`observe_many` for a batch with no sample above the threshold in it or in the window.

        Then every evaluation in it finds none above, which only resets the run: a ``max`` and two
        ``extend`` calls. ``False`` (and nothing done) for any other batch.
        """
        if self.above or not values or max(values) > self.threshold_ms:
            return False
        window = self._window
        overflow = len(window) + len(values) - self.buffer_size
        if overflow > 0:
            self._evicted.extend(islice(chain(window, values), overflow))
        window.extend(values)
        every = self.eval_every
        before = self.samples
        self.samples = before + len(values)
        evaluations = self.samples // every - before // every
        if evaluations:
            self.evaluations += evaluations
            self.run = 0
        return True

    def _spike(self, sequence: list[float], start: int, end: int, samples: int) -> SpikeEvidence:
        """The evidence of a spike at the sample ending ``window + values[: end - len(window)]``.

        ``sequence`` is the evicted samples, the window and the batch's values; ``start``/``end``
        index the window and values part of it.
        """
        evicted = self._evicted
        offset = len(evicted)
        lo = max(0, offset + start - evicted.maxlen)  # type: ignore[operator]
        summary = {
            "threshold_ms": self.threshold_ms,
            "window": end - start,
            "sample": samples,
            "evaluation": self.evaluations,
        }
        return SpikeEvidence(summary, (sequence, lo, offset + end), self.buffer_size, self.eval_every, self.consecutive)


class SpikeEvidence:
    """One spike: a cheap ``summary`` now, and its p99 values on demand (called at most once).

    ``history`` is the window at the spike preceded by the samples evicted during the run, which
    is exactly enough to rebuild the window of each evaluation of the run and of the one before;
    it is given as ``(samples, lo, hi)``, a slice not yet taken of a list other spikes share.
    """

    __slots__ = ("_every", "_history", "_result", "_runs", "_size", "summary")

    def __init__(
        self, summary: dict[str, Any], history: tuple[list[float], int, int], size: int, every: int, runs: int
    ) -> None:
        self.summary = summary
        self._history = history
        self._size = size
        self._every = every
        self._runs = runs
        self._result: dict[str, Any] | None = None

    @property
    def history(self) -> list[float]:
        samples, lo, hi = self._history
        return samples[lo:hi]

    def __call__(self) -> dict[str, Any]:
        if self._result is not None:
            return self._result
        history = self.history
        end = len(history)
        size = self._size
        every = self._every
        run_p99 = []
        for back in range(self._runs - 1, -1, -1):
            stop = end - back * every
            run_p99.append(_p99(history[max(0, stop - size) : stop]))
        before = end - self._runs * every
        self._result = {
            "p99_ms": run_p99[-1],
            "run_p99_ms": run_p99,
            "p99_before_ms": _p99(history[max(0, before - size) : before]) if before > 0 else None,
            "worst_ms": nlargest(5, history[max(0, end - size) :]),
        }
        self._history = ([], 0, 0)
        return self._result

    def detail(self) -> dict[str, Any]:
        """Summary and evidence together (what an incident's meta records)."""
        return {**self.summary, **self()}


def _p99(values: list[float]) -> float:
    n = len(values)
    return nlargest(n - nearest_rank(n) + 1, values)[-1]


_BY_INDEX = attrgetter("index")
_FIRST = itemgetter(0)


class Detectors:
    """All five detectors over a batch: ``process(events) -> [Anomaly]`` in event order, counted.

    One loop reads each required field once: the full drift analysis runs only for events that
    fail the fast type test, and the well-typed fields are gathered into one column per detector
    (``(index, product, value)``). Each detector then runs once over its column with its state in
    local variables; they are independent, so this gives the same result as event by event.
    """

    def __init__(
        self,
        *,
        duplicate_lru_max: int = 50_000,
        gap_reorder_window: int = 50,
        latency_threshold_ms: float = 100.0,
        latency_buffer_size: int = 3000,
        latency_eval_every: int = 100,
        latency_consecutive: int = 2,
        drift_samples_per_min: int = 100,
    ) -> None:
        self.drift = DriftDetector(drift_samples_per_min)
        self.duplicate = DuplicateDetector(duplicate_lru_max)
        self.out_of_order = OutOfOrderDetector()
        self.sequence_gap = SequenceGapDetector(gap_reorder_window)
        self.latency = LatencySpikeDetector(
            latency_threshold_ms, latency_buffer_size, latency_eval_every, latency_consecutive
        )

    @classmethod
    def from_settings(cls, settings: Any) -> Detectors:
        return cls(
            duplicate_lru_max=settings.DUPLICATE_LRU_MAX,
            gap_reorder_window=settings.GAP_REORDER_WINDOW,
            latency_threshold_ms=settings.LATENCY_SPIKE_THRESHOLD_MS,
            latency_buffer_size=settings.LATENCY_BUFFER_SIZE,
            latency_eval_every=settings.LATENCY_EVAL_EVERY,
            latency_consecutive=settings.LATENCY_SPIKE_CONSECUTIVE,
            drift_samples_per_min=settings.DRIFT_SAMPLES_PER_MIN,
        )

    @property
    def counts(self) -> dict[str, int]:
        return {
            SCHEMA_DRIFT: self.drift.count,
            DUPLICATE: self.duplicate.count,
            OUT_OF_ORDER: self.out_of_order.count,
            SEQUENCE_GAP: self.sequence_gap.count,
            LATENCY_SPIKE: self.latency.count,
        }

    def process(
        self,
        events: list[dict[str, Any]],
        now_s: float = 0.0,
        latencies: tuple[Sequence[float], Sequence[int]] | None = None,
    ) -> list[Anomaly]:
        """Check a batch; ``now_s`` (wall clock, once per batch) paces the drift samples.

        ``latencies`` is ``(latencies, their event indices)`` when the receiver computed them (its
        events carry no receive stamps); otherwise each event's own stamps are used.
        """
        out: list[Anomaly] = []
        drift = self.drift.observe
        keyed: list[tuple[int, str, int]] = []
        matches: list[tuple[int, str, int]] = []
        timed: list[tuple[int, str, str]] = []
        keyed_append = keyed.append
        match_append = matches.append
        timed_append = timed.append
        for i, e in enumerate(events):
            try:
                et = e["type"]
                pid = e["product_id"]
                price = e["price"]
                size = e["last_size"]
                tm = e["time"]
                tid = e["trade_id"]
                ing = e["ingest_ts_ms"]
            except KeyError:
                g = e.get
                et = g("type")
                pid = g("product_id")
                price = g("price")
                size = g("last_size")
                tm = g("time")
                tid = g("trade_id")
                ing = g("ingest_ts_ms")
            tp = type(price)
            ts = type(size)
            pid_ok = type(pid) is str
            tid_ok = type(tid) is int
            tm_ok = type(tm) is str
            if not (
                pid_ok
                and tid_ok
                and tm_ok
                and type(et) is str
                and type(ing) is int
                and (tp is float or tp is int)
                and (ts is float or ts is int)
            ):
                d = drift(e, now_s)
                if d is not None:
                    out.append(Anomaly(SCHEMA_DRIFT, i, 1, pid if pid_ok else None, d))
            if pid_ok:
                if tid_ok:
                    item = (i, pid, tid)
                    keyed_append(item)
                    if et == "match":
                        match_append(item)
                if tm_ok:
                    timed_append((i, pid, tm))
        dups = self.duplicate.observe_many(keyed) if keyed else []
        late = self.out_of_order.observe_many(timed) if timed else []
        gaps = self.sequence_gap.observe_many(matches) if matches else []
        lats, lat_at = latencies if latencies is not None else _latencies(events)
        return self._anomalies(_trade_id_of(events), out, dups, late, gaps, lats, lat_at)

    def process_batch(self, batch: Any, now_s: float = 0.0) -> list[Anomaly]:
        """:meth:`process` for a bus batch, the same anomalies and counts in fewer steps.

        A batch whose :class:`EventColumns` are well typed has no drift, and each detector first
        tries its column test per product (ids increasing from above any seen, times in order,
        match ids contiguous, latencies all below the threshold), falling back to its per-item
        path for that product only; the receiver's latencies are reused. Any other batch, or one
        that could take the product count to :data:`MAX_PRODUCTS` (where the order in which
        products appear matters), goes through :meth:`process`.
        """
        cols = batch.derived(EventColumns)
        events = batch.events
        lats = batch.latencies_ms
        if lats is None:
            lats, lat_at = _latencies(events)
        else:
            at = batch.latency_at
            lat_at = range(len(lats)) if at is None else at
        if not cols.typed or not len(cols):
            return self.process(events, now_s, (lats, lat_at))
        groups = cols.groups()
        dup = self.duplicate
        ooo = self.out_of_order
        gap = self.sequence_gap
        if max(dup.products, ooo.products, gap.products) + len(groups) >= MAX_PRODUCTS:
            return self.process(events, now_s, (lats, lat_at))
        tids = cols.trade_ids
        times = cols.times
        types = cols.types
        fixed = cols.fixed_times
        all_match = types.count("match") == len(types)
        dups: list[tuple[int, str, int]] = []
        late: list[tuple[int, str, str, str]] = []
        gaps: list[tuple[int, str, list[list[int]], int]] = []
        ids_by_product = cols.ids_by_product()
        for pid, idx in groups.items():
            p_tids, rising = ids_by_product[pid]
            if not dup.observe_new(pid, p_tids, rising):
                dups.extend(dup.observe_many(zip(idx, repeat(pid), p_tids)))
            p_times = pick(times, idx)
            if not (fixed and ooo.observe_fixed(pid, p_times)):
                late.extend(ooo.observe_many(zip(idx, repeat(pid), p_times)))
            if all_match:
                m_idx, m_tids, m_rising = idx, p_tids, rising
            else:
                m_idx = [i for i in idx if types[i] == "match"]
                if not m_idx:
                    continue
                m_tids = pick(tids, m_idx)
                m_rising = None
            if not gap.observe_contiguous(pid, m_tids, m_rising):
                gaps.extend(gap.observe_many(zip(m_idx, repeat(pid), m_tids)))
        if len(groups) > 1:
            dups.sort(key=_FIRST)
            late.sort(key=_FIRST)
            gaps.sort(key=_FIRST)
        return self._anomalies(tids.__getitem__, [], dups, late, gaps, lats, lat_at)

    def _anomalies(
        self,
        trade_id_at: Callable[[int], Any],
        out: list[Anomaly],
        dups: list[tuple[int, str, int]],
        late: list[tuple[int, str, str, str]],
        gaps: list[tuple[int, str, list[list[int]], int]],
        lats: Sequence[float],
        lat_at: Sequence[int],
    ) -> list[Anomaly]:
        """The anomalies of each detector's hits (drift already in ``out``), in event order."""
        sources = 1 if out else 0
        if dups:
            sources += 1
            lru = self.duplicate.max_ids
            out.extend(Anomaly(DUPLICATE, i, 1, pid, {"trade_id": tid, "lru_max": lru}) for i, pid, tid in dups)
        if late:
            sources += 1
            out.extend(
                Anomaly(OUT_OF_ORDER, i, 1, pid, {"time": t, "latest_time": latest}) for i, pid, t, latest in late
            )
        if gaps:
            sources += 1
            window = self.sequence_gap.window
            out.extend(
                Anomaly(SEQUENCE_GAP, i, n, pid, {"ranges": ranges, "trade_id": trade_id_at(i), "window": window})
                for i, pid, ranges, n in gaps
            )
        if lats and not self.latency.observe_quiet(lats):
            spikes = self.latency.observe_many(lats)
            if spikes:
                sources += 1
                out.extend(Anomaly(LATENCY_SPIKE, lat_at[pos], 1, None, sp.summary, sp) for pos, sp in spikes)
        if sources > 1:
            out.sort(key=_BY_INDEX)
        return out


def _trade_id_of(events: Sequence[dict[str, Any]]) -> Callable[[int], Any]:
    return lambda i: events[i]["trade_id"]


def _latencies(events: list[dict[str, Any]]) -> tuple[list[float], list[int]]:
    """Each event's latency by its own stamps (``shared.event.latency_ms``), and its index.

    Only events that carry receive stamps get here (a batch built by hand, a recording fed to
    :meth:`Detectors.process`); the receiver's batches bring their latencies with them.
    """
    lats: list[float] = []
    lat_at: list[int] = []
    for i, e in enumerate(events):
        lat = latency_ms(e)
        if lat is not None:
            lats.append(lat)
            lat_at.append(i)
    return lats, lat_at


def describe(anomaly: Anomaly) -> str:
    """A one-line human reason for an anomaly (meta.json's ``reason`` and the report)."""
    d = anomaly.detail
    pid = anomaly.product_id
    t = anomaly.type
    if t == DUPLICATE:
        return f"trade_id {d.get('trade_id')} of {pid} is among its last {d.get('lru_max')} distinct trade ids"
    if t == SEQUENCE_GAP:
        ranges = d.get("ranges", [])
        spans = ", ".join(f"{lo}" if lo == hi else f"{lo}..{hi}" for lo, hi in ranges[:5])
        more = f" and {len(ranges) - 5} more ranges" if len(ranges) > 5 else ""
        return f"{anomaly.count} trade id(s) of {pid} missing ({spans}{more}) after {d.get('window')} later events"
    if t == LATENCY_SPIKE:
        return (
            f"P1->P2 latency p99 {d.get('p99_ms')} ms above {d.get('threshold_ms')} ms "
            f"at {len(d.get('run_p99_ms', []))} evaluations in a row"
        )
    if t == OUT_OF_ORDER:
        return f"time {d.get('time')} of {pid} is earlier than {d.get('latest_time')}"
    if t == SCHEMA_DRIFT:
        return f"missing {d.get('missing')}, mismatched {[m['key'] for m in d.get('mismatched', [])]}"
    return t
