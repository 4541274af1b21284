"""Exact rolling quantiles of the last ``size`` samples, computed when asked (the VWAP consumer's age p99)."""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

_OWN = object()
"""Marks a :class:`RollingQuantile` chunk whose list it made itself (samples, extendable)."""
_SMALL_CHUNK = 64
"""Fewer samples than this are added at once (into a list of the quantile's own), not kept as a chunk."""
_OWN_MAX = 4096
"""One of those lists holds at most this many samples (or the window's size) before a new one starts."""


class RollingQuantile:
    """Exact quantiles (nearest rank) of the last ``size`` samples, computed when asked.

    Samples are kept as the chunks they came in (``add_many`` keeps a reference to the sequence,
    which must not change afterwards), trimmed to the chunks that still hold one of the last
    ``size``; ``add_differences(m, values)`` adds ``m - v`` for each value without computing any of
    them. The consumer that uses it (the VWAP age p99) adds a socket read's ingest stamps thousands
    of times a second and asks about once a second, so a subtraction and a deque append per event
    bought nothing but the last query's window. Small additions (a lightly loaded stream's reads)
    go into lists of the quantile's own, so a query walks a few chunks, not thousands; it then
    selects the rank with a bounded heap rather than a sort when the rank is near either end.
    Samples must be comparable and not NaN.
    """

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("size must be positive")
        self.size = size
        self._chunks: deque[tuple[Any, Sequence[Any]]] = deque()
        self._count = 0

    def add(self, x: float) -> None:
        self._add(None, (x,))

    def add_many(self, xs: Iterable[float]) -> None:
        if not isinstance(xs, (list, tuple)):
            xs = list(xs)
        self._add(None, xs)

    def add_differences(self, minuend: int, values: Sequence[int]) -> None:
        """Add ``minuend - v`` for each of ``values`` (a batch's clock read minus its ingest stamps)."""
        self._add(minuend, values)

    def _add(self, minuend: int | None, values: Sequence[Any]) -> None:
        n = len(values)
        if not n:
            return
        chunks = self._chunks
        if n < _SMALL_CHUNK:
            last = chunks[-1] if chunks else None
            if last is not None and last[0] is _OWN and len(last[1]) < min(self.size, _OWN_MAX):
                own = last[1]
            else:
                own = []
                chunks.append((_OWN, own))
            own += values if minuend is None else map(minuend.__sub__, values)  # type: ignore[operator]
        else:
            chunks.append((minuend, values))
        self._count += n
        size = self.size
        while self._count - len(chunks[0][1]) >= size:
            self._count -= len(chunks.popleft()[1])

    def _window(self) -> list[Any]:
        """The last ``size`` samples (in no particular order)."""
        out: list[Any] = []
        need = self.size
        for minuend, values in reversed(self._chunks):
            take = values if len(values) <= need else values[len(values) - need :]
            out += map(minuend.__sub__, take) if type(minuend) is int else take
            need -= len(take)
            if not need:
                break
        return out

    def quantile(self, q: float) -> float | None:
        """The smallest sample with at least ``q`` of the window at or below it; ``None`` if empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError("q must be within [0, 1]")
        window = self._window()
        n = len(window)
        if n == 0:
            return None
        k = min(max(math.ceil(q * n - 1e-9) - 1, 0), n - 1)
        if n - k <= n // 16:
            return heapq.nlargest(n - k, window)[-1]
        if k < n // 16:
            return heapq.nsmallest(k + 1, window)[-1]
        window.sort()
        return window[k]

    def __len__(self) -> int:
        return min(self._count, self.size)
