"""Whether P2 has CPU to spare for drawing an incident chart.

An incident usually fires when P2 is near its limit: a latency spike means it is already falling
behind. Drawing the chart then (about a CPU-second of matplotlib in a subprocess) took the cores P2
needed to catch up, and cost the flight recorder up to 20 % of P2's sustained throughput. So the
bundle's evidence (events, meta, report) is written at once, and the picture waits for this gate.

The signal is P2's own CPU share, all threads, over the last interval: it measures spare capacity
directly, whatever the event mix. A consumer that is behind without using CPU (the demo's slow
consumer sleeps) is no reason to hold a chart back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

MAX_SHARE = 0.5
"""P2 busier than half a core is too busy to share the machine with a chart renderer."""

INTERVAL_S = 1.0


class SpareCpu:
    """``spare()`` is true when P2 used at most ``max_share`` of one core over the last complete
    interval of at least ``interval_s``, and the owner's ``busy`` hook (if any) says no.

    Plain state over injected clocks: the owner polls :meth:`spare`; the first call only takes a
    sample, so a chart is never drawn on a guess. ``busy`` lets P2 add a load signal of its own.
    """

    def __init__(
        self,
        max_share: float = MAX_SHARE,
        interval_s: float = INTERVAL_S,
        *,
        busy: Callable[[], bool] | None = None,
        cpu_clock: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_share <= 0 or interval_s <= 0:
            raise ValueError("max_share and interval_s must be > 0")
        self.max_share = max_share
        self.interval_s = interval_s
        self._busy = busy
        self._cpu = cpu_clock
        self._clock = clock
        self._mark: tuple[float, float] | None = None
        self.share: float | None = None
        """CPU share (cores) over the last complete interval; ``None`` before the first one."""

    def spare(self) -> bool:
        now, cpu = self._clock(), self._cpu()
        mark = self._mark
        if mark is None:
            self._mark = (now, cpu)
            return False
        elapsed = now - mark[0]
        if elapsed >= self.interval_s:
            self._mark = (now, cpu)
            # A long silence between polls says nothing about the last interval: measure afresh.
            if elapsed > 3 * self.interval_s:
                self.share = None
                return False
            self.share = (cpu - mark[1]) / elapsed
        if self.share is None or self.share > self.max_share:
            return False
        return not (self._busy is not None and self._busy())
