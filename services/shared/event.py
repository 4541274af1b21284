"""The stamps' names, the one definition of P1→P2 latency, and the column helpers every rule shares.

P1 stamps ``ingest_ts_ms`` (the seed's field) and ``ingest_ts_us``; P2 stamps ``recv_ts_ms`` and
``recv_ts_us`` unless the frame already carries them (a replay with ``--keep-timestamps``), so a
recorded stream replays with its original latencies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import islice, repeat
from operator import add, itemgetter, le, lt
from typing import Any, TypeVar

try:
    from mercurystream.shared import _rowscan
except ImportError:  # built without a C compiler: the reference does all the work
    _rowscan = None

T = TypeVar("T")

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


_ALL_BUT_LAST = itemgetter(slice(None, -1))
_LAST_BYTE = itemgetter(slice(-1, None))
_CLOSING_BRACE = {b"}"}


def stamped_lines_reference(payloads: Sequence[bytes], suffix: bytes) -> list[bytes] | None:
    """Each payload with its closing brace replaced by ``suffix`` (:func:`recv_suffix`), or ``None``
    unless every payload ends in its brace (one with trailing whitespace is spliced one by one)."""
    if not set(map(_LAST_BYTE, payloads)) <= _CLOSING_BRACE:
        return None
    return list(map(add, map(_ALL_BUT_LAST, payloads), repeat(suffix)))


def stamped_lines(payloads: Sequence[bytes], suffix: bytes) -> list[bytes] | None:
    """:func:`stamped_lines_reference`, by the C kernel's ``splice`` when it is built (one copy a line, not two)."""
    if _rowscan is None or type(payloads) is not list:
        return stamped_lines_reference(payloads, suffix)
    return _rowscan.splice(payloads, suffix)


def _by_identity(fn: Callable[[Sequence[Any]], T]) -> Callable[[Sequence[Any]], T]:
    """``fn`` of a column, remembered for the last few column objects it was asked about.

    Several rules test the same column of a batch (the dedupe and the gap rule both ask whether a
    product's ids increase; VWAP and volatility whether its times do). Columns are never mutated
    once built, and each remembered one is held, so its identity cannot be reused while cached.
    """
    cache: dict[int, tuple[Sequence[Any], T]] = {}

    def memo(xs: Sequence[Any]) -> T:
        hit = cache.get(id(xs))
        if hit is not None and hit[0] is xs:
            return hit[1]
        if len(cache) >= _IDENTITY_CACHE:
            cache.clear()
        result = fn(xs)
        cache[id(xs)] = (xs, result)
        return result

    memo.__doc__ = fn.__doc__
    memo.__name__ = fn.__name__
    return memo


_IDENTITY_CACHE = 64


@_by_identity
def group_positions(keys: Sequence[str]) -> dict[str, list[int]]:
    """Each key's positions in order; keys in order of first appearance (the caller must not change it)."""
    groups: dict[str, list[int]] = {}
    get = groups.get
    for i, key in enumerate(keys):
        g = get(key)
        if g is None:
            groups[key] = [i]
        else:
            g.append(i)
    return groups


@_by_identity
def increasing(xs: Sequence[Any]) -> bool:
    """Each item greater than the one before (a C-level pass)."""
    return all(map(lt, xs, islice(xs, 1, None)))


@_by_identity
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
