"""``duplicate``: a trade id already among its product's last ``max_ids`` distinct trade ids."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any

from mercurystream.p2.batch import Batch
from mercurystream.p2.recent_ids import RecentIds
from mercurystream.p2.rule import run
from mercurystream.shared.event import increasing, pick

_FIRST = itemgetter(0)
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

    def __init__(self, max_ids: int = 50_000, state: dict[str, RecentIds] | None = None) -> None:
        """``state``: where the products' ids are kept (a ``RecentIdStore`` namespace; default: a dict of its own)."""
        if max_ids <= 0:
            raise ValueError("max_ids must be positive")
        self.max_ids = max_ids
        self.count = 0
        self.untracked = 0
        self._state: dict[str, RecentIds] = {} if state is None else state

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


def duplicates_of(rule: DuplicateDetector, batch: Batch, reference_only: bool = False) -> list[int]:
    """The indices of ``batch``'s duplicates by ``rule``, products in order of first appearance.

    The rule sees every event with a trade id of the right kind except backfilled trades (P1
    fetched those again on purpose). ``p2.dedupe`` runs this once per batch at publish; the
    detectors read the verdict from the batch (``Batch.duplicates``).
    """
    tids = batch.trade_ids
    clean = batch.clean
    backfilled = set(batch.backfilled)
    out: list[int] = []
    for pid, idx in batch.groups().items():
        if backfilled:
            idx = [i for i in idx if i not in backfilled]
        keyed = idx if clean else [i for i in idx if tids[i] is not None]
        if keyed:
            out += map(_FIRST, run(rule, pid, (pick(tids, keyed),), keyed, reference_only))
    return out
