"""Fast parsing of Coinbase's ISO-8601 times (``2024-05-01T12:34:56.789012Z``) to epoch seconds.

Analytics need exchange time as a number for every trade. ``datetime.fromisoformat`` costs about a
microsecond; trades arrive in order, so the minute prefix repeats and is parsed once per minute.
"""

from __future__ import annotations

from datetime import UTC, datetime


class IsoTimeParser:
    """Parse ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` (or ``+00:00``) to float epoch seconds; ``None`` if not a time."""

    __slots__ = ("_epoch", "_prefix")

    def __init__(self) -> None:
        self._prefix = ""
        self._epoch = 0.0

    def parse(self, s: object) -> float | None:
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
