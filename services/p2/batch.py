"""The one batch type: a socket read's events, normalized once into columns, with their recorded lines.

:func:`normalize` is the whole decision about a read's payloads, made once at the socket and read
by every consumer afterwards:

- a read whose every payload decodes to ``shared.schema.WireTrade`` (the common case, whatever
  optional, stamp or unknown keys it carries) fills every column at once (``shared.wire.Columns``);
- anything else is parsed once, generically, and checked field by field with the schema's own
  rules: a field of the wrong kind is ``None`` in its column, a broken schema is listed in
  :attr:`Batch.drift`, a value no trade can have in :attr:`Batch.invalid`; a payload that is
  not a JSON object is a frame error and never enters the batch.

The recorded line is the payload as received with P2's receive stamps spliced before its closing
brace, or the payload as is when it carried a ``recv_ts_ms`` already (a replay keeping its stamps):
a recording keeps P1's bytes, unknown keys included. A ``null`` receive stamp is no stamp, on every
path: P2 stamps the event, and the line carries P2's stamps in place of the receive-stamp members
sent (a null ``recv_ts_ms``, any ``recv_ts_us`` beside it), so no key is ever in it twice.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections.abc import Sequence
from itertools import repeat
from operator import le, sub, truediv
from typing import Any

from mercurystream.p2.log_spans import LogOrigin
from mercurystream.shared.event import (
    INGEST_MS,
    INGEST_US,
    RECV_MS,
    RECV_US,
    group_positions,
    latency_ms,
    pick,
    stamped_lines,
)
from mercurystream.shared.event import recv_suffix as _recv_suffix
from mercurystream.shared.schema import (
    BY_NAME,
    CONTROL,
    INT64_MAX,
    INT64_MIN,
    control_of,
    drift_of,
    invalid_reason,
    kind_ok,
    text_ok,
)
from mercurystream.shared.timeparse import (
    MAX_FUTURE_SKEW_S,
    IsoTimeParser,
    fixed_seconds,
    latest_valid_many,
    latest_valid_s,
)
from mercurystream.shared.wire import NOT_JSON as _NOT_JSON
from mercurystream.shared.wire import Columns
from mercurystream.shared.wire import parse_payload as _parse

COLUMNS = ("type", "product_id", "price", "last_size", "time", "trade_id", INGEST_MS, INGEST_US)
"""The fields a consumer reads, as :class:`Batch` columns (``types``, ``product_ids``, ... ``ingest_us``)."""
BACKFILLED = "backfilled"
_FIELDS = tuple(BY_NAME[name] for name in COLUMNS)
WIRE_COLUMNS = Columns((*COLUMNS, RECV_MS, RECV_US, BACKFILLED))
"""The typed decode of a read: the :data:`COLUMNS`, the event's own receive stamps and ``backfilled``."""
_time_parser = IsoTimeParser()
"""Shared by every batch: its caches skip repeated checks but never change a result."""
EVENT_OVERHEAD_BYTES = 512
"""What an event costs in memory beyond its recorded line (its column values and their objects), as
counted by :attr:`Batch.nbytes`: an estimate measured on typical trades, so byte bounds hold roughly."""


