"""The P1→P2 transport seam.

P1 hands batches of serialized events to an :class:`EventSink`; P2 receives them from an
:class:`EventSource` that publishes to its bus. TCP with length-prefixed frames is the one
implementation today; a distributed broker can be a second one without touching either side's
pipeline code.

Acknowledgements travel back on the same TCP connection, framed the same way:
``{"ack": N}`` says P2 has parsed and published the first N frames of this connection, and
``{"ack": N, "final": true}`` is P2's last word before a graceful close. A sender can therefore
resend exactly the frames a restarting P2 never read, and count as lost only what a crash may
have swallowed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence


class EventSink(ABC):
    """Where P1 puts serialized events (JSON object bytes, unframed)."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    def publish(self, payloads: Sequence[bytes]) -> None:
        """Hand over events without waiting; the sink buffers, bounds and counts what it cannot keep."""

    @abstractmethod
    async def stop(self, timeout_s: float) -> None:
        """Flush what is held for at most ``timeout_s``, then close."""


class EventSource(ABC):
    """Where P2 gets events from; it publishes them to the bus itself."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None:
        """Stop accepting, finish what was read, acknowledge it, close."""
