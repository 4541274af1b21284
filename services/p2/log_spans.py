"""Which stream sequences an incident's lines came from, when P2 reads JetStream (``P2_SOURCE=nats``).

A batch from the log carries a :class:`LogOrigin`: its stream and the first and last sequence (and
store time) of the messages it was made of. The forensics consumer numbers every line the flight
recorder sees (``FlightRecorder.seen`` before a batch is the batch's first line) and keeps one span
per batch for as many recent lines as a capture can reach back (pre plus post events, plus a
batch). A capture's first and last line then map to the messages that held them, and
``meta.json`` records ``nats: {stream, first_seq, last_seq, first_time, last_time}``: the range
``mercury-replay --from-nats`` reads again. A message is the unit, so the range may start a few
lines before the capture's first one, never after.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class LogOrigin:
    """Where a batch came from in the log: stream, sequences and store times (ns since the epoch)."""

    stream: str
    first_seq: int
    last_seq: int
    first_ns: int = 0
    last_ns: int = 0


def _iso_ns(ns: int) -> str | None:
    if ns <= 0:
        return None
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LogSpans:
    """Spans ``[first_line, lines, origin]`` of the last ``keep_lines`` lines, newest last."""

    def __init__(self, keep_lines: int) -> None:
        if keep_lines <= 0:
            raise ValueError("keep_lines must be positive")
        self.keep_lines = keep_lines
        self._spans: deque[tuple[int, int, LogOrigin]] = deque()

    def add(self, first_line: int, lines: int, origin: LogOrigin | None) -> None:
        """Record a batch of ``lines`` starting at absolute line ``first_line``; forget what no capture reaches."""
        if origin is not None and lines > 0:
            self._spans.append((first_line, lines, origin))
        horizon = first_line + lines - self.keep_lines
        spans = self._spans
        while spans and spans[0][0] + spans[0][1] <= horizon:
            spans.popleft()

    def _at(self, line: int) -> LogOrigin | None:
        for first, n, origin in reversed(self._spans):
            if first <= line < first + n:
                return origin
            if first + n <= line:
                return None
        return None

    def covering(self, first_line: int, last_line: int) -> dict[str, Any] | None:
        """``meta.json``'s ``nats`` for lines ``first_line..last_line`` (absolute, inclusive), if both are known."""
        first, last = self._at(max(first_line, 0)), self._at(max(last_line, first_line, 0))
        if first is None or last is None or first.stream != last.stream:
            return None
        return {
            "stream": first.stream,
            "first_seq": first.first_seq,
            "last_seq": last.last_seq,
            "first_time": _iso_ns(first.first_ns),
            "last_time": _iso_ns(last.last_ns),
        }
