"""The analytics' arithmetic as plain classes: no event loop, no clock reads, no I/O.

Consumers feed these a batch at a time. A batch's trades are checked once for all of them
(:class:`CheckedTrades`, shared through ``Batch.derived``: types, ranges, the exchange time
parsed to seconds); each consumer's :class:`TradeFilter` then drops the trades it has already
counted, and its window takes the rest as columns (:class:`TradeColumns`). Every window runs on
exchange time, so a replay at any speed produces the figures the live stream did.

Each step has two paths that give the same result. The column path does a batch's work in C-level
loops (``map``, ``sum``, ``array.fromlist``, ``bisect``) after a cheap test shows the batch is
ordinary: well typed, in time order, no repeated ids. Anything else takes the per-trade path,
which is the reference the tests hold the column path to (equal up to float summation order).
"""

from __future__ import annotations

import heapq
import math
import sys
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Sequence
from itertools import chain, compress, islice, repeat
from operator import mul, truediv
from typing import Any

from mercurystream.p2.bus import Batch
from mercurystream.p2.recent_ids import RecentIds
from mercurystream.shared.event import EventColumns, group_positions, increasing, nondecreasing, pick
from mercurystream.shared.timeparse import IsoTimeParser

AcceptedTrade = tuple[str, float, float, float]
"""``(product_id, price, size, exchange_time_s)``; price and size are finite int or float."""

SECONDS_PER_YEAR = 365 * 24 * 3600
"""Crypto trades around the clock, so a year is every second of 365 days."""

MISSING_PRODUCT = "missing_product"
MISSING_TRADE_ID = "missing_trade_id"
INVALID_PRICE = "invalid_price"
INVALID_SIZE = "invalid_size"
INVALID_TIME = "invalid_time"
DUPLICATE = "duplicate"
TOO_MANY_PRODUCTS = "too_many_products"
OUTSIDE_WINDOW = "outside_window"
OUT_OF_ORDER = "out_of_order"

FILTER_REASONS = (
    MISSING_PRODUCT,
    MISSING_TRADE_ID,
    INVALID_PRICE,
    INVALID_SIZE,
    INVALID_TIME,
    DUPLICATE,
    TOO_MANY_PRODUCTS,
)

_FMAX = sys.float_info.max
_MIN_RECOMPUTE = 64
_COMPACT_MIN = 4096
"""A column drops its evicted head once it is this long and at least half the column."""

_parser = IsoTimeParser()
"""Shared by every batch: its caches skip repeated checks but never change a result."""


def _finite_sum(xs: Sequence[float]) -> bool:
    """No NaN, no infinity, no int too large for a float (and no overflow of the sum itself)."""
    try:
        return math.isfinite(sum(xs))
    except OverflowError:
        return False


# --- checking and deduplicating trades -----------------------------------------------------------


class ProductTrades:
    """One product's trades of a batch as columns in arrival order, with what several windows need.

    ``ordered`` (times never decrease) and :attr:`notional` are computed once and shared by the
    consumers that accepted the same trades.
    """

    __slots__ = ("_notional", "ordered", "prices", "sizes", "times")

    def __init__(self, prices: Sequence[float], sizes: Sequence[float], times: Sequence[float]) -> None:
        self.prices = prices
        self.sizes = sizes
        self.times = times
        self.ordered = nondecreasing(times)
        self._notional: list[float] | None = None

    @property
    def notional(self) -> list[float]:
        """``price * size`` of each trade."""
        if self._notional is None:
            self._notional = list(map(mul, self.prices, self.sizes))
        return self._notional

    def __len__(self) -> int:
        return len(self.times)


