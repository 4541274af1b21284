"""Volume: per product, notional (price * size) and trade count over the last ``window_s`` of the stream's time."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from operator import mul
from typing import Any

from mercurystream.p2.analytics.entries import MIN_RECOMPUTE, Entries, over_budget
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


class _VolumeState:
    __slots__ = ("entries", "evicted", "notional")

    def __init__(self) -> None:
        self.entries = Entries(1)
        """Time, price*size."""
        self.notional = 0.0
        self.evicted = 0


class VolumeWindow:
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
        if not window_s > 0 or max_entries <= 0:
            raise ValueError("window_s and max_entries must be positive")
        self.window_s = float(window_s)
        self.max_entries = max_entries
        self.held = 0
        """Entries across products."""
        self.trimmed = 0
        """Entries :meth:`trim` let go before their time."""
        self.now = -math.inf
        """The stream's clock: the newest exchange time seen."""
        self._states: dict[str, _VolumeState] = {}
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
            st = self._states[product_id] = _VolumeState()
        notional = price * size
        st.entries.append(time_s, (notional,))
        st.notional += notional
        self.held += 1

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
                st = states[pid] = _VolumeState()
            p_times = pick(times, idx)
            notional = list(map(mul, pick(prices, idx), pick(sizes, idx)))
            st.entries.extend(p_times, (notional,), nondecreasing(p_times))
            st.notional += sum(notional)
        self.held += len(times)
        return True

    def evict(self) -> None:
        """Drop every product's trades older than the stream's clock minus the window."""
        cutoff = self.now - self.window_s
        for st in self._states.values():
            self._drop_to(st, st.entries.cut(cutoff))

    def trim(self) -> None:
        """Keep at most ``max_entries`` across products, the largest windows giving first."""
        for pid, k in over_budget(self._states, self.held, self.max_entries).items():
            st = self._states[pid]
            self._drop_to(st, st.entries.head + k)
            self.trimmed += k

    def _drop_to(self, st: _VolumeState, stop: int) -> None:
        entries = st.entries
        n = stop - entries.head
        if not n:
            return
        self.held -= n
        (notional,) = entries.drop(stop)
        st.evicted += n
        if not len(entries):
            st.notional = 0.0
            st.evicted = 0
        elif st.evicted >= max(len(entries), MIN_RECOMPUTE):
            (st.notional,) = entries.fsums()
            st.evicted = 0
        else:
            st.notional -= notional

    def volume(self, product_id: str) -> tuple[float, int]:
        """``(notional, trades)`` in the window, for the stream's clock as of the last batch."""
        st = self._states.get(product_id)
        if st is None or not len(st.entries):
            return 0.0, 0
        return max(st.notional, 0.0), len(st.entries)

    def snapshot(self) -> dict[str, tuple[float, int]]:
        self.evict()
        return {pid: self.volume(pid) for pid in sorted(self._states)}

    def figures(self) -> dict[str, tuple[float, int]]:
        """:meth:`volume` of every product as of the last :meth:`evict` (unsorted)."""
        return {pid: self.volume(pid) for pid in self._states}
