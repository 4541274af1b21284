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

The ack codec lives here, sans I/O, so P2's encoder and every reader of acks (P1's sink, the
replay tool, the benchmark's load generator) agree on one format and one size limit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from mercurystream.shared.framing import FrameDecoder, FrameTooLarge, encode_frame

ACK_MAX_BYTES = 4096
"""The largest ack payload accepted. An ack is a few dozen bytes; a bigger frame is not P2's."""


class AckError(ValueError):
    """A frame that is not a well-formed ack: not JSON, not an object, a bad field, or oversize.

    ``fatal`` means the byte stream itself is broken (a frame header beyond :data:`ACK_MAX_BYTES`),
    so no later frame can be trusted; otherwise only this frame is skipped. ``payload`` is the
    start of the offending bytes, for a log sample.
    """

    def __init__(self, reason: str, payload: bytes = b"", fatal: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.payload = payload[:200]
        self.fatal = fatal


@dataclass(frozen=True, slots=True)
class Ack:
    """``count``: P2 has parsed and published the first ``count`` frames; ``final``: it is closing."""

    count: int
    final: bool = False


def encode_ack(count: int, final: bool = False) -> bytes:
    """``{"ack": N}`` or ``{"ack": N, "final": true}`` as a frame."""
    if type(count) is not int or count < 0:
        raise ValueError(f"an ack count is a non-negative int, not {count!r}")
    if final:
        return encode_frame(b'{"ack":%d,"final":true}' % count)
    return encode_frame(b'{"ack":%d}' % count)


def decode_ack(payload: bytes, max_bytes: int = ACK_MAX_BYTES) -> Ack:
    """One ack payload (unframed); raises :class:`AckError` for anything else. Unknown keys are ignored."""
    if len(payload) > max_bytes:
        raise AckError(f"ack of {len(payload)} bytes exceeds the limit of {max_bytes}", payload)
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise AckError("not JSON", payload) from None
    if type(obj) is not dict:
        raise AckError("not a JSON object", payload)
    count = obj.get("ack")
    if type(count) is not int or count < 0:
        raise AckError("ack is not a non-negative int", payload)
    final = obj.get("final", False)
    if type(final) is not bool:
        raise AckError("final is not a bool", payload)
    return Ack(count, final)


class AckDecoder:
    """Incremental ack reader: ``feed(bytes) -> list[Ack | AckError]``, in stream order, any chunking.

    A malformed frame comes back in place as an :class:`AckError` and the stream goes on. A frame
    header beyond ``max_bytes`` comes back as a ``fatal`` error after the acks before it; the
    decoder is then closed and returns nothing more, since the stream has no trustworthy boundary.
    """

    __slots__ = ("_frames", "closed", "max_bytes")

    def __init__(self, max_bytes: int = ACK_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._frames = FrameDecoder(max_bytes)
        self.closed = False

    def feed(self, data: bytes) -> list[Ack | AckError]:
        if self.closed:
            return []
        fatal: AckError | None = None
        try:
            payloads = self._frames.feed(data)
        except FrameTooLarge as exc:
            payloads = exc.payloads
            fatal = AckError(f"ack frame too large: {exc}", data, fatal=True)
            self.closed = True
        out: list[Ack | AckError] = []
        for payload in payloads:
            try:
                out.append(decode_ack(payload, self.max_bytes))
            except AckError as exc:
                out.append(exc)
        if fatal is not None:
            out.append(fatal)
        return out


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
