"""Every rule about exchange time: what a valid time is, how it orders, and its value in seconds.

Coinbase sends ISO-8601 UTC times (``2024-05-01T12:34:56.789012Z``). :func:`is_time` is the
validity rule, :func:`parse_time_us` the exact value the out-of-order rule compares (``None`` for
exactly the strings :func:`is_time` refuses), and
:class:`IsoTimeParser` the float seconds the analytics' windows run on, fast.

Analytics need exchange time as a number for every trade. ``datetime.fromisoformat`` costs about a
microsecond; trades arrive in order, so the minute prefix repeats and is parsed once per minute,
and in the fixed form (``…SS.ffffffZ``, the only one Coinbase sends) the second prefix repeats
too, so most times only need their six fraction digits checked. :meth:`IsoTimeParser.parse_fixed`
converts a whole batch of fixed-form times with C-level loops, and :func:`fixed_seconds` a whole
column, by the C kernel when it is built (``_rowscan.c: fixed_seconds``) and else by
:func:`fixed_seconds_reference`.

A fixed-form time is ``epoch(second) + int(ffffff) / 1e6`` on every path, so a string has one
value whichever path parses it; other forms are ``epoch(minute) + float(seconds)``.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice, repeat
from operator import add, itemgetter, le, truediv

try:
    from mercurystream.shared import _rowscan
except ImportError:  # built without a C compiler: the reference does all the work
    _rowscan = None

FIXED_LEN = 27
_KERNEL_COLUMNS = (list, tuple)
"""The column types the C kernels read in place; any other sequence takes the reference."""
_FIXED_TEMPLATE = "0000-00-00T00:00:00.000000Z"
_DIGITS_TO_ZERO = str.maketrans("123456789", "000000000")
_SECOND = itemgetter(slice(0, 19))
_FRACTION = itemgetter(slice(20, 26))
_MAX_SECONDS = 4096
"""Second prefixes whose epoch :meth:`IsoTimeParser.parse_fixed` remembers (a replay jumps around)."""
_UNKNOWN = object()
_NO_SECOND = "\0" * (FIXED_LEN + 1)
"""Longer than any fixed-form time, so no string starts with it: the second cache starts empty."""


def all_fixed_form(times: Sequence[object]) -> bool:
    """:func:`all_fixed_form_reference`, by the C kernel when it is built (a few ns a time)."""
    if _rowscan is None or type(times) not in _KERNEL_COLUMNS:
        return all_fixed_form_reference(times)
    return _rowscan.all_fixed_form(times)


def all_fixed_form_reference(times: Sequence[object]) -> bool:
    """Every item is a ``str`` in the fixed form ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` with ASCII digits.

    One C pass over the joined strings (digits mapped to ``0``, compared with the template); a
    regex per time costs ten times that. Says nothing of calendar validity.
    """
    try:
        joined = "".join(times)  # type: ignore[arg-type]
    except TypeError:
        return False
    return (
        len(joined) == FIXED_LEN * len(times)
        and set(map(len, times)) <= {FIXED_LEN}
        and (joined.translate(_DIGITS_TO_ZERO) == _FIXED_TEMPLATE * len(times))
    )


class IsoTimeParser:
    """Parse ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` (or ``+00:00``) to float epoch seconds; ``None`` if not a time.

    The result for a string never depends on what was parsed before: the caches only skip checks
    that an earlier string with the same prefix already passed.
    """

    __slots__ = ("_epoch", "_prefix", "_second", "_second_epoch", "_seconds")

    def __init__(self) -> None:
        self._prefix = ""
        self._epoch = 0.0
        self._second = _NO_SECOND
        self._second_epoch = 0.0
        self._seconds: dict[str, float | None] = {}

    def parse(self, s: object) -> float | None:
        # ``YYYY-MM-DDTHH:MM:SS.`` validated before; only ``ffffffZ`` is new.
        if type(s) is str and s.startswith(self._second) and len(s) == FIXED_LEN and s[26] == "Z":
            frac = s[20:26]
            if frac.isdigit() and frac.isascii():
                return self._second_epoch + int(frac) / 1e6
        return self._parse(s)

    def parse_fixed(self, times: Sequence[str]) -> list[float] | None:
        """:meth:`parse` of every time, for times that passed :func:`all_fixed_form`.

        ``None`` if any of them is not a valid time (a calendar error, second 61): the caller then
        parses one by one to tell which. Each distinct second is looked up once. Times in order
        (the usual batch) are cut into runs of one second by bisection, so the second's epoch is
        found once per run rather than once per time.
        """
        fractions = map(truediv, map(int, map(_FRACTION, times)), repeat(1e6))
        get = self._second_epoch_of
        if all(map(le, times, islice(times, 1, None))):
            bases: list[float] = []
            i = 0
            n = len(times)
            while i < n:
                second = times[i][:19]
                # Every character after a fixed-form second sorts below "~".
                j = bisect_right(times, second + "~", i)
                epoch = get(second)
                if epoch is None:
                    return None
                bases += repeat(epoch, j - i)
                i = j
            return list(map(add, bases, fractions))
        seconds = list(map(_SECOND, times))
        distinct = set(seconds)
        # Remembered seconds in one C pass; only the others are parsed.
        epochs = dict(zip(distinct, map(self._seconds.get, distinct, repeat(_UNKNOWN)), strict=True))
        if _UNKNOWN in epochs.values():
            epochs = {sec: get(sec) if epoch is _UNKNOWN else epoch for sec, epoch in epochs.items()}
        if None in epochs.values():
            return None
        return list(map(add, map(epochs.__getitem__, seconds), fractions))

    def _second_epoch_of(self, second: str) -> float | None:
        """The epoch of ``YYYY-MM-DDTHH:MM:SS`` as :meth:`parse` computes it, remembered."""
        epochs = self._seconds
        epoch = epochs.get(second, _UNKNOWN)
        if epoch is _UNKNOWN:
            if len(epochs) >= _MAX_SECONDS:
                epochs.clear()
            epoch = epochs[second] = self._parse(second + ".000000Z")
        return epoch  # type: ignore[return-value]

    def _parse(self, s: object) -> float | None:
        if not isinstance(s, str) or len(s) < 20 or s[16] != ":":
            return self._slow(s)
        prefix = s[:16]
        if prefix != self._prefix:
            base = self._slow(prefix + ":00Z")
            if base is None:
                return None
            self._prefix, self._epoch = prefix, base
        tail = s[17:]
        if tail.endswith("Z"):
            tail = tail[:-1]
        elif tail.endswith("+00:00"):
            tail = tail[:-6]
        else:
            return self._slow(s)
        if not _is_seconds(tail):
            return None
        if len(s) == FIXED_LEN and s[19] == "." and s[26] == "Z":
            whole = int(tail[:2])
            if whole >= 61:
                return None
            self._second = s[:20]
            self._second_epoch = self._epoch + whole
            return self._second_epoch + int(tail[3:]) / 1e6
        sec = float(tail)
        if sec >= 61.0:
            return None
        return self._epoch + sec

    @staticmethod
    def _slow(s: object) -> float | None:
        if not isinstance(s, str):
            return None
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()


def _is_seconds(tail: str) -> bool:
    """``SS`` or ``SS.fff…`` in ASCII digits: ``float()`` alone would take ``5_6``, ``+5`` or `` 5``."""
    if len(tail) < 2 or not tail.isascii() or not tail[:2].isdigit():
        return False
    return len(tail) == 2 or (tail[2] == "." and len(tail) > 3 and tail[3:].isdigit())


FIXED_FORM = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z").fullmatch
"""Coinbase's fixed form with ASCII digits: two such times order like their strings."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def parse_time_us(s: object) -> int | None:
    """A time as integer microseconds since the epoch (naive means UTC); ``None`` exactly when
    :func:`is_time` says it is not a time.

    The validity rule is :func:`is_time`'s, so every consumer agrees on which strings are times:
    ``datetime.fromisoformat`` alone also takes a comma before the fraction, an empty fraction
    (``56.Z``) or a space before the ``Z``, and the out-of-order clock once took such a string,
    stamped 2099, as a product's latest time. The value is ``fromisoformat``'s (exact, fraction
    digits past the sixth dropped), except for second 60 (a leap second), which :class:`IsoTimeParser`
    reads as the next minute's second 0 and ``fromisoformat`` refuses: the same here.
    """
    if not is_time(s):
        return None
    text: str = s  # type: ignore[assignment]
    try:
        return _us_of(text)
    except ValueError:
        # The one form the validity rule takes and fromisoformat does not: second 60.
        return _us_of(text[:17] + "59" + text[19:]) + 1_000_000