class TradeColumns:
    """Trades as columns in arrival order; the per-product view and the tuples are built once, on demand.

    One object is shared by every consumer whose filter accepted a whole batch, so they share the
    per-product work too.
    """

    __slots__ = ("_by_product", "_groups", "_tuples", "prices", "product_ids", "sizes", "times")

    def __init__(
        self,
        product_ids: Sequence[str],
        prices: Sequence[float],
        sizes: Sequence[float],
        times: Sequence[float],
        groups: dict[str, list[int]] | None = None,
    ) -> None:
        self.product_ids = product_ids
        self.prices = prices
        self.sizes = sizes
        self.times = times
        self._groups = groups
        self._by_product: dict[str, ProductTrades] | None = None
        self._tuples: list[AcceptedTrade] | None = None

    @classmethod
    def from_tuples(cls, trades: list[AcceptedTrade]) -> TradeColumns:
        if not trades:
            columns = cls((), (), (), ())
        else:
            pids, prices, sizes, times = zip(*trades, strict=True)
            columns = cls(pids, prices, sizes, times)
        columns._tuples = trades
        return columns

    def __len__(self) -> int:
        return len(self.product_ids)

    def tuples(self) -> list[AcceptedTrade]:
        if self._tuples is None:
            self._tuples = list(zip(self.product_ids, self.prices, self.sizes, self.times, strict=True))
        return self._tuples

    def groups(self) -> dict[str, list[int]]:
        """Each product's positions in arrival order; products in order of first appearance."""
        if self._groups is None:
            self._groups = group_positions(self.product_ids)
        return self._groups

    def by_product(self) -> dict[str, ProductTrades]:
        out = self._by_product
        if out is None:
            prices, sizes, times = self.prices, self.sizes, self.times
            out = self._by_product = {
                pid: ProductTrades(pick(prices, idx), pick(sizes, idx), pick(times, idx))
                for pid, idx in self.groups().items()
            }
        return out

    def tail(self, start: int) -> TradeColumns:
        return TradeColumns(self.product_ids[start:], self.prices[start:], self.sizes[start:], self.times[start:])


class CheckedTrades:
    """One batch's trades after :class:`TradeFilter`'s per-event checks, before any dedupe.

    Every analytics consumer applies the same checks to the same events and needs every time
    parsed, so a batch computes this once (``Batch.derived``) and each consumer keeps only its
    own dedupe. Every event is either in ``trades`` (its id at the same position in ``ids``) or
    in ``rejects`` as ``(index in the batch, reason, event)``; both keep the batch's order.

    The column path takes a batch whose :class:`EventColumns` are well typed, whose values are in
    range (C-level ``min`` and ``sum``) and whose times are all in the fixed form (converted
    together); any other batch is checked event by event (:meth:`check`).
    """

    __slots__ = ("_ids_by_product", "events", "ids", "rejects", "trades")

    def __init__(
        self,
        events: list[dict[str, Any]],
        trades: TradeColumns,
        ids: Sequence[int],
        rejects: list[tuple[int, str, dict[str, Any]]],
        ids_by_product: dict[str, tuple[Sequence[int], bool]] | None = None,
    ) -> None:
        self.events = events
        self.trades = trades
        self.ids = ids
        self.rejects = rejects
        self._ids_by_product = ids_by_product

    def ids_by_product(self) -> dict[str, tuple[Sequence[int], bool]]:
        """Each product's trade ids in arrival order, and whether they strictly increase."""
        out = self._ids_by_product
        if out is None:
            ids = self.ids
            out = self._ids_by_product = {}
            for pid, idx in self.trades.groups().items():
                tids = pick(ids, idx)
                out[pid] = (tids, increasing(tids))
        return out

    @classmethod
    def of(cls, batch: Batch) -> CheckedTrades:
        cols = batch.derived(EventColumns)
        if cols.typed and cols.fixed_times and len(cols):
            groups = cols.groups()
            prices = cols.prices
            sizes = cols.sizes
            if (
                "" not in groups
                and _finite_sum(prices)
                and min(prices) > 0.0
                and _finite_sum(sizes)
                and min(sizes) >= 0.0
                and (times := _parser.parse_fixed(cols.times)) is not None
            ):
                trades = TradeColumns(cols.product_ids, prices, sizes, times, groups)
                return cls(batch.events, trades, cols.trade_ids, [], cols.ids_by_product())
        return cls.check(batch.events)

    @classmethod
    def check(cls, events: list[dict[str, Any]]) -> CheckedTrades:
        """The per-event path (the reference)."""
        trades: list[AcceptedTrade] = []
        ids: list[int] = []
        rejects: list[tuple[int, str, dict[str, Any]]] = []
        parse = _parser.parse
        fmax = _FMAX
        for ev in events:
            pid = ev.get("product_id")
            tid = ev.get("trade_id")
            px = ev.get("price")
            sz = ev.get("last_size")
            if type(pid) is not str or not pid:
                reason = MISSING_PRODUCT
            elif type(tid) is not int:
                reason = MISSING_TRADE_ID
            elif (type(px) is not float and type(px) is not int) or not 0.0 < px <= fmax:
                reason = INVALID_PRICE
            elif (type(sz) is not float and type(sz) is not int) or not 0.0 <= sz <= fmax:
                reason = INVALID_SIZE
            elif (t := parse(ev.get("time"))) is None:
                reason = INVALID_TIME
            else:
                trades.append((pid, px, sz, t))
                ids.append(tid)
                continue
            rejects.append((len(trades) + len(rejects), reason, ev))
        return cls(events, TradeColumns.from_tuples(trades), ids, rejects)

    def tail(self, start: int) -> CheckedTrades:
        rejects = self.rejects
        before = 0
        for i, _, _ in rejects:
            if i >= start:
                break
            before += 1
        first = start - before
        return CheckedTrades(
            self.events[start:],
            self.trades.tail(first),
            self.ids[first:],
            [(i - start, reason, ev) for i, reason, ev in rejects[before:]],
        )

    def event_of(self, position: int) -> dict[str, Any]:
        """The event behind trade ``position``."""
        index = position
        for i, _, _ in self.rejects:
            if i > index:
                break
            index += 1
        return self.events[index]