class Batch:
    """Events that arrived together, as columns in arrival order; shared by every subscriber, never mutated.

    Each column holds an event's value where it has the schema's kind for that field, else
    ``None``; :attr:`clean` says no column holds ``None`` and no event broke a rule, the case the
    batch kernels take. ``latencies`` are the P1→P2 latencies (``shared.event.latency_ms``) of the
    events at ``latency_at``. ``drift`` lists ``(index, detail)`` of the events that broke the
    schema, ``invalid`` ``(index, reason)`` of those no trade can be (a bad time is found by
    :meth:`trades`, which checks every time once). ``time_limit_s`` is the latest exchange time a
    trade of this batch may carry (``shared.timeparse.latest_valid_s``; infinite when the batch
    has no receive clock of its own). ``time_limits``, when not ``None``, is each event's own bound
    in its place: an event that carries its own receive stamp (a replay keeping them) is bounded
    by that stamp, so a replay judges a time as the P2 that recorded it did. ``controls`` lists
    ``(index, fields)`` of the control events (``shared.schema.control_of``: a gap P1 announces, a
    backfill's result), which are also in ``invalid`` under ``control``; ``backfilled`` the indices
    of trades marked ``backfilled: true``. Either makes the batch not clean.
    """

    __slots__ = (
        "_groups",
        "_nbytes",
        "_trades",
        "backfilled",
        "clean",
        "controls",
        "counted",
        "drift",
        "duplicates",
        "ingest_ms",
        "ingest_us",
        "invalid",
        "latencies",
        "latency_at",
        "lines",
        "origin",
        "prices",
        "product_ids",
        "recv_ts_us",
        "repeats",
        "sizes",
        "time_limit_s",
        "time_limits",
        "times",
        "trade_ids",
        "types",
    )

    def __init__(
        self,
        lines: Sequence[bytes],
        recv_ts_us: int,
        columns: Sequence[Sequence[Any]],
        latencies: Sequence[float],
        latency_at: Sequence[int] | None = None,
        drift: Sequence[tuple[int, dict[str, Any]]] = (),
        invalid: Sequence[tuple[int, str]] = (),
        clean: bool = False,
        time_limit_s: float = math.inf,
        controls: Sequence[tuple[int, dict[str, Any]]] = (),
        backfilled: Sequence[int] = (),
        time_limits: Sequence[float] | None = None,
    ) -> None:
        self.lines = lines
        self.recv_ts_us = recv_ts_us
        (
            self.types,
            self.product_ids,
            self.prices,
            self.sizes,
            self.times,
            self.trade_ids,
            self.ingest_ms,
            self.ingest_us,
        ) = columns
        self.latencies = latencies
        self.latency_at: Sequence[int] = range(len(lines)) if latency_at is None else latency_at
        self.drift = drift
        self.invalid = invalid
        self.clean = clean
        self.time_limit_s = time_limit_s
        self.time_limits = time_limits
        self.controls = controls
        self.backfilled = backfilled
        self._groups: dict[str, list[int]] | None = None
        self._trades: Trades | None = None
        self.origin: LogOrigin | None = None
        """Where the batch is in the JetStream log (``P2_SOURCE=nats``): set by that source, read by forensics.
        A piece cut by :meth:`part` keeps the whole batch's, which covers it: a range that may start or end a
        few messages beyond the piece's lines, never one that misses them."""
        self._nbytes = -1
        self.duplicates: list[int] | None = None
        """The indices of this batch's duplicates by the duplicate rule, decided once at publish
        (``p2.dedupe``); ``None`` when nobody decided (a batch made by a test or a tool)."""
        self.repeats: list[tuple[int, str]] | None = None
        """``(index, reason)`` of the trades the analytics' dedupe does not count, decided with
        :attr:`duplicates`; ``None`` likewise."""
        self.counted: Any = None
        """What :attr:`repeats` leaves every analytics consumer (``analytics.dedupe.Counted``), worked
        out once by the first of them; never copied by :meth:`part`, which recomputes it."""

    @classmethod
    def of_events(
        cls,
        events: Sequence[dict[str, Any]],
        recv_ts_us: int | None = None,
        max_future_skew_s: float = MAX_FUTURE_SKEW_S,
    ) -> Batch:
        """A batch of parsed events, normalized as :func:`normalize` would (tests, bundles, tools).

        They are written with the standard library, which keeps what orjson cannot (NaN, infinity,
        integers of any size), so such values reach the schema's checks as they were.

        With ``recv_ts_us``, events without stamps of their own get it, as at the socket; without,
        each event's latency comes from its own stamps only, and no time is too far ahead.
        """
        payloads = [json.dumps(e, separators=(",", ":"), ensure_ascii=False).encode() for e in events]
        if recv_ts_us is not None:
            batch, _ = normalize(payloads, recv_ts_us, max_future_skew_s)
            assert batch is not None or not payloads
            return batch if batch is not None else cls.empty(recv_ts_us)
        rows = [_checked_row(e) for e in events]
        return _from_rows(payloads, rows, 0, own_only=True)

    @classmethod
    def empty(cls, recv_ts_us: int = 0) -> Batch:
        return cls([], recv_ts_us, ((),) * len(COLUMNS), [], clean=True)

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def nbytes(self) -> int:
        """The memory this batch is counted for by byte bounds: its lines plus
        :data:`EVENT_OVERHEAD_BYTES` an event (computed once, shared by every queue holding it)."""
        if self._nbytes < 0:
            self._nbytes = sum(map(len, self.lines)) + EVENT_OVERHEAD_BYTES * len(self.lines)
        return self._nbytes

    def events_to_free(self, nbytes: int) -> int:
        """How many of the oldest events must go to free at least ``nbytes`` (all of them at most)."""
        if nbytes <= 0:
            return 0
        total = 0
        for k, line in enumerate(self.lines, 1):
            total += len(line) + EVENT_OVERHEAD_BYTES
            if total >= nbytes:
                return k
        return len(self.lines)

    def columns(self) -> tuple[Sequence[Any], ...]:
        return (
            self.types,
            self.product_ids,
            self.prices,
            self.sizes,
            self.times,
            self.trade_ids,
            self.ingest_ms,
            self.ingest_us,
        )

    def groups(self) -> dict[str, list[int]]:
        """Each product's event indices in arrival order (events without a product id are in none)."""
        groups = self._groups
        if groups is None:
            groups = group_positions(self.product_ids)
            if None in groups:
                groups = {k: v for k, v in groups.items() if k is not None}
            self._groups = groups
        return groups

    def trades(self) -> Trades:
        """The events the analytics count, checked once per batch for every analytics consumer."""
        if self._trades is None:
            self._trades = Trades.of(self)
        return self._trades

    def tail(self, start: int) -> Batch:
        """The events from ``start`` on (drop-oldest cuts a queued batch here)."""
        return self.part(start, len(self.lines))

    def part(self, start: int, stop: int) -> Batch:
        """The events ``start`` to ``stop`` (excluded): the one place a batch is cut.

        :meth:`tail` for drop-oldest; one event at a time when a consumer failed on the whole. The
        piece keeps the batch's :attr:`origin` (which messages of the log held its lines are not known).
        """
        at = self.latency_at
        if type(at) is range:
            lat_start, lat_stop, lat_at = start, stop, None
        else:
            lat_start, lat_stop = bisect_left(at, start), bisect_left(at, stop)
            lat_at = [i - start for i in at[lat_start:lat_stop]]
        part = Batch(
            self.lines[start:stop],
            self.recv_ts_us,
            [col[start:stop] for col in self.columns()],
            self.latencies[lat_start:lat_stop],
            lat_at,  # type: ignore[arg-type]
            [(i - start, d) for i, d in self.drift if start <= i < stop],
            [(i - start, r) for i, r in self.invalid if start <= i < stop],
            self.clean,
            self.time_limit_s,
            [(i - start, c) for i, c in self.controls if start <= i < stop],
            [i - start for i in self.backfilled if start <= i < stop],
            None if self.time_limits is None else self.time_limits[start:stop],
        )
        part.origin = self.origin
        if self.duplicates is not None:
            part.duplicates = [i - start for i in self.duplicates if start <= i < stop]
        if self.repeats is not None:
            part.repeats = [(i - start, r) for i, r in self.repeats if start <= i < stop]
        return part


