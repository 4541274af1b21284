"""The one place for how MercuryStream uses NATS JetStream: stream, subjects, payload, batch ids, shards.

- **Stream** ``MERCURY_TRADES`` (``NATS_STREAM``) holds subjects ``trades.<venue>.<product_id>``, file
  storage, limits by age and bytes (oldest discarded first) and a duplicate window in which a resent
  ``Nats-Msg-Id`` is stored once. :func:`ensure_stream` creates it, or validates one that exists.
- **Subject tokens**: a NATS token may not hold ``.``, ``*``, ``>`` or whitespace, and may not be
  empty. Each such character (and any control character) becomes ``_``, an empty token ``_``. The
  subject only routes; the events inside keep their exact ``product_id``. Two ids that differ only
  in such characters share a subject, and so a shard, which is harmless.
- **Payload**: one message is one batch of one product: the same length-prefixed frames as the TCP
  path (``shared.framing``), so P2 decodes both with one decoder.
- **Batch id** (``Nats-Msg-Id``): ``<origin>-<seq>``, an origin random per publishing sink and a
  sequence per batch. It is fixed when the batch is made, so every resend carries the same id; a
  content hash would also merge two batches that are byte-identical on purpose (a replay).
- **Shards**: product ``p`` belongs to shard ``blake2b(p) mod n`` (never Python's ``hash``, which is
  salted per process); shard ``i`` of ``n`` reads through the durable consumer ``mercury-p2-shard-i-of-n``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field

from mercurystream.shared.config import check_url
from mercurystream.shared.framing import encode_frames

DEFAULT_URL = "nats://127.0.0.1:4222"
DEFAULT_STREAM = "MERCURY_TRADES"
SUBJECT_ROOT = "trades"
ALL_SUBJECTS = f"{SUBJECT_ROOT}.>"
MSG_ID_HEADER = "Nats-Msg-Id"
EVENTS_HEADER = "Mercury-Events"
"""How many frames the message carries, so a reader can count without decoding."""

DEFAULT_MAX_AGE_S = 24 * 3600.0
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_DUPLICATE_WINDOW_S = 120.0
BATCH_MAX_BYTES = 512 * 1024
"""A message's payload at most: half the server's default ``max_payload`` (1 MB), room for headers."""

_BAD_TOKEN_CHARS = re.compile(r"[.*>\s\x00-\x1f\x7f]")
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NATS_URL = re.compile(r"(nats|tls)://\S+")


def check_nats_url(value: str) -> str:
    """A ``nats://`` or ``tls://`` URL a client can connect to, else ``ValueError`` with one line.

    The scheme first, then ``shared.config.check_url``'s host and port rule: a port out of range or a
    host no resolver takes used to surface only at the first connect, deep in the client.
    """
    if not _NATS_URL.fullmatch(value):
        raise ValueError("expected nats://host[:port] or tls://host[:port]")
    return check_url(value)


NatsUrl = Annotated[str, AfterValidator(check_nats_url)]


class NatsSettings(BaseModel):
    """The variables both P1 and P2 read to reach the stream (mixed into each service's settings)."""

    NATS_URL: NatsUrl = DEFAULT_URL
    NATS_STREAM: str = Field(DEFAULT_STREAM, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    NATS_MAX_AGE_S: float = Field(DEFAULT_MAX_AGE_S, gt=0)
    NATS_MAX_BYTES: int = Field(DEFAULT_MAX_BYTES, gt=0)
    NATS_DUPLICATE_WINDOW_S: float = Field(DEFAULT_DUPLICATE_WINDOW_S, gt=0)

    def stream_settings(self) -> StreamSettings:
        return StreamSettings(self.NATS_STREAM, self.NATS_MAX_AGE_S, self.NATS_MAX_BYTES, self.NATS_DUPLICATE_WINDOW_S)


def subject_token(value: str) -> str:
    """``value`` as one subject token: ``.``, ``*``, ``>``, whitespace and controls become ``_``."""
    return _BAD_TOKEN_CHARS.sub("_", value) or "_"


def subject_for(venue: str, product_id: str) -> str:
    """``trades.<venue>.<product_id>``, each token made valid by :func:`subject_token`."""
    return f"{SUBJECT_ROOT}.{subject_token(venue)}.{subject_token(product_id)}"


def subject_product(subject: str) -> str:
    """The product token of a ``trades.<venue>.<product>`` subject (the whole tail past the venue)."""
    parts = subject.split(".", 2)
    return parts[2] if len(parts) == 3 else subject


def valid_stream_name(name: str) -> bool:
    """Stream names travel in API subjects: letters, digits, ``_`` and ``-`` only."""
    return bool(_STREAM_NAME.match(name))


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """What :func:`ensure_stream` creates: limits by age and bytes, and the dedupe window."""

    name: str = DEFAULT_STREAM
    max_age_s: float = DEFAULT_MAX_AGE_S
    max_bytes: int = DEFAULT_MAX_BYTES
    duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S
    replicas: int = 1

    def config(self) -> Any:
        """The ``nats.js.api.StreamConfig`` (imported here so the TCP path never loads nats-py)."""
        from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

        return StreamConfig(
            name=self.name,
            subjects=[ALL_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age_s,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window_s,
            num_replicas=self.replicas,
        )


class StreamMismatch(Exception):
    """A stream of that name exists but cannot carry MercuryStream's subjects or dedupe its batches."""


async def ensure_stream(js: Any, cfg: StreamSettings) -> Any:
    """Create the stream, or validate the existing one; returns its ``StreamInfo``.

    An existing stream is the operator's: its limits are kept (a warning names the difference),
    but it must take ``trades.>`` and have a duplicate window, or :class:`StreamMismatch` is raised.
    """
    from loguru import logger
    from nats.js.errors import NotFoundError

    try:
        info = await js.stream_info(cfg.name)
    except NotFoundError:
        try:
            return await js.add_stream(cfg.config())
        except Exception as exc:
            # Another process may have created it in between: validate that one instead.
            if "already in use" not in str(exc):
                raise
            info = await js.stream_info(cfg.name)
    have = info.config
    subjects = list(have.subjects or [])
    if ALL_SUBJECTS not in subjects and ">" not in subjects:
        raise StreamMismatch(f"stream {cfg.name} takes {subjects}, not {ALL_SUBJECTS}")
    if not have.duplicate_window:
        raise StreamMismatch(f"stream {cfg.name} has no duplicate window: resent batches would be stored twice")
    want = (cfg.max_age_s, cfg.max_bytes, cfg.duplicate_window_s)
    got = (have.max_age, have.max_bytes, have.duplicate_window)
    if any(w != g for w, g in zip(want, got, strict=True)):
        logger.warning(
            "stream {} exists with max_age={} s max_bytes={} duplicate_window={} s (configured {}); keeping it",
            cfg.name, got[0], got[1], got[2], want,
        )  # fmt: skip
    return info


def encode_batch(payloads: Iterable[bytes]) -> bytes:
    """A message's payload: the events as the same length-prefixed frames the TCP path sends."""
    return encode_frames(payloads)


def new_origin() -> str:
    """A random origin for one publishing sink (8 bytes, hex)."""
    return os.urandom(8).hex()


def batch_id(origin: str, seq: int) -> str:
    """The ``Nats-Msg-Id`` of a sink's ``seq``-th batch: unique per batch, the same on every resend."""
    return f"{origin}-{seq}"


def shard_of(product_id: str, shards: int) -> int:
    """The shard of a product: stable across processes, machines and Python versions.

    Hashed as its subject token, so P2 can decide from a message's subject without decoding it.
    """
    digest = hashlib.blake2b(subject_token(product_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def parse_shard(value: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n``; ``ValueError`` otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if m is None:
        raise ValueError("expected i/n, like 0/1 or 1/2")
    i, n = int(m.group(1)), int(m.group(2))
    if not 0 <= i < n:
        raise ValueError("expected 0 <= i < n")
    return i, n


def consumer_name(index: int, shards: int) -> str:
    """The durable consumer of shard ``index`` of ``shards``: a restarted shard resumes where it acked."""
    return f"mercury-p2-shard-{index}-of-{shards}"