class TradeFilter:
    """Accept each valid trade once; count everything else under a named reason.

    Checks, in order: ``product_id`` a non-empty string, ``trade_id`` an int (without one a
    trade cannot be deduplicated, so it is skipped rather than risk counting it twice), ``price``
    a finite number > 0, ``last_size`` a finite number >= 0 (bools and numeric strings are not
    numbers here: P1 has already converted every valid trade), ``time`` a parseable ISO-8601
    time, and finally not a duplicate. Duplicates are found among the last ``lru_max`` distinct
    trade ids of the same product (:class:`RecentIds`, the duplicate detector's memory: O(1) per
    trade, and O(1) per batch while the ids run without holes); only accepted trades enter it,
    so an invalid first copy does not hide a valid second one.
    A product id never seen before is tracked only while fewer than ``max_products`` are,
    which bounds memory and metric label cardinality when a feed sends garbage ids.

    The checks before the dedupe are :class:`CheckedTrades` (shared by every filter of a batch);
    :meth:`accept` applies this filter's dedupe. When every product's ids in the batch increase
    and start above the highest id it ever accepted, none can be a duplicate and the whole batch
    is accepted in a few C-level set and list operations.
    """

    def __init__(self, lru_max: int, max_products: int = 1024) -> None:
        if lru_max <= 0:
            raise ValueError("lru_max must be positive")
        self.lru_max = lru_max
        self.max_products = max_products
        self._seen: dict[str, RecentIds] = {}
        self.accepted = 0
        self.skipped: dict[str, int] = dict.fromkeys(FILTER_REASONS, 0)
        self.last_rejected: dict[str, dict[str, Any]] = {}
        """The most recent event skipped for each reason, for sampled logging."""

    def filter(self, events: Iterable[dict[str, Any]]) -> list[AcceptedTrade]:
        """The trades among ``events`` that count, in order."""
        return self.accept(CheckedTrades.of(Batch(list(events), [], 0))).tuples()

    def accept(self, checked: CheckedTrades) -> TradeColumns:
        """The trades of a checked batch that count (are not duplicates), in order."""
        skipped = self.skipped
        last_rejected = self.last_rejected
        for _, reason, ev in checked.rejects:
            skipped[reason] += 1
            last_rejected[reason] = ev
        trades = checked.trades
        if not len(trades) or self._accept_all(checked):
            self.accepted += len(trades)
            return trades
        return self._accept_each(checked)

    def _accept_all(self, checked: CheckedTrades) -> bool:
        """Accept the whole batch if no trade of it can be a duplicate or an untracked product."""
        seen = self._seen
        by_product = checked.ids_by_product()
        new = 0
        for pid, (tids, rising) in by_product.items():
            if not rising:
                return False
            known = seen.get(pid)
            if known is None:
                new += 1
            elif not tids[0] > known.high:
                return False
        if new and len(seen) + new > self.max_products:
            return False
        for pid, (tids, _) in by_product.items():
            known = seen.get(pid)
            if known is None:
                known = seen[pid] = RecentIds(self.lru_max)
            known.add_run(tids)
        return True

    def _accept_each(self, checked: CheckedTrades) -> TradeColumns:
        """The per-trade path (the reference)."""
        skipped = self.skipped
        last_rejected = self.last_rejected
        seen_by_product = self._seen
        out: list[AcceptedTrade] = []
        for position, (trade, tid) in enumerate(zip(checked.trades.tuples(), checked.ids, strict=True)):
            pid = trade[0]
            seen = seen_by_product.get(pid)
            if seen is None:
                if len(seen_by_product) >= self.max_products:
                    skipped[TOO_MANY_PRODUCTS] += 1
                    last_rejected[TOO_MANY_PRODUCTS] = checked.event_of(position)
                    continue
                seen = seen_by_product[pid] = RecentIds(self.lru_max)
            if tid in seen:
                skipped[DUPLICATE] += 1
                last_rejected[DUPLICATE] = checked.event_of(position)
                continue
            seen.add(tid)
            out.append(trade)
        self.accepted += len(out)
        return TradeColumns.from_tuples(out)


