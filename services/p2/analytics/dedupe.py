"""Each analytics consumer counts a trade once: its dedupe, and the count of everything it skips, by reason."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any

from mercurystream.p2.batch import Batch, Trades
from mercurystream.p2.recent_ids import RecentIds
from mercurystream.p2.rule import run
from mercurystream.shared.event import increasing
from mercurystream.shared.schema import CONTROL, REASONS

DUPLICATE = "duplicate"
TOO_MANY_PRODUCTS = "too_many_products"
FILTER_REASONS = (*REASONS, CONTROL, DUPLICATE, TOO_MANY_PRODUCTS)
"""Why a consumer does not count an event: the schema's trade checks, a control event (no trade),
then this filter's own."""
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)
SAMPLE_BYTES = 200
"""The example kept for each skip reason is the event's recorded line cut to this many bytes."""


class TradeFilter:
    """Accept each valid trade once; count everything else under a named reason.

    A trade is valid by the schema's checks (``shared.schema.invalid_reason``, applied once per
    batch by ``Batch.trades``). Then, per product, a trade id among the last ``lru_max`` distinct
    ids this filter accepted is a duplicate (:class:`RecentIds`: O(1) per trade, and O(1) per batch
    while the ids run without holes); only accepted trades enter it, so an invalid first copy does
    not hide a valid second one. A product id never seen before is tracked only while fewer than
    ``max_products`` are, which bounds memory and metric label cardinality when a feed sends
    garbage ids.
    """

    def __init__(self, lru_max: int, max_products: int = 1024, state: dict[str, RecentIds] | None = None) -> None:
        """``state``: where the products' ids are kept (a ``RecentIdStore`` namespace; default: a dict of its own)."""
        if lru_max <= 0:
            raise ValueError("lru_max must be positive")
        self.lru_max = lru_max
        self.max_products = max_products
        self._seen: dict[str, RecentIds] = {} if state is None else state
        self.accepted = 0
        self.skipped: dict[str, int] = dict.fromkeys(FILTER_REASONS, 0)
        self.last_rejected: dict[str, bytes] = {}
        """The recorded line of the most recent event skipped for each reason (cut), for sampled logging."""

    def observe(self, product_id: str, trade_id: int) -> str | None:
        """The reference: ``None`` when the trade counts (and is remembered), else why it does not."""
        seen = self._seen.get(product_id)
        if seen is None:
            if len(self._seen) >= self.max_products:
                return TOO_MANY_PRODUCTS
            seen = self._seen[product_id] = RecentIds(self.lru_max)
        if trade_id in seen:
            return DUPLICATE
        seen.add(trade_id)
        return None

    def try_batch(self, product_id: str, columns: Sequence[Sequence[int]], hits: list[tuple[int, Any]]) -> bool:
        """Ids increasing from above every id the product ever had: none can be a duplicate.

        Or ids all remembered already (a resent stretch): every one is a duplicate, and a duplicate
        changes nothing here."""
        (trade_ids,) = columns
        seen = self._seen.get(product_id)
        if seen is None:
            if len(self._seen) >= self.max_products:
                return False
        elif not trade_ids[0] > seen.high:
            if not seen.contains_all(trade_ids):
                return False
            hits.extend(zip(range(len(trade_ids)), repeat(DUPLICATE)))
            return True
        if not increasing(trade_ids):
            return False
        if seen is None:
            seen = self._seen[product_id] = RecentIds(self.lru_max)
        seen.add_run(trade_ids)
        return True

    def repeats(self, batch: Batch) -> list[tuple[int, str]]:
        """``(index in the batch, reason)`` of the valid trades of ``batch`` this filter does not count,
        in batch order; each one that counts is remembered. ``p2.dedupe`` runs it once per batch at
        publish, and every analytics consumer reads the verdict from the batch (``Batch.repeats``)."""
        trades = batch.trades()
        positions = trades.positions
        # Each product's ids as the trades share them, so the dedupe and the detectors ask about one column.
        by_product = trades.by_product()
        out: list[tuple[int, str]] = []
        groups = trades.groups()
        for pid, idx in groups.items():
            hits = run(self, pid, (by_product[pid].ids,), idx)
            if hits:
                out += zip(map(positions.__getitem__, map(_FIRST, hits)), map(_SECOND, hits), strict=True)
        if len(groups) > 1:
            out.sort(key=_FIRST)
        return out

    def accept(self, batch: Batch) -> Trades:
        """The trades of ``batch`` that count, in order; every other event counted under its reason.

        The dedupe verdict is the batch's own when it carries one (:attr:`Batch.repeats`), and then
        what it leaves is worked out once for every consumer (:attr:`Batch.counted`); else this
        filter decides it.
        """
        trades = batch.trades()
        skipped = self.skipped
        lines = batch.lines
        for i, reason in trades.rejects:
            skipped[reason] += 1
            self.last_rejected[reason] = lines[i][:SAMPLE_BYTES]
        if batch.repeats is None:
            counted = Counted(trades, self.repeats(batch))
        else:
            counted = batch.counted
            if counted is None:
                counted = batch.counted = Counted(trades, batch.repeats)
        for reason, (n, i) in counted.skipped.items():
            skipped[reason] += n
            self.last_rejected[reason] = lines[i][:SAMPLE_BYTES]
        self.accepted += len(counted.trades)
        return counted.trades


class Counted:
    """A batch's trades less its repeats, and each repeat reason's ``(count, index of its last event)``."""

    __slots__ = ("skipped", "trades")

    def __init__(self, trades: Trades, repeats: list[tuple[int, str]]) -> None:
        self.skipped: dict[str, tuple[int, int]] = {}
        if not repeats:
            self.trades = trades
            return
        reasons = list(map(_SECOND, repeats))
        last = dict(zip(reasons, map(_FIRST, repeats), strict=True))
        self.skipped = {reason: (n, last[reason]) for reason, n in Counter(reasons).items()}
        if len(repeats) == len(trades):
            self.trades = trades.subset(())
            return
        dropped = set(map(_FIRST, repeats))
        self.trades = trades.subset([k for k, i in enumerate(trades.positions) if i not in dropped])
