"""The P1→P2 wire protocol: ``[4-byte big-endian length][JSON object]``, sans I/O.

The encoder and the incremental decoder hold no sockets: feed the decoder any chunking of the
byte stream and it returns whole payloads. ``max_frame_bytes`` is a security limit: a header
announcing more is rejected before anything of that size is allocated.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import orjson

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME_BYTES = 1 << 20


class FrameTooLarge(Exception):
    """A frame header announced more than the decoder's limit; the stream cannot be resynchronized.

    ``payloads`` are the whole frames that preceded the bad header in the same ``feed``: they were
    received intact and are counted in ``FrameDecoder.frames``, so the caller must still handle them.
    """

    def __init__(self, length: int, limit: int, payloads: list[bytes] | None = None) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit
        self.payloads = payloads if payloads is not None else []


def encode_frame(payload: bytes) -> bytes:
    """One frame around an already-serialized payload."""
    return HEADER.pack(len(payload)) + payload


def encode_frames(payloads: Iterable[bytes]) -> bytes:
    """Many frames as one buffer, so a batch costs one write."""
    parts: list[bytes] = []
    pack = HEADER.pack
    for p in payloads:
        parts.append(pack(len(p)))
        parts.append(p)
    return b"".join(parts)


def encode_event(event: dict[str, Any]) -> bytes:
    """Serialize a JSON object and frame it."""
    return encode_frame(orjson.dumps(event))


class FrameDecoder:
    """Incremental decoder: ``feed(bytes) -> list[payload bytes]``.

    After :class:`FrameTooLarge` the decoder is closed: the rest of the stream has no trustworthy
    frame boundary, so the connection must be dropped.
    """

    __slots__ = ("_buf", "_closed", "_need", "_parts", "_parts_len", "frames", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes <= 0:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self._buf = b""
        # A frame larger than one read is collected as parts and joined once, never re-copied per chunk.
        self._parts: list[bytes] = []
        self._parts_len = 0
        self._need = 0
        self._closed = False
        self.frames = 0

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a whole frame."""
        return len(self._buf) + self._parts_len

    def drop_partial(self) -> int:
        """Forget the bytes of a partial frame (the connection is being closed); how many there were."""
        n = self.buffered
        self._buf = b""
        self._parts = []
        self._parts_len = 0
        return n

    def feed(self, data: bytes) -> list[bytes]:
        if self._closed:
            raise FrameTooLarge(-1, self.max_frame_bytes)
        if self._parts:
            self._parts.append(data)
            self._parts_len += len(data)
            if self._parts_len < self._need:
                return []
            buf = b"".join(self._parts)
            self._parts = []
            self._parts_len = 0
        elif self._buf:
            buf = self._buf + data
        else:
            buf = data
        out: list[bytes] = []
        append = out.append
        unpack = HEADER.unpack_from
        limit = self.max_frame_bytes
        pos = 0
        end = len(buf)
        # The loop ends where fewer than HEADER_SIZE bytes are left (unpack raises) or a frame is cut.
        try:
            while True:
                (length,) = unpack(buf, pos)
                if length > limit:
                    self._closed = True
                    self._buf = b""
                    self.frames += len(out)
                    raise FrameTooLarge(length, limit, out)
                start = pos + HEADER_SIZE
                stop = start + length
                if stop > end:
                    break
                append(buf[start:stop])
                pos = stop
        except struct.error:
            pass
        rest = buf[pos:] if pos else buf
        if len(rest) >= HEADER_SIZE:
            self._need = HEADER_SIZE + HEADER.unpack_from(rest)[0]
            self._parts = [rest]
            self._parts_len = len(rest)
            self._buf = b""
        else:
            self._buf = rest
        self.frames += len(out)
        return out


def decode_object(payload: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """Parse one payload as a JSON object: ``(obj, None)`` or ``(None, reason)``.

    Reasons are the ``reason`` label values of ``mercurystream_frame_errors_total``.
    """
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None, "invalid_json"
    if type(obj) is not dict:
        return None, "not_object"
    return obj, None
