"""The normalized event's fields, the one definition of P1→P2 latency, and a batch's fields as columns.

P1 stamps ``ingest_ts_ms`` (the seed's field) and ``ingest_ts_us``; P2 stamps ``recv_ts_ms`` and
``recv_ts_us`` unless the frame already carries them (a replay with ``--keep-timestamps``), so a
recorded stream replays with its original latencies.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from operator import attrgetter, itemgetter, le, lt
from typing import Annotated, Any, Literal, overload

import msgspec
import orjson

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

    def __init__(self, columns: Sequence[Sequence[Any]] | None, *, checked: bool = False) -> None:
        """``checked``: the columns' types were already enforced (:func:`decode_columns`)."""
        self._groups: dict[str, list[int]] | None = None
        self._ids_by_product: dict[str, tuple[Sequence[int], bool]] | None = None
        if columns is None:
            columns = ((),) * len(REQUIRED_FIELDS)
            self.typed = False
        elif checked:
            self.typed = True
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


_Int = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]
"""Within orjson's integer range (which goes on to 2**64 - 1; msgspec bounds only int64): outside it
orjson parses a float, so such a payload must not decode as an int here; the generic path decides."""


class WireEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False, kw_only=True):
    """The exact shape of the events P1 sends, for typed decoding at P2's socket.

    Every key P1 writes is declared, so a payload with any other key (a drifted message P1 passed
    on as received, a replay that kept its receive stamps) fails to decode and takes the generic
    path; what decodes is what ``orjson`` would parse to the same values, with every required
    field of the kind :class:`EventColumns` checks. Not a dict: P2 reads these fields as columns.

    ``type`` and ``side`` take only the values P1's ``Trade`` model lets through, so they decode
    to shared strings instead of a new one per event, and the fields are declared in the order P1
    writes them, which msgspec matches without a lookup.
    """

    type: Literal["match", "ticker"]
    product_id: str
    price: int | float
    last_size: int | float
    time: str
    trade_id: _Int
    sequence: _Int | None = None
    side: Literal["buy", "sell"] | None = None
    best_bid: int | float | None = None
    best_ask: int | float | None = None
    ingest_ts_ms: _Int
    ingest_ts_us: _Int


_decode_wire = msgspec.json.Decoder(WireEvent).decode
_GET_COLUMNS = attrgetter(*REQUIRED_FIELDS, INGEST_US)


def decode_columns(payloads: Sequence[bytes]) -> tuple[EventColumns, Sequence[int]] | None:
    """The payloads' required fields as checked columns and their ``ingest_ts_us``, or ``None``.

    ``None`` when any payload is not a :class:`WireEvent`; the caller then parses them generically.
    Decoding into typed structs and transposing costs about what ``orjson`` alone costs for dicts,
    and the columns need no type check afterwards.
    """
    try:
        rows = list(map(_decode_wire, payloads))
    except msgspec.DecodeError:
        return None
    if not rows:
        return None
    *columns, ingest_us = zip(*map(_GET_COLUMNS, rows), strict=True)
    return EventColumns(columns, checked=True), ingest_us


class LazyEvents(Sequence[dict[str, Any]]):
    """A read's events as dicts, parsed from their payloads the first time anyone asks.

    A batch decoded to columns (:func:`decode_columns`) usually never needs them: every consumer
    takes its column path. The per-event paths (a reject sample, a product-limit fallback) still
    see the same dicts the generic path would have built. Slicing stays lazy.
    """

    __slots__ = ("_events", "_payloads")

    def __init__(self, payloads: Sequence[bytes]) -> None:
        self._payloads = payloads
        self._events: list[dict[str, Any]] | None = None

    def _parsed(self) -> list[dict[str, Any]]:
        events = self._events
        if events is None:
            events = self._events = list(map(orjson.loads, self._payloads))
        return events

    def __len__(self) -> int:
        return len(self._payloads)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            if self._events is not None:
                return self._events[index]
            return LazyEvents(self._payloads[index])
        return self._parsed()[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._parsed())
