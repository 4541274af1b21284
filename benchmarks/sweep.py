"""The rate search for a sustained zero-drop throughput, sans I/O: which rate to try next, and when to stop.

A geometric ramp from ``start`` (up while steps pass, down while they fail) brackets the limit between
the last pass and the first fail; bisection then narrows the bracket until it is within
``precision`` of the pass. The answer is the highest rate that passed. Each step is one run of the
real system, so the search spends as few as it can: a later run starts at the previous run's
answer with a small factor and usually settles in three to five steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RateSweep:
    start: float
    factor: float = 1.5
    precision: float = 0.05
    min_rate: float = 1000.0
    max_rate: float = 2_000_000.0
    max_steps: int = 20
    round_to: float = 1000.0
    steps: list[tuple[float, bool]] = field(default_factory=list)
    best: float | None = None
    """Highest rate that passed."""
    worst: float | None = None
    """Lowest rate that failed."""

    def __post_init__(self) -> None:
        if self.factor <= 1 or self.precision <= 0 or not 0 < self.min_rate <= self.max_rate:
            raise ValueError("need factor > 1, precision > 0 and 0 < min_rate <= max_rate")
        self._next: float | None = self._clamp(self.start)

    def _clamp(self, rate: float) -> float:
        rate = min(self.max_rate, max(self.min_rate, rate))
        return max(self.min_rate, round(rate / self.round_to) * self.round_to)

    @property
    def next_rate(self) -> float | None:
        """The rate to try next, or ``None`` when the search is over."""
        return self._next

    @property
    def capped(self) -> bool:
        """The best rate is ``max_rate``: the limit may be higher than the search looked."""
        return self.best is not None and self.best >= self.max_rate

    def record(self, rate: float, passed: bool) -> None:
        self.steps.append((rate, passed))
        if passed:
            self.best = rate if self.best is None else max(self.best, rate)
        else:
            self.worst = rate if self.worst is None else min(self.worst, rate)
        self._next = self._choose()

    def _choose(self) -> float | None:
        if len(self.steps) >= self.max_steps:
            return None
        best, worst = self.best, self.worst
        if best is None:
            assert worst is not None
            nxt = self._clamp(worst / self.factor)
            return None if nxt >= worst else nxt
        if worst is None:
            nxt = self._clamp(best * self.factor)
            return None if nxt <= best else nxt
        if worst <= best or (worst - best) <= self.precision * best:
            return None
        nxt = self._clamp((best + worst) / 2)
        return None if nxt <= best or nxt >= worst else nxt
