"""Capped exponential backoff with full jitter: P1's WebSocket and sink clients, and P2's NATS source."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delay before the next attempt: uniform in ``[0, min(cap, base * 2**attempt))``.

    Full jitter spreads many clients that lost the same server so its restart is not met by a
    synchronized stampede; the cap bounds how stale a feed gets while a venue is unreachable.
    """

    __slots__ = ("_rng", "attempt", "base_s", "cap_s")

    def __init__(self, cap_s: float, base_s: float = 0.5, rng: Callable[[], float] = random.random) -> None:
        if cap_s <= 0 or base_s <= 0:
            raise ValueError("backoff cap and base must be positive")
        self.cap_s = cap_s
        self.base_s = min(base_s, cap_s)
        self._rng = rng
        self.attempt = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        # Past 2**32 the cap has long won; bounding the exponent keeps the float finite.
        return min(self.cap_s, self.base_s * (1 << min(self.attempt, 32)))

    def next_delay(self) -> float:
        delay = self._rng() * self.ceiling()
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Call after a healthy connection, so a later drop is retried quickly."""
        self.attempt = 0