# --- windows ---------------------------------------------------------------------------------------


class _Entries:
    """A window's entries as ``array('d')`` columns in arrival order, the oldest live one at ``head``.

    Eight bytes a value instead of a tuple of float objects. A window evicts from the oldest entry
    while it is older than the cutoff, so an entry that arrived late (older than the one before
    it) stops the eviction where it stands. ``sorted_from`` is an index from which the times never
    decrease: past it the eviction point is found by bisection, before it entry by entry.
    """

    __slots__ = ("cols", "head", "sorted_from", "times")

    def __init__(self, width: int) -> None:
        self.times = array("d")
        self.cols = tuple(array("d") for _ in range(width))
        self.head = 0
        self.sorted_from = 0

    def __len__(self) -> int:
        return len(self.times) - self.head

    def append(self, t: float, values: tuple[float, ...]) -> None:
        times = self.times
        end = len(times)
        if end > self.head and t < times[-1]:
            self.sorted_from = end
        times.append(t)
        for col, v in zip(self.cols, values, strict=True):
            col.append(v)

    def extend(self, ts: Sequence[float], columns: tuple[Sequence[float], ...], ordered: bool | None = None) -> None:
        """``ordered``: whether ``ts`` never decreases, when the caller already knows."""
        times = self.times
        end = len(times)
        previous = times[-1] if end > self.head else -math.inf
        if ordered is None:
            ordered = nondecreasing(ts)
        if ts[0] < previous or not ordered:
            last = previous
            for i, t in enumerate(ts):
                if t < last:
                    self.sorted_from = end + i
                last = t
        # array.fromlist reads a list in C about twice as fast as extend() reads any iterable.
        times.fromlist(ts if type(ts) is list else list(ts))
        for col, vs in zip(self.cols, columns, strict=True):
            col.fromlist(vs if type(vs) is list else list(vs))

    def cut(self, cutoff: float) -> int:
        """The index of the first entry the eviction keeps (``head`` if none goes)."""
        times = self.times
        i = self.head
        end = len(times)
        stop = min(self.sorted_from, end)
        while i < stop:
            if times[i] >= cutoff:
                return i
            i += 1
        return bisect_left(times, cutoff, i, end)

    def drop(self, stop: int) -> list[float]:
        """Evict up to ``stop``; each value column's sum over the evicted entries."""
        head = self.head
        sums = [sum(col[head:stop]) for col in self.cols]
        if stop == len(self.times):
            self.clear()
            return sums
        self.head = stop
        if stop >= _COMPACT_MIN and stop * 2 >= len(self.times):
            del self.times[:stop]
            for col in self.cols:
                del col[:stop]
            self.sorted_from = max(0, self.sorted_from - stop)
            self.head = 0
        return sums

    def clear(self) -> None:
        self.times = array("d")
        self.cols = tuple(array("d") for _ in self.cols)
        self.head = 0
        self.sorted_from = 0

    def fsums(self) -> list[float]:
        head = self.head
        return [math.fsum(col[head:]) for col in self.cols]


class _VwapState:
    __slots__ = ("entries", "evicted", "latest", "pv", "v")

    def __init__(self) -> None:
        self.entries = _Entries(2)
        """Time, price*size, size."""
        self.pv = 0.0
        self.v = 0.0
        self.latest = -math.inf
        self.evicted = 0


