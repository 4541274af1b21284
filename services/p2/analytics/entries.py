"""A window's entries as ``array('d')`` columns in arrival order: the storage VWAP and volume share."""

from __future__ import annotations

import math
import struct
from array import array
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from itertools import repeat
from operator import lt, mul
from typing import Any

from mercurystream.shared.event import nondecreasing

COMPACT_MIN = 64
"""A column drops its evicted head once it is this long and at least a quarter of the column: small, since a
window holds columns per product and each may keep this many dead entries."""
MIN_RECOMPUTE = 64
"""Running sums are recomputed exactly after at least this many evictions (and :data:`RECOMPUTE_EVERY` times
as many as the window holds)."""
RECOMPUTE_EVERY = 8
"""How many windowfuls of evictions the running sums go between exact recomputes (an exact ``fsum``
costs tens of ns an entry: after every windowful, it cost VWAP a third of its time)."""
SHRINK = 16
"""A running sum that falls below ``1 / SHRINK`` of the largest it was since the last recompute is
recomputed at once: what it still holds may be far smaller than what left, and so than the rounding
the subtractions left behind (a burst of large trades leaving a window of small ones)."""


def extend_doubles(column: array, values: Sequence[float]) -> None:
    """Append ``values`` to an ``array('d')`` column, packed as native doubles in one ``struct`` call.

    ``array.fromlist`` converts each item through the generic ``PyArg_Parse``; ``struct`` reads each
    float directly, so the same values go in for fewer instructions, whatever the list's length.
    """
    column.frombytes(struct.pack(f"{len(values)}d", *values))


class Entries:
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
        extend_doubles(times, ts)
        for col, vs in zip(self.cols, columns, strict=True):
            extend_doubles(col, vs)

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
        if stop >= COMPACT_MIN and stop * 4 >= len(self.times):
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


def over_budget(states: Mapping[str, Any], held: int, max_entries: int) -> dict[str, int]:
    """How many of its oldest entries each product gives up so that ``held`` is within ``max_entries``.

    The largest windows give first, down to a common level (water-filling), so a product flooding
    the stream shortens its own window before a quiet product loses anything; a sixteenth of the
    budget is freed beyond the bound so the next batches do not trim again at once.
    """
    if held <= max_entries:
        return {}
    excess = held - max_entries + max_entries // 16
    sizes = sorted(((len(st.entries), pid) for pid, st in states.items()), reverse=True)
    level = 0
    taken = 0
    for i, (n, _) in enumerate(sizes):
        below = sizes[i + 1][0] if i + 1 < len(sizes) else 0
        if taken + (i + 1) * (n - below) >= excess:
            level = n - -(-(excess - taken) // (i + 1))
            break
        taken += (i + 1) * (n - below)
    return {pid: n - max(level, 0) for n, pid in sizes if n > level}


class SumsState:
    """One product's window: its :class:`Entries` and the running sum of each value column."""

    __slots__ = ("entries", "evicted", "peaks", "sums")

    def __init__(self, width: int) -> None:
        self.entries = Entries(width)
        self.sums = [0.0] * width
        self.peaks = [0.0] * width
        """The largest each sum has been since it was last recomputed exactly."""
        self.evicted = 0
        """Entries evicted since the sums were last recomputed exactly."""


class SummedWindows:
    """Per-product windows of entries with running sums, at most ``max_entries`` held across products.

    What VWAP and volume share: sums of positive values, added to and subtracted from, drift, so
    they are recomputed exactly (``math.fsum``) after :data:`RECOMPUTE_EVERY` times as many
    evictions as the window holds, which keeps each trade O(1) amortized, and as soon as one falls
    below ``1 / SHRINK`` of its peak. Each add or subtract rounds by at most half an ulp of the
    peak, so the relative drift of a window of ``n`` trades stays under about
    ``2 * RECOMPUTE_EVERY * SHRINK * n`` ulps (about 1e-9 at the default ``WINDOW_TRADES``). Past
    ``max_entries``, :meth:`trim` shortens the largest windows to their newest entries
    (``trimmed`` counts what left early). Subclasses decide what is stored and when it is evicted.
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self._states: dict[str, Any] = {}
        self.held = 0
        """Entries across products."""
        self.trimmed = 0
        """Entries :meth:`trim` let go before their time."""

    def _append(self, st: SumsState, t: float, values: tuple[float, ...]) -> None:
        st.entries.append(t, values)
        sums = st.sums
        peaks = st.peaks
        for i, v in enumerate(values):
            sums[i] += v
            if sums[i] > peaks[i]:
                peaks[i] = sums[i]
        self.held += 1

    def _extend(
        self, st: SumsState, ts: Sequence[float], columns: tuple[Sequence[float], ...], ordered: bool | None
    ) -> None:
        st.entries.extend(ts, columns, ordered)
        sums = st.sums
        for i, col in enumerate(columns):
            sums[i] += sum(col)
        st.peaks = list(map(max, st.peaks, sums))
        self.held += len(ts)

    def _drop_to(self, st: SumsState, stop: int) -> None:
        """Evict ``st``'s entries before ``stop`` and take them out of its sums."""
        entries = st.entries
        n = stop - entries.head
        if not n:
            return
        self.held -= n
        dropped = entries.drop(stop)
        st.evicted += n
        if not len(entries):
            st.sums = [0.0] * len(st.sums)
            st.peaks = [0.0] * len(st.sums)
            st.evicted = 0
            return
        sums = [a - b for a, b in zip(st.sums, dropped, strict=True)]
        if st.evicted >= max(RECOMPUTE_EVERY * len(entries), MIN_RECOMPUTE) or any(
            map(lt, map(mul, sums, repeat(SHRINK)), st.peaks)
        ):
            sums = entries.fsums()
            st.peaks = list(sums)
            st.evicted = 0
        st.sums = sums

    def trim(self) -> list[str]:
        """Keep at most ``max_entries`` across products, the largest windows giving first; the products trimmed."""
        cuts = over_budget(self._states, self.held, self.max_entries)
        for pid, k in cuts.items():
            st = self._states[pid]
            self._drop_to(st, st.entries.head + k)
            self.trimmed += k
        return list(cuts)

    def __len__(self) -> int:
        """Entries held across all products."""
        return sum(len(st.entries) for st in self._states.values())