def _us_of(s: str) -> int:
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _ONE_US


_validity = IsoTimeParser()
_columns = IsoTimeParser()


def fixed_seconds_reference(times: Sequence[object]) -> list[float] | None:
    """Every time's :meth:`IsoTimeParser.parse` value when all are valid times in the fixed form; else ``None``
    (the caller then parses one by one, to tell which are not)."""
    if not all_fixed_form_reference(times):
        return None
    return _columns.parse_fixed(times)  # type: ignore[arg-type]


def fixed_seconds(times: Sequence[object]) -> list[float] | None:
    """:func:`fixed_seconds_reference`, by the C kernel when it is built (one pass, no string slicing)."""
    if _rowscan is None or type(times) not in _KERNEL_COLUMNS:
        return fixed_seconds_reference(times)
    return _rowscan.fixed_seconds(times)


MAX_FUTURE_SKEW_S = 300.0
"""How far ahead of the receiver's wall clock an exchange time may be (``MAX_FUTURE_SKEW_S``)."""


def latest_valid_s(recv_us: int, max_future_skew_s: float = MAX_FUTURE_SKEW_S) -> float:
    """The latest exchange time, in epoch seconds, a trade received at ``recv_us`` may carry.

    A later one is ``invalid_time`` like an unparseable one: one trade stamped ``9999-12-31``
    would otherwise move a window's clock past every real trade, and the windows would skip them
    all as outside the window until real time caught up. The receiver's clock is the one P2 reads
    at the socket (``Batch.recv_ts_us``); the skew covers exchange clocks that run ahead.
    """
    return recv_us / 1e6 + max_future_skew_s


def is_time(s: object) -> bool:
    """Whether ``s`` is a time a trade can carry: a string :class:`IsoTimeParser` reads.

    The one validity rule: :func:`parse_time_us` is ``None`` for exactly the strings this refuses,
    and a time it refuses moves no clock (no window's, no detector's).
    """
    return _validity.parse(s) is not None


def latest_valid_many(recv_us: Sequence[int], max_future_skew_s: float = MAX_FUTURE_SKEW_S) -> list[float]:
    """:func:`latest_valid_s` of each stamp, in C-level passes (a replay's read carries one an event)."""
    return list(map(add, map(truediv, recv_us, repeat(1e6)), repeat(max_future_skew_s)))
