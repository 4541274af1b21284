"""One loguru setup for every process: ``LOG_LEVEL``, and ``LOG_JSON=true`` for one JSON object a line."""

from __future__ import annotations

import sys
import time

from loguru import logger

_TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
    "<cyan>{extra[service]}</cyan> | {message}"
)


def setup_logging(service: str, level: str = "INFO", json: bool = False) -> None:
    """Route all logs of this process to stderr, tagged with the service name."""
    logger.remove()
    logger.configure(extra={"service": service})
    if json:
        logger.add(sys.stderr, level=level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(sys.stderr, level=level, format=_TEXT_FORMAT, backtrace=False, diagnose=False)


class LogSampler:
    """Log the first few occurrences of each reason, then at most one per ``interval_s``.

    Bad data must be counted exactly but must not flood the log; callers count separately
    and ask this object whether the current occurrence is worth a line.
    """

    def __init__(self, first: int = 5, interval_s: float = 10.0, clock=time.monotonic) -> None:
        self._first = first
        self._interval = interval_s
        self._clock = clock
        self._seen: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def should_log(self, reason: str) -> bool:
        n = self._seen.get(reason, 0) + 1
        self._seen[reason] = n
        if n <= self._first:
            self._last[reason] = self._clock()
            return True
        now = self._clock()
        if now - self._last.get(reason, 0.0) >= self._interval:
            self._last[reason] = now
            return True
        return False

    def warning(self, reason: str, message: str, *args: object) -> None:
        if self.should_log(reason):
            logger.warning(f"[{reason}] {message}", *args)
