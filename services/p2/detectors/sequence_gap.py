"""``sequence_gap``: match trade ids skipped and still missing a window of events later."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mercurystream.p2.detectors.duplicate import MAX_PRODUCTS
from mercurystream.shared.event import increasing
from mercurystream.shared.id_ranges import fill


class _GapState:
    __slots__ = ("high", "n", "ranges")

    def __init__(self, trade_id: int) -> None:
        self.high = trade_id
        self.n = 1
        # [lo, hi, deadline]: ids lo..hi skipped and not arrived; confirmed once n >= deadline.
        # Sorted by lo, which is also creation order, so deadlines never decrease along the list.
        self.ranges: list[list[int]] = []


class SequenceGapDetector:
    """Per product, match trade ids skipped and still missing ``window`` events later.

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

    A ``gap`` control event from P1 (:meth:`notice`) confirms its ids at once, counting each id once
    whichever of the notice and the window comes first.
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

    def observe(self, product_id: str, trade_id: int) -> tuple[list[list[int]], int] | None:
        """The reference: one match event; the ``[lo, hi]`` ranges it confirms missing and their size (counted)."""
        st = self._state.get(product_id)
        if st is None:
            if len(self._state) >= MAX_PRODUCTS:
                self.untracked += 1
            else:
                self._state[product_id] = _GapState(trade_id)
            return None
        n = st.n = st.n + 1
        high = st.high
        ranges = st.ranges
        if trade_id == high + 1:
            st.high = trade_id
        elif trade_id > high:
            ranges.append([high + 1, trade_id - 1, n + self.window])
            st.high = trade_id
        elif ranges:
            fill(ranges, trade_id)
        if not ranges or ranges[0][2] > n:
            return None
        confirmed = _confirm(ranges, n)
        missing = sum(hi - lo + 1 for lo, hi in confirmed)
        self.count += missing
        return confirmed, missing

    def notice(self, product_id: str, first: int, last: int) -> tuple[list[list[int]], int] | None:
        """P1 announced ids ``first..last`` lost upstream: confirm now those not yet seen nor counted.

        Pending ids in the range are confirmed at once (the venue said so; no need to wait for the
        window); ids above ``high`` in it become counted and ``high`` moves to ``last``, so the later
        trade that reveals the same jump finds nothing missing. Ids at or below ``high`` and not
        pending have arrived or were counted already: never counted twice. Ids between ``high`` and
        ``first`` that P1 did not call lost (lost between P1 and here) are pending as usual. Returns
        the confirmed ``[lo, hi]`` ranges and their size, like :meth:`observe`.
        """
        st = self._state.get(product_id)
        confirmed: list[list[int]] = []
        if st is None:
            if len(self._state) >= MAX_PRODUCTS:
                self.untracked += 1
                return None
            self._state[product_id] = _GapState(last)
            confirmed.append([first, last])
        else:
            keep: list[list[int]] = []
            for r in st.ranges:
                lo, hi = max(r[0], first), min(r[1], last)
                if lo > hi:
                    keep.append(r)
                    continue
                confirmed.append([lo, hi])
                if r[0] < lo:
                    keep.append([r[0], lo - 1, r[2]])
                if r[1] > hi:
                    keep.append([hi + 1, r[1], r[2]])
            if last > st.high:
                if first > st.high + 1:
                    keep.append([st.high + 1, first - 1, st.n + self.window])
                confirmed.append([max(first, st.high + 1), last])
                st.high = last
            st.ranges = keep
        if not confirmed:
            return None
        confirmed.sort()
        missing = sum(hi - lo + 1 for lo, hi in confirmed)
        self.count += missing
        return confirmed, missing

    def try_batch(self, product_id: str, columns: Sequence[Sequence[int]], hits: list[tuple[int, Any]]) -> bool:
        """Ids continuing the product's with none skipped: nothing is missing, late or due; only the position moves.

        So too for ids none above ``high`` while nothing is missing (a resent stretch)."""
        (trade_ids,) = columns
        st = self._state.get(product_id)
        k = len(trade_ids)
        first = trade_ids[0]
        if st is None:
            if len(self._state) >= MAX_PRODUCTS:
                return False
        elif st.ranges:
            return False
        elif first != st.high + 1:
            if not max(trade_ids) <= st.high:
                return False
            st.n += k
            return True
        if trade_ids[-1] - first != k - 1 or not increasing(trade_ids):
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
