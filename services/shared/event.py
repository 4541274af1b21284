"""The normalized event's fields, the one definition of P1→P2 latency, and a batch's fields as columns.

P1 stamps ``ingest_ts_ms`` (the seed's field) and ``ingest_ts_us``; P2 stamps ``recv_ts_ms`` and
``recv_ts_us`` unless the frame already carries them (a replay with ``--keep-timestamps``), so a
recorded stream replays with its original latencies.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from operator import itemgetter, le, lt
from typing import Any

from mercurystream.shared.timeparse import all_fixed_form

INGEST_MS = "ingest_ts_ms"
INGEST_US = "ingest_ts_us"
RECV_MS = "recv_ts_ms"
RECV_US = "recv_ts_us"


def latency_ms(event: dict[str, Any]) -> float | None:
    """P1 ingest → P2 receive in milliseconds, at microsecond resolution when both stamps have it."""
    recv_us = event.get(RECV_US)
    ingest_us = event.get(INGEST_US)
    if type(recv_us) is int and type(ingest_us) is int:
        return (recv_us - ingest_us) / 1000.0
    recv_ms = event.get(RECV_MS)
    ingest_ms = event.get(INGEST_MS)
    if type(recv_ms) is int and type(ingest_ms) is int:
        return float(recv_ms - ingest_ms)
    return None


def recv_suffix(recv_us: int) -> bytes:
    """What P2 appends inside a received JSON object: ``,"recv_ts_ms":…,"recv_ts_us":…}``."""
    return b',"recv_ts_ms":%d,"recv_ts_us":%d}' % (recv_us // 1000, recv_us)


REQUIRED_FIELDS = ("type", "product_id", "price", "last_size", "time", "trade_id", INGEST_MS)
"""The keys every normalized event has; their JSON kinds are str, str, number, number, str, int, int."""

_GET_REQUIRED = itemgetter(*REQUIRED_FIELDS)
_STR = {str}
_INT = {int}
_NUMBER = {int, float}


class EventColumns:
    """A batch's required fields as columns, and whether every event has them all well typed.

    Built once per batch (``Batch.derived``) for every consumer that reads these fields, with
    C-level loops: one ``itemgetter`` pass, one transpose, one type set per column. ``typed`` is
    the common case, where the detectors and the analytics take their column paths; otherwise the
    columns are empty and they look at each event. ``fixed_times`` says every ``time`` is in
    Coinbase's fixed form, which orders like its strings.
    """

    __slots__ = (
        "_groups",
        "_ids_by_product",
        "fixed_times",
        "ingest_ms",
        "prices",
        "product_ids",
        "sizes",
        "times",
        "trade_ids",
        "typed",
        "types",
    )

    def __init__(self, columns: Sequence[Sequence[Any]] | None) -> None:
        self._groups: dict[str, list[int]] | None = None
        self._ids_by_product: dict[str, tuple[Sequence[int], bool]] | None = None
        if columns is None:
            columns = ((),) * len(REQUIRED_FIELDS)
            self.typed = False
        else:
            types, pids, prices, sizes, times, tids, ingest = columns
            self.typed = (
                set(map(type, pids)) <= _STR
                and set(map(type, tids)) <= _INT
                and set(map(type, prices)) <= _NUMBER
                and set(map(type, sizes)) <= _NUMBER
                and set(map(type, types)) <= _STR
                and set(map(type, times)) <= _STR
                and set(map(type, ingest)) <= _INT
            )
            if not self.typed:
                columns = ((),) * len(REQUIRED_FIELDS)
        (self.types, self.product_ids, self.prices, self.sizes, self.times, self.trade_ids, self.ingest_ms) = columns
        self.fixed_times = self.typed and all_fixed_form(self.times)

    @classmethod
    def of(cls, batch: Any) -> EventColumns:
        """The columns of ``batch.events`` (anything with an ``events`` list)."""
        events = batch.events
        if not events:
            return cls(((),) * len(REQUIRED_FIELDS))
        try:
            rows = list(map(_GET_REQUIRED, events))
        except (KeyError, TypeError):
            return cls(None)
        return cls(tuple(zip(*rows, strict=True)))

    def tail(self, start: int) -> EventColumns:
        if not self.typed:
            return EventColumns(None)
        return EventColumns(
            (
                self.types[start:],
                self.product_ids[start:],
                self.prices[start:],
                self.sizes[start:],
                self.times[start:],
                self.trade_ids[start:],
                self.ingest_ms[start:],
            )
        )

    def __len__(self) -> int:
        return len(self.types)

    def groups(self) -> dict[str, list[int]]:
        """Each product's event indices in arrival order; products in order of first appearance."""
        if self._groups is None:
            self._groups = group_positions(self.product_ids)
        return self._groups

    def ids_by_product(self) -> dict[str, tuple[Sequence[int], bool]]:
        """Each product's trade ids in arrival order, and whether they strictly increase."""
        out = self._ids_by_product
        if out is None:
            tids = self.trade_ids
            out = self._ids_by_product = {}
            for pid, idx in self.groups().items():
                p_tids = pick(tids, idx)
                out[pid] = (p_tids, increasing(p_tids))
        return out


def group_positions(keys: Sequence[str]) -> dict[str, list[int]]:
    """Each key's positions in order; keys in order of first appearance."""
    groups: dict[str, list[int]] = {}
    get = groups.get
    for i, key in enumerate(keys):
        g = get(key)
        if g is None:
            groups[key] = [i]
        else:
            g.append(i)
    return groups


def increasing(xs: Sequence[Any]) -> bool:
    """Each item greater than the one before (a C-level pass)."""
    return all(map(lt, xs, islice(xs, 1, None)))


def nondecreasing(xs: Sequence[Any]) -> bool:
    """No item less than the one before (a C-level pass)."""
    return all(map(le, xs, islice(xs, 1, None)))


def pick(column: Sequence[Any], indices: Sequence[int]) -> Sequence[Any]:
    """``column`` at ``indices`` (the column itself when they are all of it), in a C loop."""
    if len(indices) == len(column):
        return column
    if len(indices) == 1:
        return (column[indices[0]],)
    return itemgetter(*indices)(column)
