"""Volume: per product, notional (price * size) and trade count over the last ``window_s`` of the stream's time."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from operator import mul
from typing import Any

from mercurystream.p2.analytics.entries import SummedWindows, SumsState
from mercurystream.shared.event import group_positions, nondecreasing, pick

OUTSIDE_WINDOW = "outside_window"
UNKNOWN_QUOTE = "unknown"
_QUOTE = re.compile(r"^[A-Z0-9]{2,10}$")


def quote_currency(product_id: str) -> str:
    """The currency a product's notional is in: the part of its id after the last ``-`` (``BTC-EUR``: ``EUR``).

    Coinbase product ids are ``BASE-QUOTE``. Anything else, or a part that is not 2 to 10 upper-case
    letters or digits, is ``unknown``: the ``quote`` label takes at most one value per product, and
    never an arbitrary string.
    """
    _, sep, quote = product_id.rpartition("-")
    return quote if sep and _QUOTE.match(quote) else UNKNOWN_QUOTE


class VolumeWindow(SummedWindows):
    """Per-product notional (price*size, in the quote currency) and trade count over the last ``window_s`` seconds.

    The clock is the newest exchange time seen across all products (the stream's clock), not the
    product's own: a product that stops trading must see its volume fall to zero as the market
    moves on, which a per-product clock would freeze at the last minute it traded. So this rule
    is one of the whole stream (its key is ``None``), and :meth:`evict` runs after each batch and
    when read. A trade older than the window edge is only counted (``skipped["outside_window"]``);
    a late one inside it counts and leaves in arrival order (see ``VwapWindow``). If the whole
    stream stops, the figures hold still: exchange time does not move. At most ``max_entries``
    trades are held across products: past it, :meth:`trim` shortens the largest windows to their
    newest trades (``trimmed`` counts what left early; those products' figures undercount).
    """

    def __init__(self, window_s: float = 60.0, max_entries: int = 1 << 62) -> None:
        if not window_s > 0:
            raise ValueError("window_s must be positive")
        super().__init__(max_entries)
        self.window_s = float(window_s)
        self.now = -math.inf
        """The stream's clock: the newest exchange time seen."""
        self.skipped: dict[str, int] = {OUTSIDE_WINDOW: 0}

    def observe(self, key: None, product_id: str, price: float, size: float, time_s: float) -> None:
        """The reference: add one accepted trade (evicted by the next :meth:`evict`)."""
        if time_s > self.now:
            self.now = time_s
        elif time_s < self.now - self.window_s:
            self.skipped[OUTSIDE_WINDOW] += 1
            return
        st = self._states.get(product_id)
        if st is None:
            st = self._states[product_id] = SumsState(1)
        self._append(st, time_s, (price * size,))

    def try_batch(self, key: None, columns: Sequence[Sequence[Any]], hits: list[tuple[int, Any]]) -> bool:
        """A batch of which no trade can be outside the window: each product's appended as columns."""
        product_ids, prices, sizes, times = columns
        now = max(self.now, max(times))
        if min(times) < now - self.window_s:
            return False
        self.now = now
        states = self._states
        for pid, idx in group_positions(product_ids).items():
            st = states.get(pid)
            if st is None:
                st = states[pid] = SumsState(1)
            p_times = pick(times, idx)
            notional = list(map(mul, pick(prices, idx), pick(sizes, idx)))
            self._extend(st, p_times, (notional,), nondecreasing(p_times))
        return True

    def evict(self) -> None:
        """Drop every product's trades older than the stream's clock minus the window."""
        cutoff = self.now - self.window_s
        for st in self._states.values():
            self._drop_to(st, st.entries.cut(cutoff))

    def volume(self, product_id: str) -> tuple[float, int]:
        """``(notional, trades)`` in the window, for the stream's clock as of the last batch."""
        st = self._states.get(product_id)
        if st is None or not len(st.entries):
            return 0.0, 0
        return max(st.sums[0], 0.0), len(st.entries)

    def snapshot(self) -> dict[str, tuple[float, int]]:
        self.evict()
        return {pid: self.volume(pid) for pid in sorted(self._states)}

    def figures(self) -> dict[str, tuple[float, int]]:
        """:meth:`volume` of every product as of the last :meth:`evict` (unsorted)."""
        return {pid: self.volume(pid) for pid in self._states}
