"""Wall-clock stamps. Both services stamp with these so P1→P2 latency has microsecond resolution."""

from __future__ import annotations

import time


def now_us() -> int:
    """Microseconds since the Unix epoch."""
    return time.time_ns() // 1000


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000
