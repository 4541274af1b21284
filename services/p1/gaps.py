"""Trade ids lost upstream, found in P1: a jump in a product's ``match`` ids, or a heartbeat ahead of them.

Sans-I/O: the feed hands :class:`GapTracker` the trades it forwards and the ``heartbeat`` and
``last_match`` messages it reads; the tracker keeps, per configured product, the highest trade id
accounted for (forwarded, or the baseline a ``last_match`` or first heartbeat gave) and the ranges
skipped since. A range is *confirmed* lost once a whole heartbeat interval has passed without it
(heartbeats come every second per product): at the second heartbeat of that product after an id
jump, at the next one after a heartbeat ran ahead; so a trade merely reordered on the way, or a
heartbeat sent just before the match it counts, is not called lost. Confirmed gaps wait in
:attr:`GapTracker.confirmed` for the shell (:meth:`take`), which forwards a ``gap`` control event
to P2 and hands the range to the backfill.

Coinbase's heartbeat carries ``last_trade_id`` (Exchange WebSocket channel docs); some clients
have seen it stay ``0`` (go-coinbasepro issue #89), so a heartbeat without a positive int id is
counted and gives no gap.

An id more than ``max_jump`` from the baseline, either way, is no gap: one bogus id (``9e18``, still
an int64) would otherwise confirm a gap of ~9e18 ids and, as the new baseline, hide every later real
loss. It is counted as ``implausible_jump`` and held as a *candidate*; it becomes the baseline (a
*rebaseline*, no gap announced) only when ``confirmations`` messages of the product in a row, trades
or heartbeats, continue from it (each within ``max_jump`` of the last, none near the old baseline in
between), as after a reconnect that followed a long outage or a venue renumbering its ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import orjson

from mercurystream.shared.event import INGEST_MS, INGEST_US
from mercurystream.shared.id_ranges import fill
from mercurystream.shared.logger import LogSampler
from mercurystream.shared.schema import BACKFILL, GAP

HEARTBEAT = "heartbeat"
TRADE_ID = "trade_id"
SOURCES = (HEARTBEAT, TRADE_ID)
"""How a gap was found: a heartbeat's ``last_trade_id`` ahead of the last id seen, or a jump in the ids."""
MAX_PENDING = 64
"""Unconfirmed ranges held per product; past it the oldest is confirmed at once (memory stays bounded)."""
MAX_JUMP = 1_000_000
"""The widest id jump taken as a gap (``GAP_MAX_IDS``); BTC-USD makes well under a million trades a day."""
CONFIRMATIONS = 3
"""Messages in a row continuing from an implausible id before it becomes the baseline."""
IMPLAUSIBLE_JUMP = "implausible_jump"
"""The bad-data reason of an id more than ``max_jump`` from its product's baseline."""
REBASELINE = "rebaseline"


class Gap(NamedTuple):
    """Trade ids ``first..last`` of ``product_id`` lost upstream, found by ``source``."""

    product_id: str
    first: int
    last: int
    source: str

    @property
    def size(self) -> int:
        return self.last - self.first + 1


