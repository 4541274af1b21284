"""The analytics' arithmetic as plain classes: no event loop, no clock reads, no I/O.

Consumers feed these a batch at a time. :class:`TradeFilter` decides once per trade whether it
counts (so a duplicate or a malformed price never moves an analytic) and turns the event dict
into an ``(product_id, price, size, exchange_time_s)`` tuple; the windows take those tuples.
Every window runs on exchange time, so a replay at any speed produces the figures the live
stream did.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from collections.abc import Iterable
from typing import Any

from sortedcontainers import SortedList

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


class TradeFilter:
    """Accept each valid trade once; count everything else under a named reason.

    Checks, in order: ``product_id`` a non-empty string, ``trade_id`` an int (without one a
    trade cannot be deduplicated, so it is skipped rather than risk counting it twice), ``price``
    a finite number > 0, ``last_size`` a finite number >= 0 (bools and numeric strings are not
    numbers here: P1 has already converted every valid trade), ``time`` a parseable ISO-8601
    time, and finally not a duplicate. Duplicates are found among the last ``lru_max`` distinct
    trade ids of the same product (a set for lookup, a deque for age, O(1) per trade); only
    accepted trades enter it, so an invalid first copy does not hide a valid second one.
    A product id never seen before is tracked only while fewer than ``max_products`` are,
    which bounds memory and metric label cardinality when a feed sends garbage ids.
    """

    def __init__(self, lru_max: int, max_products: int = 1024) -> None:
        if lru_max <= 0:
            raise ValueError("lru_max must be positive")
        self.lru_max = lru_max
        self.max_products = max_products
        self._parse = IsoTimeParser().parse
        self._seen: dict[str, tuple[set[int], deque[int]]] = {}
        self.accepted = 0
        self.skipped: dict[str, int] = dict.fromkeys(FILTER_REASONS, 0)
        self.last_rejected: dict[str, dict[str, Any]] = {}
        """The most recent event skipped for each reason, for sampled logging."""

    def filter(self, events: Iterable[dict[str, Any]]) -> list[AcceptedTrade]:
        """The trades among ``events`` that count, in order."""
        out: list[AcceptedTrade] = []
        append = out.append
        parse = self._parse
        seen_by_product = self._seen
        lru_max = self.lru_max
        skipped = self.skipped
        last_rejected = self.last_rejected
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
                seen = seen_by_product.get(pid)
                if seen is None:
                    seen = self._new_product(pid)
                if seen is None:
                    reason = TOO_MANY_PRODUCTS
                elif tid in seen[0]:
                    reason = DUPLICATE
                else:
                    ids, order = seen
                    ids.add(tid)
                    order.append(tid)
                    if len(order) > lru_max:
                        ids.discard(order.popleft())
                    append((pid, px, sz, t))
                    continue
            skipped[reason] += 1
            last_rejected[reason] = ev
        self.accepted += len(out)
        return out

    def _new_product(self, pid: str) -> tuple[set[int], deque[int]] | None:
        if len(self._seen) >= self.max_products:
            return None
        seen: tuple[set[int], deque[int]] = (set(), deque())
        self._seen[pid] = seen
        return seen


class _VwapState:
    __slots__ = ("entries", "evicted", "latest", "pv", "v")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, float, float]] = deque()
        self.pv = 0.0
        self.v = 0.0
        self.latest = -math.inf
        self.evicted = 0


class VwapWindow:
    """Per-product VWAP over the last ``window_s`` seconds of that product's exchange time.

    Running sums of price*size and size over a deque make each trade O(1) amortized. Sums that
    are added to and subtracted from drift, so they are recomputed exactly (``math.fsum``) after
    as many evictions as the window holds, which keeps that O(1) amortized too. Zero-size trades
    move no VWAP and are not stored, so the size sum of a non-empty window is never a rounding
    residue.

    The window edge is ``latest - window_s``, where ``latest`` is the newest exchange time seen
    for the product; entries strictly older are evicted. Out-of-order trades: one older than the
    edge is already outside the window and is only counted (``skipped["outside_window"]``); a
    late one inside the window counts, and since the deque is in arrival order it leaves when the
    entries that arrived before it do, i.e. it may outlive its window by at most its lateness.
    Exact re-sorting would cost O(window) per late trade. Memory is one entry per trade in the
    window.
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
        """Add accepted trades; returns the products whose VWAP may have changed."""
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
                st.entries.append((t, pv, sz))
                st.pv += pv
                st.v += sz
        if outside:
            self.skipped[OUTSIDE_WINDOW] += outside
        for pid in touched:
            self._evict(states[pid])
        return touched

    def _evict(self, st: _VwapState) -> None:
        entries = st.entries
        cutoff = st.latest - self.window_s
        if not entries or entries[0][0] >= cutoff:
            return
        pv = st.pv
        v = st.v
        n = 0
        popleft = entries.popleft
        while entries and entries[0][0] < cutoff:
            _, e_pv, e_v = popleft()
            pv -= e_pv
            v -= e_v
            n += 1
        st.evicted += n
        if not entries:
            st.pv = st.v = 0.0
            st.evicted = 0
        elif st.evicted >= max(len(entries), _MIN_RECOMPUTE):
            st.pv = math.fsum(e[1] for e in entries)
            st.v = math.fsum(e[2] for e in entries)
            st.evicted = 0
        else:
            st.pv = pv
            st.v = v

    def vwap(self, product_id: str) -> float | None:
        """``None`` until the product has a trade of non-zero size in its window."""
        st = self._states.get(product_id)
        if st is None or not st.entries:
            return None
        return st.pv / st.v

    def snapshot(self) -> dict[str, float | None]:
        return {pid: self.vwap(pid) for pid in sorted(self._states)}

    def __len__(self) -> int:
        """Entries held across all products."""
        return sum(len(st.entries) for st in self._states.values())


