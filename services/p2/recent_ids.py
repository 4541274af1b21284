"""One product's recent distinct trade ids, as an LRU whose common case costs two integers, and the
one store that holds every product's, for every rule, under one total bound.

The duplicate rule (``detectors.DuplicateDetector``) and the analytics' dedupe
(``analytics.TradeFilter``) both remember ids with it; in P2 both keep them in one
:class:`RecentIdStore` (``p2.dedupe``).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence

_COMPACT_MIN = 64
"""A sightings list drops its forgotten head once it is this long and at least half the list: small, since
a store holds one list per product and each may keep this many dead entries."""
_INT64 = (-(1 << 63), (1 << 63) - 1)
"""The ids the ascending form can hold (``array('q')``); others take the general form."""


class RecentIds:
    """One product's last ``max_ids`` distinct ids, oldest first, with O(1) lookup.

    While the ids come as one increasing run without holes (a feed's trade ids), the memory is the
    run's two ends: adding a batch and forgetting the oldest are O(1) and nothing is kept per id,
    so a product costs a few bytes instead of a set and a list of ``max_ids`` ints. Increasing ids
    with holes (products sharing one id counter, a feed that skips) take the ascending form: the ids
    in an ``array('q')`` from :attr:`head`, 8 bytes an id instead of about 90 in a set and a list,
    looked up by bisection; once its holes are forgotten it is a run again. Anything else (a late
    id, an id seen again) switches to the general form: a set to look up and a list
    of sightings, oldest at ``head``, for age. A repeated sighting (:meth:`seen_again`) is appended
    again and its earlier copy becomes stale (``stale`` counts them); forgetting skips stale
    copies, and the list is rebuilt without them once they are half of it, so memory stays
    O(max_ids). Once every irregular sighting has been forgotten, the live ids are a run again and
    the memory goes back to its two ends.
    """

    __slots__ = ("asc", "head", "hi", "high", "holed", "ids", "irregular", "lo", "max_ids", "order", "stale")

    def __init__(self, max_ids: int) -> None:
        self.max_ids = max_ids
        self.lo = 0
        self.hi = -1
        """The run ``lo..hi`` (empty while ``lo > hi``), while :attr:`ids` is ``None``."""
        self.ids: set[int] | None = None
        self.asc: array[int] | None = None
        """The ascending form's ids (live from :attr:`head`), while :attr:`ids` is ``None``."""
        self.holed = -1
        """The last index of :attr:`asc` whose id does not follow the one before it by 1 (or a later one)."""
        self.order: list[int] = []
        self.head = 0
        self.stale: Counter[int] = Counter()
        self.irregular = -1
        """The last index of :attr:`order` not known to continue a run from the sighting before it."""
        self.high: float = -math.inf
        """The highest id ever added: higher ids cannot be remembered."""

    def __len__(self) -> int:
        if self.asc is not None:
            return len(self.asc) - self.head
        return self.hi - self.lo + 1 if self.ids is None else len(self.ids)

    def __contains__(self, tid: int) -> bool:
        asc = self.asc
        if asc is not None:
            if not asc or not asc[self.head] <= tid <= asc[-1]:
                return False
            return asc[bisect_left(asc, tid, self.head)] == tid
        if self.ids is None:
            return self.lo <= tid <= self.hi
        return tid in self.ids

    def contains_all(self, tids: Sequence[int]) -> bool:
        """Whether every one of ``tids`` is remembered (C-level passes but in the ascending form)."""
        if self.asc is not None:
            return all(map(self.__contains__, tids))
        if self.ids is None:
            return self.lo <= min(tids) and max(tids) <= self.hi
        return self.ids.issuperset(tids)

    @property
    def is_run(self) -> bool:
        """Whether the memory is just the two ends of a run."""
        return self.ids is None and self.asc is None

    @property
    def cost(self) -> int:
        """What this holds, in ids, as :class:`RecentIdStore` counts it: 1 for a run, else every sighting kept."""
        if self.asc is not None:
            return len(self.asc) - self.head + 1
        return 1 if self.ids is None else len(self.order) - self.head + 1

    def remembered(self) -> list[int]:
        """The remembered ids, least recent first (for tests and introspection; O(max_ids))."""
        if self.asc is not None:
            return self.asc[self.head :].tolist()
        if self.ids is None:
            return list(range(self.lo, self.hi + 1))
        latest: dict[int, None] = {}
        for tid in self.order[self.head :]:
            latest.pop(tid, None)
            latest[tid] = None
        return list(latest)

    def add(self, tid: int) -> None:
        """Remember a new id (the caller checked it is not remembered) as the most recent."""
        if tid > self.high:
            self.high = tid
        if self.ids is None:
            if self.asc is None:
                if self.lo > self.hi:
                    self.lo = self.hi = tid
                    return
                if tid == self.hi + 1:
                    self.hi = tid
                    if tid - self.lo >= self.max_ids:
                        self.lo += 1
                    return
            if self._ascend((tid,)):
                return
            self._general()
        order = self.order
        regular = len(order) > self.head and tid == order[-1] + 1
        self.ids.add(tid)  # type: ignore[union-attr]
        order.append(tid)
        if not regular:
            self.irregular = len(order) - 1
        if len(self.ids) > self.max_ids:  # type: ignore[arg-type]
            self._forget(1)

    def add_run(self, tids: Sequence[int]) -> None:
        """Remember increasing ids all above :attr:`high`; O(1) while they continue the run."""
        first = tids[0]
        last = tids[-1]
        self.high = last
        holes = last - first != len(tids) - 1
        if self.ids is None:
            if self.asc is None and not holes and (self.lo > self.hi or first == self.hi + 1):
                if self.lo > self.hi:
                    self.lo = first
                self.hi = last
                if last - self.lo >= self.max_ids:
                    self.lo = last - self.max_ids + 1
                return
            if self._ascend(tids):
                return
            self._general()
        order = self.order
        regular = not holes and (len(order) == self.head or first == order[-1] + 1)
        self.ids.update(tids)  # type: ignore[union-attr]
        order.extend(tids)
        if not regular:
            self.irregular = len(order) - 1
        excess = len(self.ids) - self.max_ids  # type: ignore[arg-type]
        if excess > 0:
            self._forget(excess)

    def seen_again(self, tid: int) -> None:
        """A remembered id was seen again: it becomes the most recent."""
        self._general()
        self.order.append(tid)
        self.stale[tid] = self.stale.get(tid, 0) + 1
        self.irregular = len(self.order) - 1
        if len(self.order) - self.head > 2 * len(self.ids) + _COMPACT_MIN:  # type: ignore[arg-type]
            self._rebuild()

    def seen_again_many(self, tids: Sequence[int]) -> None:
        """:meth:`seen_again` of remembered ids in order; a rebuild that falls due waits for the last
        of them, which leaves the same ids remembered in the same order."""
        self._general()
        self.order.extend(tids)
        self.stale.update(tids)
        self.irregular = len(self.order) - 1
        if len(self.order) - self.head > 2 * len(self.ids) + _COMPACT_MIN:  # type: ignore[arg-type]
            self._rebuild()

    def _ascend(self, tids: Sequence[int]) -> bool:
        """Append increasing ``tids`` in the ascending form (from a run, or in it); whether they fit it."""
        asc = self.asc
        top = asc[-1] if asc else self.hi if asc is None and self.lo <= self.hi else None
        if (top is not None and tids[0] <= top) or not _INT64[0] <= tids[0] <= tids[-1] <= _INT64[1]:
            return False
        if asc is None:
            asc = self.asc = array("q", range(self.lo, self.hi + 1))
            self.head = 0
            self.holed = -1
            self.lo, self.hi = 0, -1
        end = len(asc)
        if end and tids[0] != asc[-1] + 1:
            self.holed = end
        if len(tids) > 1 and tids[-1] - tids[0] != len(tids) - 1:
            self.holed = end + len(tids) - 1  # conservative: a hole at or before the last new id
        asc.extend(tids)
        head = max(self.head, len(asc) - self.max_ids)
        if head >= self.holed:
            # No hole is left after the oldest live id: what is left is one run.
            self.lo, self.hi = asc[head], asc[-1]
            self.asc = None
            self.head = 0
            self.holed = -1
        elif head >= _COMPACT_MIN and head * 2 >= len(asc):
            del asc[:head]
            self.holed -= head
            self.head = 0
        else:
            self.head = head
        return True

    def _general(self) -> None:
        if self.asc is not None:
            self.order = self.asc[self.head :].tolist()
            self.ids = set(self.order)
            self.irregular = self.holed - self.head
            self.asc = None
            self.holed = -1
            self.head = 0
            self.stale = Counter()
        elif self.ids is None:
            self.order = list(range(self.lo, self.hi + 1))
            self.ids = set(self.order)
            self.head = 0
            self.stale = Counter()
            self.irregular = -1

    def _forget(self, k: int) -> None:
        order = self.order
        head = self.head
        ids = self.ids
        assert ids is not None
        if not self.stale:
            ids.difference_update(order[head : head + k])
            head += k
        else:
            stale = self.stale
            while k:
                tid = order[head]
                head += 1
                copies = stale.get(tid)
                if copies is None:
                    ids.discard(tid)
                    k -= 1
                elif copies == 1:
                    del stale[tid]
                else:
                    stale[tid] = copies - 1
        self.head = head
        if head > self.irregular:
            # Every irregular sighting is forgotten: what is left is one run.
            self.lo, self.hi = (order[head], order[-1]) if head < len(order) else (0, -1)
            self.ids = None
            self.order = []
            self.head = 0
            self.stale = Counter()
            self.irregular = -1
        elif head >= _COMPACT_MIN and head * 2 >= len(order):
            del order[:head]
            self.irregular -= head
            self.head = 0

    def _rebuild(self) -> None:
        """The sightings list without stale copies: each id at its most recent sighting."""
        kept = list(dict.fromkeys(reversed(self.order[self.head :])))
        kept.reverse()
        self.order = kept
        self.head = 0
        self.stale = Counter()
        self.irregular = len(kept) - 1


class RecentIdStore:
    """Every rule's :class:`RecentIds` by product, held under one bound of ``max_ids`` in total.

    A rule keeps its products in :meth:`namespace` (a plain dict it reads and fills as before); the
    owner calls :meth:`touched` after each batch with the products it changed. Past ``max_ids``
    (each product's :attr:`RecentIds.cost`), the product of any rule touched longest ago is
    forgotten first, whole, its ids counted in :attr:`evicted_ids`; the most recently touched one
    always stays (it is bounded by its own ``max_ids``). A forgotten id is no longer a duplicate:
    the bound trades exactness on very old ids for memory, never the count of what was seen.
    """

    def __init__(self, max_ids: int) -> None:
        if max_ids <= 0:
            raise ValueError("max_ids must be positive")
        self.max_ids = max_ids
        self.total = 0
        self.evicted_ids = 0
        self.evicted_products = 0
        self._maps: dict[str, dict[str, RecentIds]] = {}
        self._costs: dict[tuple[str, str], int] = {}
        """Each held product's last known cost, least recently touched first."""

    def namespace(self, rule: str) -> dict[str, RecentIds]:
        return self._maps.setdefault(rule, {})

    def touched(self, rule: str, products: Iterable[str]) -> None:
        """Account the products ``rule`` just changed; forget the least recently touched past the bound."""
        held = self._maps[rule]
        costs = self._costs
        total = self.total
        for pid in products:
            recent = held.get(pid)
            if recent is None:
                continue
            key = (rule, pid)
            total -= costs.pop(key, 0)
            cost = recent.cost
            costs[key] = cost
            total += cost
        while total > self.max_ids and len(costs) > 1:
            (name, pid), cost = next(iter(costs.items()))
            del costs[(name, pid)]
            total -= cost
            forgotten = self._maps[name].pop(pid, None)
            if forgotten is not None:
                self.evicted_ids += len(forgotten)
                self.evicted_products += 1
        self.total = total
