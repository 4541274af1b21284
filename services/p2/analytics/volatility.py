"""Volatility: per product, the annualized standard deviation of the log returns of its last ``n`` trades."""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Sequence
from itertools import chain, islice
from operator import mul, truediv
from typing import Any

from mercurystream.p2.analytics.entries import COMPACT_MIN, extend_doubles
from mercurystream.shared.event import nondecreasing

SECONDS_PER_YEAR = 365 * 24 * 3600
"""Crypto trades around the clock, so a year is every second of 365 days."""
OUT_OF_ORDER = "out_of_order"


def log_return(price: float, previous: float) -> float:
    """``ln(price / previous)``, finite for any two positive finite prices.

    The ratio of two extreme prices (1e308 after 1e-308) overflows to infinity or underflows to 0,
    whose log is infinite or raises; the difference of the two logs is then the same return, exact
    enough and finite. The common case keeps the one division and one log.
    """
    ratio = price / previous
    if 0.0 < ratio < math.inf:
        return math.log(ratio)
    return math.log(price) - math.log(previous)


def _returns(prices: Sequence[float], previous: float) -> list[float]:
    """The log return of each price from the one before it (``previous`` before the first), in C-level passes."""
    before = chain((previous,), islice(prices, len(prices) - 1))
    try:
        rs = list(map(math.log, map(truediv, prices, before)))
        if math.isfinite(sum(rs)):
            return rs
    except ValueError:  # a ratio that underflowed to 0
        pass
    # Or one that overflowed: the returns of extreme prices, one by one.
    return list(map(log_return, prices, chain((previous,), islice(prices, len(prices) - 1))))


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
    """

    def __init__(self, n: int) -> None:
        if n < 3:
            raise ValueError("n must be at least 3 (two returns)")
        self.n = n
        self._states: dict[str, _VolState] = {}
        self.skipped: dict[str, int] = {OUT_OF_ORDER: 0}

    def observe(self, product_id: str, price: float, time_s: float) -> None:
        """The reference: add one accepted trade's return."""
        st = self._states.get(product_id)
        if st is None:
            self._states[product_id] = _VolState(self.n, price, time_s)
            return
        if time_s < st.last_time:
            self.skipped[OUT_OF_ORDER] += 1
            return
        r = log_return(price, st.last_price)
        st.last_price = price
        st.last_time = time_s
        st.times.append(time_s)
        st.returns.append(r)
        st.s1 += r
        st.s2 += r * r
        if len(st.returns) - st.head > self.n - 1:
            old = st.returns[st.head]
            st.s1 -= old
            st.s2 -= old * old
            self._evicted(st, 1)

    def try_batch(self, product_id: str, columns: Sequence[Sequence[float]], hits: list[tuple[int, Any]]) -> bool:
        """A product's trades in time order from its last one: their returns in C-level passes.

        When they make at least the ``n - 1`` returns the window holds, only those are computed:
        the window is then their returns alone, whatever it held, and the sums are taken anew."""
        prices, times = columns
        st = self._states.get(product_id)
        if st is not None and times[0] < st.last_time:
            return False
        if not nondecreasing(times):
            return False
        if st is None:
            st = self._states[product_id] = _VolState(self.n, prices[0], times[0])
            prices = prices[1:]
            times = times[1:]
            if not prices:
                return True
        m = self.n - 1
        k = len(prices)
        if k >= m:
            base = st.last_price if k == m else prices[k - m - 1]
            rs = _returns(prices[k - m :], base)
            st.returns = array("d")
            extend_doubles(st.returns, rs)
            st.head = 0
            st.s1 = math.fsum(rs)
            st.s2 = math.fsum(map(mul, rs, rs))
            st.evicted = 0
        else:
            rs = _returns(prices, st.last_price)
            returns = st.returns
            extend_doubles(returns, rs)
            st.s1 += sum(rs)
            st.s2 += sum(map(mul, rs, rs))
            excess = len(returns) - st.head - m
            if excess > 0:
                old = returns[st.head : st.head + excess]
                st.s1 -= sum(old)
                st.s2 -= sum(map(mul, old, old))
                self._evicted(st, excess)
        st.last_price = prices[-1]
        st.last_time = times[-1]
        st.times.extend(times)
        return True

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
        if head >= COMPACT_MIN and head * 2 >= len(returns):
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