class Trades:
    """A batch's trades that count, as columns, and the rest with the reason each does not.

    Every event is either a trade (``positions[k]`` is its index in the batch) or in ``rejects``
    as ``(index, reason)``, both in batch order. The clean case checks the times as one fixed-form
    column, and the time bound as one ``max`` of it; anything else checks event by event.
    ``future`` lists the events whose time is valid but past the batch's ``time_limit_s`` or the
    event's own bound in ``time_limits`` (also in ``rejects`` as ``invalid_time``). ``off_clock``
    lists every event whose time is a string that may move no clock: not a time by
    ``shared.timeparse.is_time``, or in ``future``, whatever other reason the event is rejected for;
    the detectors keep them off their clocks as the windows do.
    """

    __slots__ = (
        "_by_product",
        "_groups",
        "future",
        "ids",
        "off_clock",
        "positions",
        "prices",
        "product_ids",
        "rejects",
        "sizes",
        "times",
    )

    def __init__(
        self,
        positions: Sequence[int],
        product_ids: Sequence[str],
        prices: Sequence[float],
        sizes: Sequence[float],
        times: Sequence[float],
        ids: Sequence[int],
        rejects: Sequence[tuple[int, str]],
        groups: dict[str, list[int]] | None = None,
        future: Sequence[int] = (),
        off_clock: Sequence[int] = (),
    ) -> None:
        self.positions = positions
        self.product_ids = product_ids
        self.prices = prices
        self.sizes = sizes
        self.times = times
        self.ids = ids
        self.rejects = rejects
        self.future = future
        self.off_clock = off_clock
        self._groups = groups
        self._by_product: dict[str, ProductTrades] | None = None

    @classmethod
    def of(cls, batch: Batch) -> Trades:
        n = len(batch)
        limit = batch.time_limit_s
        limits = batch.time_limits
        if batch.clean and n:
            times = fixed_seconds(batch.times)
            if times is not None and (max(times) <= limit if limits is None else all(map(le, times, limits))):
                return cls(
                    range(n),
                    batch.product_ids,
                    batch.prices,
                    batch.sizes,
                    times,
                    batch.trade_ids,
                    (),
                    batch.groups(),
                )
        invalid = dict(batch.invalid)
        parse = _time_parser.parse
        positions: list[int] = []
        times: list[float] = []
        rejects: list[tuple[int, str]] = []
        future: list[int] = []
        off_clock: list[int] = []
        for i, t in enumerate(batch.times):
            reason = invalid.get(i)
            if reason is None:
                s = parse(t)
                if s is not None:
                    if s <= (limit if limits is None else limits[i]):
                        positions.append(i)
                        times.append(s)
                        continue
                    future.append(i)
                if t is not None:
                    off_clock.append(i)
                reason = "invalid_time"
            elif t is not None and ((s := parse(t)) is None or s > (limit if limits is None else limits[i])):
                off_clock.append(i)  # rejected for another field, and its time is no time either
            rejects.append((i, reason))
        if not positions:
            return cls((), (), (), (), (), (), rejects, None, future, off_clock)
        return cls(
            positions,
            pick(batch.product_ids, positions),
            pick(batch.prices, positions),
            pick(batch.sizes, positions),
            times,
            pick(batch.trade_ids, positions),
            rejects,
            None,
            future,
            off_clock,
        )

    def __len__(self) -> int:
        return len(self.positions)

    def subset(self, keep: Sequence[int]) -> Trades:
        """These trades at ``keep`` (positions into these columns, in order); the rejects unchanged."""
        if not keep:
            return Trades((), (), (), (), (), (), self.rejects, None, self.future, self.off_clock)
        return Trades(
            pick(self.positions, keep),
            pick(self.product_ids, keep),
            pick(self.prices, keep),
            pick(self.sizes, keep),
            pick(self.times, keep),
            pick(self.ids, keep),
            self.rejects,
            None,
            self.future,
            self.off_clock,
        )

    def groups(self) -> dict[str, list[int]]:
        """Each product's trade positions (into these columns), products in order of first appearance."""
        if self._groups is None:
            self._groups = group_positions(self.product_ids)
        return self._groups

    def by_product(self) -> dict[str, ProductTrades]:
        out = self._by_product
        if out is None:
            out = self._by_product = {
                pid: ProductTrades(
                    pick(self.prices, idx), pick(self.sizes, idx), pick(self.times, idx), pick(self.ids, idx)
                )
                for pid, idx in self.groups().items()
            }
        return out