class RollingQuantile:
    """Exact quantiles (nearest rank) of the last ``size`` samples.

    Adding a sample is O(1): it goes into a bounded deque. The sorted view (a ``SortedList``) is
    brought up to date when a quantile is asked for: incrementally, O(log n) per sample added
    since, when few were; by re-sorting the window (C speed) when more than ``size // 8`` were.
    A consumer adding 10^5 samples a second and asking once a second pays for one sort, not
    10^5 sorted inserts and removals (over a microsecond each); a detector asking every 100 samples
    pays the incremental price. Samples must be comparable and not NaN.
    """

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("size must be positive")
        self.size = size
        self._window: deque[float] = deque(maxlen=size)
        self._sorted: SortedList = SortedList()
        self._added: list[float] = []
        self._evicted: list[float] = []
        self._stale = False
        self._max_incremental = max(16, size // 8)

    def add(self, x: float) -> None:
        window = self._window
        if not self._stale:
            if len(self._added) >= self._max_incremental:
                self._go_stale()
            else:
                self._added.append(x)
                if len(window) == self.size:
                    self._evicted.append(window[0])
        window.append(x)

    def add_many(self, xs: Iterable[float]) -> None:
        if not isinstance(xs, (list, tuple)):
            xs = list(xs)
        if not xs:
            return
        window = self._window
        if not self._stale and len(self._added) + len(xs) > self._max_incremental:
            self._go_stale()
        if self._stale:
            window.extend(xs)
            return
        size = self.size
        evicted = self._evicted
        append = window.append
        for x in xs:
            if len(window) == size:
                evicted.append(window[0])
            append(x)
        self._added.extend(xs)

    def _go_stale(self) -> None:
        self._stale = True
        self._added.clear()
        self._evicted.clear()

    def _sync(self) -> None:
        if self._stale:
            self._sorted = SortedList(self._window)
            self._stale = False
            return
        if self._added:
            sl = self._sorted
            sl.update(self._added)
            for x in self._evicted:
                sl.remove(x)
            self._added.clear()
            self._evicted.clear()

    def quantile(self, q: float) -> float | None:
        """The smallest sample with at least ``q`` of the window at or below it; ``None`` if empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError("q must be within [0, 1]")
        n = len(self._window)
        if n == 0:
            return None
        self._sync()
        k = math.ceil(q * n - 1e-9) - 1
        return self._sorted[min(max(k, 0), n - 1)]

    def __len__(self) -> int:
        return len(self._window)


class _VolState:
    __slots__ = ("evicted", "last_price", "last_time", "returns", "s1", "s2", "times")

    def __init__(self, n: int, price: float, time_s: float) -> None:
        self.times: deque[float] = deque((time_s,), maxlen=n)
        self.returns: deque[float] = deque()
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
    and ``mean_dt > 0``. Sums of r and r^2 roll over a deque in O(1), are recomputed exactly after
    every ``m`` evictions (float drift), and a variance below zero from rounding is taken as 0.

    Returns follow exchange-time order: a trade older than the product's newest one would add two
    spurious returns (there and back), so it is only counted (``skipped["out_of_order"]``).
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
        """Add accepted trades; returns the products whose volatility may have changed."""
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
            if len(returns) > max_returns:
                old = returns.popleft()
                st.s1 -= old
                st.s2 -= old * old
                st.evicted += 1
                if st.evicted >= max_returns:
                    st.s1 = math.fsum(returns)
                    st.s2 = math.fsum(x * x for x in returns)
                    st.evicted = 0
            touched.add(pid)
        if late:
            self.skipped[OUT_OF_ORDER] += late
        return touched

    def volatility(self, product_id: str) -> float | None:
        st = self._states.get(product_id)
        if st is None:
            return None
        m = len(st.returns)
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
        self.entries: deque[tuple[float, float]] = deque()
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
    not move.
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
            st.entries.append((t, usd))
            st.usd += usd
        self.now = now
        if outside:
            self.skipped[OUTSIDE_WINDOW] += outside
        self.evict()

    def evict(self) -> None:
        """Drop every product's trades older than the stream's clock minus the window."""
        cutoff = self.now - self.window_s
        for st in self._states.values():
            entries = st.entries
            if not entries or entries[0][0] >= cutoff:
                continue
            usd = st.usd
            n = 0
            popleft = entries.popleft
            while entries and entries[0][0] < cutoff:
                usd -= popleft()[1]
                n += 1
            st.evicted += n
            if not entries:
                st.usd = 0.0
                st.evicted = 0
            elif st.evicted >= max(len(entries), _MIN_RECOMPUTE):
                st.usd = math.fsum(e[1] for e in entries)
                st.evicted = 0
            else:
                st.usd = usd

    def volume(self, product_id: str) -> tuple[float, int]:
        """``(usd, trades)`` in the window, for the stream's clock as of the last batch."""
        st = self._states.get(product_id)
        if st is None or not st.entries:
            return 0.0, 0
        return max(st.usd, 0.0), len(st.entries)

    def snapshot(self) -> dict[str, tuple[float, int]]:
        self.evict()
        return {pid: self.volume(pid) for pid in sorted(self._states)}