class VwapWindow:
    """Per-product VWAP over the last ``window_s`` seconds of that product's exchange time.

    Running sums of price*size and size over the entries make each trade O(1) amortized. Sums
    that are added to and subtracted from drift, so they are recomputed exactly (``math.fsum``)
    after as many evictions as the window holds, which keeps that O(1) amortized too. Zero-size
    trades move no VWAP and are not stored, so the size sum of a non-empty window is never a
    rounding residue.

    The window edge is ``latest - window_s``, where ``latest`` is the newest exchange time seen
    for the product; entries strictly older are evicted. Out-of-order trades: one older than the
    edge is already outside the window and is only counted (``skipped["outside_window"]``); a
    late one inside the window counts, and since entries are in arrival order it leaves when the
    entries that arrived before it do, i.e. it may outlive its window by at most its lateness.
    Exact re-sorting would cost O(window) per late trade. Memory is 24 bytes per trade in the
    window.

    :meth:`add_trades` takes a product's trades of a batch in C-level loops when none of them can
    be outside the window (its oldest is within ``window_s`` of its newest and of ``latest``);
    :meth:`add_many` is the per-trade path.
    """

    def __init__(self, window_s: float) -> None:
        if not window_s > 0:
            raise ValueError("window_s must be positive")
        self.window_s = float(window_s)
        self._states: dict[str, _VwapState] = {}
        self.skipped: dict[str, int] = {OUTSIDE_WINDOW: 0}

    def add(self, product_id: str, price: float, size: float, time_s: float) -> None:
        self.add_many([(product_id, price, size, time_s)])

    def add_many(self, trades: Iterable[AcceptedTrade]) -> set[str]:
        """Add accepted trades one by one; returns the products whose VWAP may have changed."""
        states = self._states
        window = self.window_s
        touched: set[str] = set()
        outside = 0
        for pid, px, sz, t in trades:
            st = states.get(pid)
            if st is None:
                st = states[pid] = _VwapState()
            latest = st.latest
            if t > latest:
                st.latest = t
            elif t < latest - window:
                outside += 1
                continue
            touched.add(pid)
            if sz:
                pv = px * sz
                st.entries.append(t, (pv, sz))
                st.pv += pv
                st.v += sz
        if outside:
            self.skipped[OUTSIDE_WINDOW] += outside
        for pid in touched:
            self._evict(states[pid])
        return touched

    def add_trades(self, trades: TradeColumns) -> set[str]:
        """Add a batch's accepted trades; returns the products whose VWAP may have changed."""
        states = self._states
        window = self.window_s
        touched: set[str] = set()
        for pid, p in trades.by_product().items():
            st = states.get(pid)
            if st is None:
                st = states[pid] = _VwapState()
            times = p.times
            oldest, newest = (times[0], times[-1]) if p.ordered else (min(times), max(times))
            latest = max(st.latest, newest)
            if oldest < latest - window:
                touched |= self.add_many(zip(repeat(pid), p.prices, p.sizes, times))
                continue
            st.latest = latest
            touched.add(pid)
            sizes = p.sizes
            pvs = p.notional
            if 0 in sizes:
                keep = list(map(bool, sizes))
                pvs = list(compress(pvs, keep))
                sizes = list(compress(sizes, keep))
                times = list(compress(times, keep))
            if sizes:
                st.entries.extend(times, (pvs, sizes), p.ordered)
                st.pv += sum(pvs)
                st.v += sum(sizes)
            self._evict(st)
        return touched

    def _evict(self, st: _VwapState) -> None:
        entries = st.entries
        stop = entries.cut(st.latest - self.window_s)
        n = stop - entries.head
        if not n:
            return
        pv, v = entries.drop(stop)
        st.evicted += n
        if not len(entries):
            st.pv = st.v = 0.0
            st.evicted = 0
        elif st.evicted >= max(len(entries), _MIN_RECOMPUTE):
            st.pv, st.v = entries.fsums()
            st.evicted = 0
        else:
            st.pv -= pv
            st.v -= v

    def vwap(self, product_id: str) -> float | None:
        """``None`` until the product has a trade of non-zero size in its window."""
        st = self._states.get(product_id)
        if st is None or not len(st.entries):
            return None
        return st.pv / st.v

    def snapshot(self) -> dict[str, float | None]:
        return {pid: self.vwap(pid) for pid in sorted(self._states)}

    def __len__(self) -> int:
        """Entries held across all products."""
        return sum(len(st.entries) for st in self._states.values())