class GapTracker:
    """Per product: the highest trade id accounted for, the skipped ranges, the gaps confirmed lost."""

    def __init__(
        self,
        products: Iterable[str],
        max_pending: int = MAX_PENDING,
        *,
        max_jump: int = MAX_JUMP,
        confirmations: int = CONFIRMATIONS,
        on_jump: Callable[[str], None] | None = None,
    ) -> None:
        """``on_jump`` is told :data:`IMPLAUSIBLE_JUMP` for each id past ``max_jump`` and
        :data:`REBASELINE` when a run of them is adopted, for the metrics."""
        if max_jump <= 0 or confirmations <= 0:
            raise ValueError("max_jump and confirmations must be positive")
        self.products = frozenset(products)
        self.max_pending = max_pending
        self.max_jump = max_jump
        self.confirmations = confirmations
        self.on_jump = on_jump
        self.implausible = 0
        """Messages whose id was more than ``max_jump`` from the baseline."""
        self.rebaselines = 0
        """Runs of such ids adopted as the new baseline."""
        # [highest id of the run, messages in it, the baseline when it last grew], per product.
        self._candidate: dict[str, list[int]] = {}
        self._sampler = LogSampler()
        self._high: dict[str, int] = {}
        # [lo, hi, source, heartbeats seen since it appeared], sorted by lo (which is creation order).
        self._pending: dict[str, list[list[Any]]] = {}
        self.confirmed: list[Gap] = []
        self.gaps = dict.fromkeys(SOURCES, 0)
        """Gaps confirmed, by source."""
        self.ids = dict.fromkeys(SOURCES, 0)
        """Trade ids confirmed lost, by source."""
        self.heartbeats_without_id = 0

    def take(self) -> list[Gap]:
        """The gaps confirmed since the last call."""
        out, self.confirmed = self.confirmed, []
        return out

    def pending(self, product_id: str) -> list[tuple[int, int]]:
        return [(r[0], r[1]) for r in self._pending.get(product_id, ())]

    def high(self, product_id: str) -> int | None:
        return self._high.get(product_id)

    def on_trades(self, trades: Iterable[dict[str, Any]]) -> None:
        """The trade messages the feed forwards (as received): each ``match`` id moves its product on.

        A product id that cannot be a dict key (a list, say) is no configured product's: the
        ``TypeError`` its lookup raises skips that message, and the loop goes on with the next
        (a check per message would cost every trade what only hostile input needs).
        """
        products = self.products
        high = self._high
        rest = iter(trades)
        while True:
            try:
                for msg in rest:
                    pid = msg.get("product_id")
                    tid = msg.get("trade_id")
                    h = high.get(pid)  # type: ignore[arg-type]
                    if h is not None and tid == h + 1 and type(tid) is int and msg.get("type") == "match":
                        high[pid] = tid  # the common case: the next id of a known product
                    elif type(tid) is int and pid in products and msg.get("type") == "match":
                        self._see(pid, tid, TRADE_ID, inclusive=False)
                return
            except TypeError:
                continue

    def on_control(self, msg: dict[str, Any]) -> None:
        """A ``heartbeat`` or ``last_match`` the feed read (neither is forwarded)."""
        pid = msg.get("product_id")
        if type(pid) is not str or pid not in self.products:
            return
        if msg.get("type") == "last_match":
            tid = msg.get("trade_id")
            if type(tid) is int:
                # Not forwarded: after a reconnect a last_match above what was seen is itself a lost trade.
                self._see(pid, tid, TRADE_ID, inclusive=True)
            return
        last = msg.get("last_trade_id")
        if type(last) is not int or last <= 0:
            self.heartbeats_without_id += 1
            return
        ranges = self._pending.get(pid)
        if ranges:
            keep = []
            for r in ranges:
                if r[3] >= 1:
                    self._confirm(pid, r)
                else:
                    r[3] += 1
                    keep.append(r)
            self._pending[pid] = keep
        self._see(pid, last, HEARTBEAT, inclusive=True)

    def _see(self, pid: str, tid: int, source: str, *, inclusive: bool) -> None:
        """Trade id ``tid`` of ``pid`` is known to exist; ``inclusive``: and it was not forwarded either."""
        high = self._high.get(pid)
        if high is None:
            self._high[pid] = tid
            return
        if tid - high > self.max_jump or high - tid > self.max_jump:
            self._implausible(pid, tid, high)
            return
        if self._candidate:
            self._candidate.pop(pid, None)  # the feed went on from the baseline: the far id was bogus
        if tid > high:
            hi = tid if inclusive else tid - 1
            if hi > high:
                self._add(pid, [high + 1, hi, source, 1 if source == HEARTBEAT else 0])
            self._high[pid] = tid
        elif not inclusive:
            ranges = self._pending.get(pid)
            if ranges:
                fill(ranges, tid)

    def _implausible(self, pid: str, tid: int, high: int) -> None:
        """An id more than ``max_jump`` from the baseline: counted, held as a candidate, adopted once confirmed."""
        self.implausible += 1
        if self.on_jump is not None:
            self.on_jump(IMPLAUSIBLE_JUMP)
        c = self._candidate.get(pid)
        if c is not None and c[2] == high and abs(tid - c[0]) <= self.max_jump:
            c[0] = max(c[0], tid)
            c[1] += 1
        else:
            # The baseline moved since (a trade continued it on the fast path) or this is far from the last
            # candidate too: start over from this id.
            c = self._candidate[pid] = [tid, 1, high]
        if c[1] < self.confirmations:
            self._sampler.warning(
                IMPLAUSIBLE_JUMP,
                "gaps: {} trade id {} is {} ids from the baseline {} (over {}): counted as bad data, no gap",
                pid,
                tid,
                abs(tid - high),
                high,
                self.max_jump,
            )
            return
        del self._candidate[pid]
        self._high[pid] = c[0]
        self.rebaselines += 1
        if self.on_jump is not None:
            self.on_jump(REBASELINE)
        self._sampler.warning(
            REBASELINE,
            "gaps: {} continued from trade id {} for {} messages: it is the new baseline (was {}); "
            "the ids between are not announced as a gap",
            pid,
            c[0],
            c[1],
            high,
        )

    def _add(self, pid: str, r: list[Any]) -> None:
        ranges = self._pending.setdefault(pid, [])
        ranges.append(r)
        if len(ranges) > self.max_pending:
            self._confirm(pid, ranges.pop(0))

    def _confirm(self, pid: str, r: list[Any]) -> None:
        gap = Gap(pid, r[0], r[1], r[2])
        self.confirmed.append(gap)
        self.gaps[gap.source] += 1
        self.ids[gap.source] += gap.size


def control_event(
    gap: Gap, venue: str, feed: str, now_us: int, *, recovered: int | None = None, unrecoverable: int | None = None
) -> bytes:
    """A ``gap`` control event (or, with the counts, the ``backfill`` result for it), stamped like a trade.

    Its shape is ``shared.schema.control_of``'s: P2 types it at the socket, never as a trade or drift,
    and the recorder and flight recorder keep it with the trades as evidence.
    """
    event: dict[str, Any] = {
        "type": GAP if recovered is None else BACKFILL,
        "venue": venue,
        "feed": feed,
        "product_id": gap.product_id,
        "first_missing": gap.first,
        "last_missing": gap.last,
        "source": gap.source,
    }
    if recovered is not None:
        event["recovered"] = recovered
        event["unrecoverable"] = unrecoverable if unrecoverable is not None else gap.size - recovered
    event[INGEST_MS] = now_us // 1000
    event[INGEST_US] = now_us
    return orjson.dumps(event)
