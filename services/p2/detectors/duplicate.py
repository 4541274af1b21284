"""``duplicate``: a trade id already among its product's last ``max_ids`` distinct trade ids."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from typing import Any

from mercurystream.p2.recent_ids import RecentIds
from mercurystream.shared.event import increasing

MAX_PRODUCTS = 10_000
"""Per-product state is created for at most this many product ids per detector, so a stream of
random product ids cannot exhaust memory; events of products beyond it are counted as untracked."""


class DuplicateDetector:
    """Per product, a trade id among its last ``max_ids`` distinct trade ids.

    "Last" is by most recent occurrence, as in an LRU: every sighting of an id (a duplicate too)
    makes it the most recent, and when a new id would make ``max_ids + 1`` distinct ids, the one
    seen longest ago is forgotten (:class:`RecentIds`: O(1) amortized per sighting, and almost no
    memory while a product's ids run without holes).
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

    def observe(self, product_id: str, trade_id: int) -> bool | None:
        """The reference: remember ``trade_id``; ``True`` (and counted) if it is a duplicate."""
        recent = self._state.get(product_id)
        if recent is None:
            if len(self._state) >= MAX_PRODUCTS:
                self.untracked += 1
                return None
            recent = self._state[product_id] = RecentIds(self.max_ids)
        if trade_id in recent:
            recent.seen_again(trade_id)
            self.count += 1
            return True
        recent.add(trade_id)
        return None

    def try_batch(self, product_id: str, columns: Sequence[Sequence[int]], hits: list[tuple[int, Any]]) -> bool:
        """Ids that increase from above every id the product ever had: none can be a duplicate.

        Or ids all remembered (a resent stretch): every one is a duplicate, seen again in order."""
        (trade_ids,) = columns
        recent = self._state.get(product_id)
        if recent is None:
            if len(self._state) >= MAX_PRODUCTS:
                return False
        elif not trade_ids[0] > recent.high:
            if not recent.contains_all(trade_ids):
                return False
            recent.seen_again_many(trade_ids)
            self.count += len(trade_ids)
            hits.extend(zip(range(len(trade_ids)), repeat(True)))
            return True
        if not increasing(trade_ids):
            return False
        if recent is None:
            recent = self._state[product_id] = RecentIds(self.max_ids)
        recent.add_run(trade_ids)
        return True