_OWN = object()
"""Marks a :class:`RollingQuantile` chunk whose list it made itself (samples, extendable)."""
_SMALL_CHUNK = 64
"""Fewer samples than this are added at once (into a list of the quantile's own), not kept as a chunk."""
_OWN_MAX = 4096
"""One of those lists holds at most this many samples (or the window's size) before a new one starts."""


class RollingQuantile:
    """Exact quantiles (nearest rank) of the last ``size`` samples, computed when asked.

    Samples are kept as the chunks they came in (``add_many`` keeps a reference to the sequence,
    which must not change afterwards), trimmed to the chunks that still hold one of the last
    ``size``; ``add_differences(m, values)`` adds ``m - v`` for each value without computing any of
    them. The consumer that uses it (the VWAP age p99) adds a socket read's ingest stamps thousands
    of times a second and asks about once a second, so a subtraction and a deque append per event
    bought nothing but the last query's window. Small additions (a lightly loaded stream's reads)
    go into lists of the quantile's own, so a query walks a few chunks, not thousands; it then
    selects the rank with a bounded heap rather than a sort when the rank is near either end.
    Samples must be comparable and not NaN.
    """

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("size must be positive")
        self.size = size
        self._chunks: deque[tuple[Any, Sequence[Any]]] = deque()
        self._count = 0

    def add(self, x: float) -> None:
        self._add(None, (x,))

    def add_many(self, xs: Iterable[float]) -> None:
        if not isinstance(xs, (list, tuple)):
            xs = list(xs)
        self._add(None, xs)

    def add_differences(self, minuend: int, values: Sequence[int]) -> None:
        """Add ``minuend - v`` for each of ``values`` (a batch's clock read minus its ingest stamps)."""
        self._add(minuend, values)

    def _add(self, minuend: int | None, values: Sequence[Any]) -> None:
        n = len(values)
        if not n:
            return
        chunks = self._chunks
        if n < _SMALL_CHUNK:
            last = chunks[-1] if chunks else None
            if last is not None and last[0] is _OWN and len(last[1]) < min(self.size, _OWN_MAX):
                own = last[1]
            else:
                own = []
                chunks.append((_OWN, own))
            own += values if minuend is None else map(minuend.__sub__, values)  # type: ignore[operator]
        else:
            chunks.append((minuend, values))
        self._count += n
        size = self.size
        while self._count - len(chunks[0][1]) >= size:
            self._count -= len(chunks.popleft()[1])

    def _window(self) -> list[Any]:
        """The last ``size`` samples (in no particular order)."""
        out: list[Any] = []
        need = self.size
        for minuend, values in reversed(self._chunks):
            take = values if len(values) <= need else values[len(values) - need :]
            out += map(minuend.__sub__, take) if type(minuend) is int else take
            need -= len(take)
            if not need:
                break
        return out

    def quantile(self, q: float) -> float | None:
        """The smallest sample with at least ``q`` of the window at or below it; ``None`` if empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError("q must be within [0, 1]")
        window = self._window()
        n = len(window)
        if n == 0:
            return None
        k = min(max(math.ceil(q * n - 1e-9) - 1, 0), n - 1)
        if n - k <= n // 16:
            return heapq.nlargest(n - k, window)[-1]
        if k < n // 16:
            return heapq.nsmallest(k + 1, window)[-1]
        window.sort()
        return window[k]

    def __len__(self) -> int:
        return min(self._count, self.size)


class _VolState:
    __slots__ = ("evicted", "head", "last_price", "last_time", "returns", "s1", "s2", "times")

    def __init__(self, n: int, price: float, time_s: float) -> None:
        self.times: deque[float] = deque((time_s,), maxlen=n)
        self.returns = array("d")
        self.head = 0
        self.last_price = price
        self.last_time = time_s
        self.s1 = 0.0
        self.s2 = 0.0
        self.evicted = 0


class VolatilityWindow:
    """Per-product annualized volatility from the log returns of the last ``n`` trades.

    With the ``m = n - 1`` log returns ``r_i = ln(p_i / p_{i-1})`` of the last ``n`` trades,
    spanning exchange times ``t_first .. t_last``::

        stdev        = sqrt((sum r^2 - (sum r)^2 / m) / (m - 1))     (sample stdev)
        mean_dt      = (t_last - t_first) / m                         (seconds per return)
        sigma_annual = stdev * sqrt(SECONDS_PER_YEAR / mean_dt),  SECONDS_PER_YEAR = 365*24*3600

    i.e. per-trade variance scaled by the number of trade intervals in a year at the current
    trading pace; the result is a fraction (0.081 = 8.1 %). ``None`` until there are two returns
    and ``mean_dt > 0``. Sums of r and r^2 roll in O(1), are recomputed exactly after every ``m``
    evictions (float drift), and a variance below zero from rounding is taken as 0.

    Returns follow exchange-time order: a trade older than the product's newest one would add two
    spurious returns (there and back), so it is only counted (``skipped["out_of_order"]``).
    :meth:`add_trades` takes a product's trades of a batch in C-level loops when they are in
    time order; :meth:`add_many` is the per-trade path.
    """

    def __init__(self, n: int) -> None:
        if n < 3:
            raise ValueError("n must be at least 3 (two returns)")
        self.n = n
        self._states: dict[str, _VolState] = {}
        self.skipped: dict[str, int] = {OUT_OF_ORDER: 0}

    def add(self, product_id: str, price: float, size: float, time_s: float) -> None:
        self.add_many([(product_id, price, size, time_s)])

    def add_many(self, trades: Iterable[AcceptedTrade]) -> set[str]:
        """Add accepted trades one by one; returns the products whose volatility may have changed."""
        states = self._states
        n = self.n
        max_returns = n - 1
        log = math.log
        touched: set[str] = set()
        late = 0
        for pid, px, _sz, t in trades:
            st = states.get(pid)
            if st is None:
                states[pid] = _VolState(n, px, t)
                continue
            if t < st.last_time:
                late += 1
                continue
            r = log(px / st.last_price)
            st.last_price = px
            st.last_time = t
            st.times.append(t)
            returns = st.returns
            returns.append(r)
            st.s1 += r
            st.s2 += r * r
            if len(returns) - st.head > max_returns:
                old = returns[st.head]
                st.s1 -= old
                st.s2 -= old * old
                self._evicted(st, 1)
            touched.add(pid)
        if late:
            self.skipped[OUT_OF_ORDER] += late
        return touched

    def add_trades(self, trades: TradeColumns) -> set[str]:
        """Add a batch's accepted trades; returns the products whose volatility may have changed."""
        states = self._states
        max_returns = self.n - 1
        log = math.log
        touched: set[str] = set()
        for pid, p in trades.by_product().items():
            prices = p.prices
            times = p.times
            st = states.get(pid)
            if st is None:
                st = states[pid] = _VolState(self.n, prices[0], times[0])
                prices = prices[1:]
                times = times[1:]
                if not prices:
                    continue
            if not p.ordered or times[0] < st.last_time:
                touched |= self.add_many(zip(repeat(pid), prices, repeat(0.0), times))
                continue
            previous = chain((st.last_price,), islice(prices, len(prices) - 1))
            rs = list(map(log, map(truediv, prices, previous)))
            st.last_price = prices[-1]
            st.last_time = times[-1]
            st.times.extend(times)
            returns = st.returns
            returns.fromlist(rs)
            st.s1 += sum(rs)
            st.s2 += sum(map(mul, rs, rs))
            excess = len(returns) - st.head - max_returns
            if excess > 0:
                old = returns[st.head : st.head + excess]
                st.s1 -= sum(old)
                st.s2 -= sum(map(mul, old, old))
                self._evicted(st, excess)
            touched.add(pid)
        return touched

    def _evicted(self, st: _VolState, k: int) -> None:
        """The ``k`` oldest returns are out of the sums: drop them, and recompute the sums when due."""
        returns = st.returns
        head = st.head = st.head + k
        st.evicted += k
        if st.evicted >= self.n - 1:
            live = returns[head:]
            st.s1 = math.fsum(live)
            st.s2 = math.fsum(map(mul, live, live))
            st.evicted = 0
        if head >= _COMPACT_MIN and head * 2 >= len(returns):
            del returns[:head]
            st.head = 0

    def volatility(self, product_id: str) -> float | None:
        st = self._states.get(product_id)
        if st is None:
            return None
        m = len(st.returns) - st.head
        if m < 2:
            return None
        mean_dt = (st.times[-1] - st.times[0]) / m
        if not mean_dt > 0:
            return None
        var = (st.s2 - st.s1 * st.s1 / m) / (m - 1)
        if var < 0.0:
            var = 0.0
        return math.sqrt(var * SECONDS_PER_YEAR / mean_dt)

    def snapshot(self) -> dict[str, float | None]:
        return {pid: self.volatility(pid) for pid in sorted(self._states)}


