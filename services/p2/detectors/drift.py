"""``schema_drift``: a required key missing or of the wrong kind (the rule is ``shared.schema.drift_of``).

P2 finds drift once, when it normalizes a read (``p2.batch``); this detector counts it and paces
the samples written to disk.
"""

from __future__ import annotations

from typing import Any


class DriftDetector:
    """Counts every drifted event; marks at most ``samples_per_min`` per wall-clock minute as ``sampled``.

    The caller writes the sampled ones to the sample file, so an upstream format change cannot fill
    the disk while the count stays exact.
    """

    def __init__(self, samples_per_min: int = 100) -> None:
        self.samples_per_min = samples_per_min
        self.count = 0
        self.sampled = 0
        self.unsampled = 0
        self._minute = -1
        self._in_minute = 0

    def observe(self, detail: dict[str, Any], now_s: float) -> dict[str, Any]:
        """Count one drifted event; its detail with ``sampled`` set."""
        self.count += 1
        minute = int(now_s // 60)
        if minute != self._minute:
            self._minute = minute
            self._in_minute = 0
        sampled = self._in_minute < self.samples_per_min
        if sampled:
            self._in_minute += 1
            self.sampled += 1
        else:
            self.unsampled += 1
        return {**detail, "sampled": sampled}