class ProductTrades:
    """One product's trades of a batch in arrival order, shared by every analytics consumer."""

    __slots__ = ("ids", "prices", "sizes", "times")

    def __init__(
        self, prices: Sequence[float], sizes: Sequence[float], times: Sequence[float], ids: Sequence[int]
    ) -> None:
        self.prices = prices
        self.sizes = sizes
        self.times = times
        self.ids = ids

    def __len__(self) -> int:
        return len(self.times)


# --- normalizing a read ----------------------------------------------------------------------------


def normalize(
    payloads: Sequence[bytes], recv_us: int, max_future_skew_s: float = MAX_FUTURE_SKEW_S
) -> tuple[Batch | None, list[tuple[str, bytes]]]:
    """A read's payloads as one batch stamped ``recv_us``, and its frame errors ``(reason, payload)``.

    Its trades may carry exchange times up to ``max_future_skew_s`` ahead of ``recv_us``.

    The common read decodes typed as a whole into columns (``shared.wire.Columns``); a read with
    anything else in it is taken payload by payload, each parsed once.
    """
    if not payloads:
        return None, []
    columns = WIRE_COLUMNS(payloads)
    if columns is None or not _texts_ok(columns[1]):
        return _normalize_each(payloads, recv_us, max_future_skew_s)
    own_ms = columns[8]
    n = len(payloads)
    if True in columns[10]:
        typed = [(True, row, None, None, None) for row in zip(*columns, strict=True)]
        return _from_rows(payloads, typed, recv_us, max_future_skew_s=max_future_skew_s), []
    ingest_us = columns[7]
    unstamped = own_ms.count(None) == n and columns[9].count(None) == n
    lines = stamped_lines(payloads, _recv_suffix(recv_us)) if unstamped else None
    if lines is not None:
        if None not in ingest_us:
            latencies = list(map(truediv, map(recv_us.__sub__, ingest_us), repeat(1000.0)))
        elif ingest_us.count(None) == n:
            latencies = list(map(float, map((recv_us // 1000).__sub__, columns[6])))
        else:
            recv_ms = recv_us // 1000
            latencies = [
                (recv_us - us) / 1000.0 if us is not None else float(recv_ms - ms)
                for us, ms in zip(ingest_us, columns[6], strict=True)
            ]
        limit = latest_valid_s(recv_us, max_future_skew_s)
        return Batch(lines, recv_us, columns[:8], latencies, None, clean=True, time_limit_s=limit), []
    if None not in own_ms and None not in columns[9] and None not in ingest_us:
        # Every event carries its own receive stamps (a replay keeping them): kept as sent, bounded by them.
        latencies = list(map(truediv, map(sub, columns[9], ingest_us), repeat(1000.0)))
        limit = latest_valid_s(recv_us, max_future_skew_s)
        limits = latest_valid_many(columns[9], max_future_skew_s)
        batch = Batch(
            list(payloads), recv_us, columns[:8], latencies, clean=True, time_limit_s=limit, time_limits=limits
        )
        return batch, []
    typed = [(True, row, None, None, None) for row in zip(*columns, strict=True)]
    return _from_rows(payloads, typed, recv_us, clean=True, max_future_skew_s=max_future_skew_s), []


def _texts_ok(product_ids: Sequence[str]) -> bool:
    """The typed decoder's product ids all writable as UTF-8 (``shared.schema.text_ok``): one pass over the
    distinct ids of a read, which are few."""
    distinct = set(product_ids)
    return "".join(distinct).isascii() or all(map(text_ok, distinct))


def _normalize_each(
    payloads: Sequence[bytes], recv_us: int, max_future_skew_s: float
) -> tuple[Batch | None, list[tuple[str, bytes]]]:
    rows: list[_Row] = []
    kept: list[bytes] = []
    errors: list[tuple[str, bytes]] = []
    for p in payloads:
        row = WIRE_COLUMNS.row(p)
        if row is not None and text_ok(row[1]):
            rows.append((True, row, None, None, None))
            kept.append(p)
            continue
        obj = _parse(p)
        if obj is _NOT_JSON:
            errors.append(("invalid_json", p))
        elif type(obj) is not dict:
            errors.append(("not_object", p))
        else:
            rows.append(_checked_row(obj))
            kept.append(p)
    if not rows:
        return None, errors
    return _from_rows(kept, rows, recv_us, max_future_skew_s=max_future_skew_s), errors


def is_json(payload: bytes) -> bool:
    """Whether a payload is JSON as :func:`normalize` reads it (one value, in UTF-8, of any kind)."""
    return _parse(payload) is not _NOT_JSON


def _checked_row(obj: dict[str, Any]) -> _Row:
    """``(typed, column values + receive stamps + backfilled, drift detail, invalid reason, control)``
    of one parsed event. A control event is no drift: it is skipped by the analytics as ``control``."""
    values = tuple(_column_value(f, obj.get(f.name)) for f in _FIELDS)
    own_ms = obj.get(RECV_MS)
    own: tuple[Any, Any]
    if own_ms is None:
        own = (None, _RESTAMP if RECV_MS in obj or RECV_US in obj else None)
    else:
        own = tuple(v if type(v) is int and INT64_MIN <= v <= INT64_MAX else None for v in (own_ms, obj.get(RECV_US)))
        if own[0] is None:
            own = (_OWN_UNTYPED, None)
    row = (*values, *own, obj.get(BACKFILLED) is True)
    control = control_of(obj)
    if control is not None:
        return False, row, None, CONTROL, control
    return False, row, drift_of(obj), invalid_reason(obj), None


def _column_value(field: Any, value: Any) -> Any:
    """A value as its column holds it: ``None`` unless of the field's kind, an int of a number field as
    the float the typed decode makes of it (past 2**53 it is rounded; kept an int, the two paths differed)."""
    if not kind_ok(field, value):
        return None
    return float(value) if type(value) is int and field.kind == "number" else value


_Row = tuple[bool, tuple[Any, ...], dict[str, Any] | None, str | None, dict[str, Any] | None]
_OWN_UNTYPED = object()
"""A ``recv_ts_ms`` that is there but not a 64-bit int (nor null): the line is still kept as sent, with no
latency (a 401-digit stamp made the latency's float conversion raise and lose the read)."""
_RESTAMP = object()
"""The own ``recv_ts_us`` of an event with no ``recv_ts_ms`` of its own but receive-stamp members (a null
``recv_ts_ms``, any ``recv_ts_us``): P2 stamps it, and its line has P2's stamps in their place."""


def _from_rows(
    kept: Sequence[bytes],
    rows: Sequence[_Row],
    recv_us: int,
    *,
    clean: bool = False,
    own_only: bool = False,
    max_future_skew_s: float = MAX_FUTURE_SKEW_S,
) -> Batch:
    """A batch built event by event: lines, latencies and the per-event verdicts.

    ``own_only``: the events' own stamps are all there is (no receive clock, so no time bound).
    Otherwise an event that keeps its own receive stamp is bounded by it (``Batch.time_limits``), one
    without by ``recv_us``.
    """
    suffix = _recv_suffix(recv_us)
    recv_ms = recv_us // 1000
    lines: list[bytes] = []
    latencies: list[float] = []
    at: list[int] = []
    drift: list[tuple[int, dict[str, Any]]] = []
    invalid: list[tuple[int, str]] = []
    controls: list[tuple[int, dict[str, Any]]] = []
    backfilled: list[int] = []
    limit = math.inf if own_only else latest_valid_s(recv_us, max_future_skew_s)
    limits: list[float] = []
    own_bound = False
    for i, (p, (_typed, row, d, reason, control)) in enumerate(zip(kept, rows, strict=True)):
        ing_ms, ing_us, own_ms, own_us = row[6], row[7], row[8], row[9]
        if own_ms is not None and not own_only:
            own_clock = own_us if type(own_us) is int else (own_ms * 1000 if type(own_ms) is int else recv_us)
            limits.append(latest_valid_s(own_clock, max_future_skew_s))
            own_bound = True
        else:
            limits.append(limit)
        if own_ms is not None or own_only:
            lines.append(p)
            lat = latency_ms({INGEST_MS: ing_ms, INGEST_US: ing_us, RECV_MS: own_ms, RECV_US: own_us})
        else:
            lines.append(_splice(p, suffix) if own_us is None else _restamped(p, suffix))
            lat = (
                (recv_us - ing_us) / 1000.0
                if ing_us is not None
                else (float(recv_ms - ing_ms) if ing_ms is not None else None)
            )
        if lat is not None:
            latencies.append(lat)
            at.append(i)
        if d is not None:
            drift.append((i, d))
        if reason is not None:
            invalid.append((i, reason))
        if control is not None:
            controls.append((i, control))
        if row[10]:
            backfilled.append(i)
    columns = list(zip(*(r[1][:8] for r in rows), strict=True)) or [()] * len(COLUMNS)
    clean = clean and not drift and not invalid and not backfilled and all(None not in col for col in columns[:6])
    at_ = None if len(at) == len(lines) else at
    return Batch(
        lines,
        recv_us,
        columns,
        latencies,
        at_,
        drift,
        invalid,
        clean,
        limit,
        controls,
        backfilled,
        limits if own_bound else None,
    )


def _restamped(payload: bytes, suffix: bytes) -> bytes:
    """The payload with P2's stamps in place of its top-level receive-stamp members, every other member as sent.

    Splicing alone would write a key twice. The payload is known JSON (it was parsed); the walk finds
    each member's extent (the standard library's scanner), so a stamp key spelled with an escape or
    repeated is cut too and a nested one left alone. Should the walk fail anyway, the payload is kept
    as sent: no key twice, only no stamps of P2's.
    """
    try:
        text = payload.decode()
        kept = [text[a:b] for key, a, b in _members(text) if key != RECV_MS and key != RECV_US]
    except (ValueError, IndexError, RecursionError):
        return payload
    return _splice(("{" + ",".join(kept) + "}").encode(), suffix)


_scan_string = json.decoder.scanstring
_scan_value = json.JSONDecoder().raw_decode
_JSON_SPACE = " \t\n\r"


def _members(text: str) -> list[tuple[str, int, int]]:
    """``(key, start, end)`` of each member of the JSON object ``text``; ``ValueError`` or ``IndexError`` if none."""
    i = _skip_space(text, 0)
    if text[i] != "{":
        raise ValueError("not an object")
    i = _skip_space(text, i + 1)
    out: list[tuple[str, int, int]] = []
    if text[i] == "}":
        return out
    while True:
        if text[i] != '"':
            raise ValueError("not a key")
        start = i
        key, i = _scan_string(text, i + 1)
        i = _skip_space(text, i)
        if text[i] != ":":
            raise ValueError("no colon")
        _, i = _scan_value(text, _skip_space(text, i + 1))
        out.append((key, start, i))
        i = _skip_space(text, i)
        if text[i] == "}":
            return out
        if text[i] != ",":
            raise ValueError("no comma")
        i = _skip_space(text, i + 1)


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in _JSON_SPACE:
        i += 1
    return i


def _splice(payload: bytes, suffix: bytes) -> bytes:
    """The payload with P2's stamps before its closing brace (``{}`` becomes an object of stamps alone)."""
    body = payload.rstrip()[:-1]
    if body.strip() == b"{":
        return b"{" + suffix[1:]
    return body + suffix