class _VolumeState:
    __slots__ = ("entries", "evicted", "usd")

    def __init__(self) -> None:
        self.entries = _Entries(1)
        """Time, price*size."""
        self.usd = 0.0
        self.evicted = 0


class VolumeWindow:
    """Per-product USD notional (price*size) and trade count over the last ``window_s`` seconds.

    The clock is the newest exchange time seen across all products (the stream's clock), not the
    product's own: a product that stops trading must see its volume fall to zero as the market
    moves on, which a per-product clock would freeze at the last minute it traded. Products not
    in a batch are evicted when read. A trade older than the window edge is only counted
    (``skipped["outside_window"]``); a late one inside it counts and leaves in arrival order (see
    :class:`VwapWindow`). If the whole stream stops, the figures hold still: exchange time does
    not move. :meth:`add_trades` takes a batch in C-level loops when none of its trades can be
    outside the window; :meth:`add_many` is the per-trade path.
    """

    def __init__(self, window_s: float = 60.0) -> None:
        if not window_s > 0:
            raise ValueError("window_s must be positive")
        self.window_s = float(window_s)
        self.now = -math.inf
        """The stream's clock: the newest exchange time seen."""
        self._states: dict[str, _VolumeState] = {}
        self.skipped: dict[str, int] = {OUTSIDE_WINDOW: 0}

    def add(self, product_id: str, price: float, size: float, time_s: float) -> None:
        self.add_many([(product_id, price, size, time_s)])

    def add_many(self, trades: Iterable[AcceptedTrade]) -> None:
        states = self._states
        window = self.window_s
        now = self.now
        outside = 0
        for pid, px, sz, t in trades:
            if t > now:
                now = t
            elif t < now - window:
                outside += 1
                continue
            st = states.get(pid)
            if st is None:
                st = states[pid] = _VolumeState()
            usd = px * sz
            st.entries.append(t, (usd,))
            st.usd += usd
        self.now = now
        if outside:
            self.skipped[OUTSIDE_WINDOW] += outside
        self.evict()

    def add_trades(self, trades: TradeColumns) -> None:
        times = trades.times
        if not len(times):
            self.evict()
            return
        now = max(self.now, max(times))
        if min(times) < now - self.window_s:
            self.add_many(trades.tuples())
            return
        self.now = now
        states = self._states
        for pid, p in trades.by_product().items():
            st = states.get(pid)
            if st is None:
                st = states[pid] = _VolumeState()
            usd = p.notional
            st.entries.extend(p.times, (usd,), p.ordered)
            st.usd += sum(usd)
        self.evict()

    def evict(self) -> None:
        """Drop every product's trades older than the stream's clock minus the window."""
        cutoff = self.now - self.window_s
        for st in self._states.values():
            entries = st.entries
            stop = entries.cut(cutoff)
            n = stop - entries.head
            if not n:
                continue
            (usd,) = entries.drop(stop)
            st.evicted += n
            if not len(entries):
                st.usd = 0.0
                st.evicted = 0
            elif st.evicted >= max(len(entries), _MIN_RECOMPUTE):
                (st.usd,) = entries.fsums()
                st.evicted = 0
            else:
                st.usd -= usd

    def volume(self, product_id: str) -> tuple[float, int]:
        """``(usd, trades)`` in the window, for the stream's clock as of the last batch."""
        st = self._states.get(product_id)
        if st is None or not len(st.entries):
            return 0.0, 0
        return max(st.usd, 0.0), len(st.entries)

    def snapshot(self) -> dict[str, tuple[float, int]]:
        self.evict()
        return {pid: self.volume(pid) for pid in sorted(self._states)}

    def figures(self) -> dict[str, tuple[float, int]]:
        """:meth:`volume` of every product as of the last batch, which evicted them all (unsorted)."""
        return {pid: self.volume(pid) for pid in self._states}
