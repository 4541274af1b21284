"""The sender's arithmetic, sans I/O: how many events are due now, and what P2 has acknowledged."""

from __future__ import annotations

from mercurystream.shared.transport import AckDecoder, AckError


class RatePacer:
    """Events due by a given time at ``rate`` per second, counted from :meth:`start`.

    The schedule is absolute (event ``i`` is due at ``start + i / rate``), so sleeping late or
    being held back by a slow receiver never lowers the rate over the whole run: what is overdue
    goes out in the next batches. The sender wakes every ``tick_s`` at most and sends all that is
    due, so a high rate costs one sleep per batch, not one per event. ``rate == 0`` means no limit.
    """

    def __init__(self, rate: float, max_batch: int, tick_s: float = 0.005) -> None:
        if rate < 0 or max_batch <= 0 or tick_s <= 0:
            raise ValueError("rate must be >= 0, max_batch and tick_s > 0")
        self.rate = rate
        self.max_batch = max_batch
        self.tick_s = tick_s
        self._t0 = 0.0

    def start(self, now: float) -> None:
        self._t0 = now

    def due(self, now: float, sent: int) -> int:
        """How many to send now (at most ``max_batch``); 0 means wait :meth:`delay` first."""
        if self.rate <= 0:
            return self.max_batch
        n = int((now - self._t0) * self.rate) + 1 - sent
        return max(0, min(n, self.max_batch))

    def delay(self, now: float, sent: int) -> float:
        """Seconds to sleep before the next event is due, never less than one tick."""
        if self.rate <= 0:
            return 0.0
        return max(self.tick_s, self._t0 + sent / self.rate - now)


class AckTracker:
    """P2's acknowledgements from the bytes it sends back: ``{"ack": N}`` and ``{"ack": N, "final": true}``.

    ``acked`` is the highest N seen (acks are cumulative); ``final`` means P2 is closing and will
    read nothing more. Frames that are not acks are counted in ``other`` and ignored; a frame too
    large to be an ack means the peer does not speak this protocol, so parsing stops (``broken``).
    """

    def __init__(self) -> None:
        self._decoder = AckDecoder()
        self.acked = 0
        self.final = False
        self.other = 0
        self.broken = False

    def feed(self, data: bytes) -> None:
        for msg in self._decoder.feed(data):
            if isinstance(msg, AckError):
                if msg.fatal:
                    self.broken = True
                else:
                    self.other += 1
                continue
            if msg.count > self.acked:
                self.acked = msg.count
            if msg.final:
                self.final = True
