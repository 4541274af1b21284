"""VWAP: per product, sum(price * size) / sum(size) over the last ``window_s`` seconds of its exchange time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import compress
from operator import mul
from typing import Any

from mercurystream.p2.analytics.entries import SummedWindows, SumsState
from mercurystream.shared.event import nondecreasing

OUTSIDE_WINDOW = "outside_window"


class _VwapState(SumsState):
    """Entries of time, price*size and size; ``sums`` of the last two."""

    __slots__ = ("latest",)

    def __init__(self) -> None:
        super().__init__(2)
        self.latest = -math.inf


class VwapWindow(SummedWindows):
    """Per-product VWAP over the last ``window_s`` seconds of that product's exchange time.

    Running sums of price*size and size over the entries (:class:`SummedWindows`) make each trade
    O(1) amortized. Zero-size trades move no VWAP and are not stored, so the size sum of a non-empty
    window is never a rounding residue.

    The window edge is ``latest - window_s``, where ``latest`` is the newest exchange time seen
    for the product; entries strictly older are evicted. Out-of-order trades: one older than the
    edge is already outside the window and is only counted (``skipped["outside_window"]``); a
    late one inside the window counts, and since entries are in arrival order it leaves when the
    entries that arrived before it do, i.e. it may outlive its window by at most its lateness.
    Exact re-sorting would cost O(window) per late trade. Memory is 24 bytes per trade in the
    window, and at most ``max_entries`` trades are held across products (:meth:`trim`).
    """

    def __init__(self, window_s: float, max_entries: int = 1 << 62) -> None:
        if not window_s > 0:
            raise ValueError("window_s must be positive")
        super().__init__(max_entries)
        self.window_s = float(window_s)
        self.skipped: dict[str, int] = {OUTSIDE_WINDOW: 0}

    def observe(self, product_id: str, price: float, size: float, time_s: float) -> None:
        """The reference: add one accepted trade and evict what it pushes out of the window."""
        st = self._states.get(product_id)
        if st is None:
            st = self._states[product_id] = _VwapState()
        if time_s > st.latest:
            st.latest = time_s
        elif time_s < st.latest - self.window_s:
            self.skipped[OUTSIDE_WINDOW] += 1
            return
        if size:
            self._append(st, time_s, (price * size, size))
        self._evict(st)

    def try_batch(self, product_id: str, columns: Sequence[Sequence[float]], hits: list[tuple[int, Any]]) -> bool:
        """A product's trades of which none can be outside the window: appended as columns, evicted once."""
        prices, sizes, times = columns
        st = self._states.get(product_id)
        ordered = nondecreasing(times)
        oldest, newest = (times[0], times[-1]) if ordered else (min(times), max(times))
        latest = newest if st is None else max(st.latest, newest)
        if oldest < latest - self.window_s:
            return False
        if st is None:
            st = self._states[product_id] = _VwapState()
        st.latest = latest
        pvs: Sequence[float] = list(map(mul, prices, sizes))
        if 0 in sizes:
            keep = list(map(bool, sizes))
            pvs = list(compress(pvs, keep))
            sizes = list(compress(sizes, keep))
            times = list(compress(times, keep))
        if sizes:
            self._extend(st, times, (pvs, sizes), ordered)
        self._evict(st)
        return True

    def _evict(self, st: _VwapState) -> None:
        self._drop_to(st, st.entries.cut(st.latest - self.window_s))

    def vwap(self, product_id: str) -> float | None:
        """``None`` until the product has a trade of non-zero size in its window."""
        st = self._states.get(product_id)
        if st is None or not len(st.entries):
            return None
        pv, v = st.sums
        return pv / v

    def snapshot(self) -> dict[str, float | None]:
        return {pid: self.vwap(pid) for pid in sorted(self._states)}
