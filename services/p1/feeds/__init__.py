"""Venue adapters: one sans-I/O protocol per feed API behind one small interface.

A :class:`FeedAdapter` turns the raw messages one socket read completed into the trade messages
P1's pipeline normalizes, and counts everything else under a bounded ``type`` label. It also
writes the subscribe requests. It holds no socket: the shared shell (``p1.feed.CoinbaseFeed``)
owns connecting, reconnect, backoff, liveness and the accounting, identical for every adapter,
so a later venue is one more module here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mercurystream.p1.gaps import GapTracker

MALFORMED = "malformed"
OTHER = "other"
OVERSIZE = "oversize"


class FeedAdapter(Protocol):
    """What the shell needs from a venue protocol."""

    symbols: list[str]
    subscribed: bool
    """The venue confirmed a subscribe on this connection."""
    subscribed_products: frozenset[str]
    invalid: dict[str, str]
    """Configured products the venue rejected, with its reason."""
    outbox: list[str]
    """Requests to send on the current connection (resubscribes)."""
    fatal: str | None
    """Set when the feed cannot go on (no valid product): the shell gives up with it."""
    counts: dict[str, int]
    messages: int
    trades: int
    gaps: GapTracker | None
    """Where the adapter reports trade ids and heartbeats for gap notices (p1/gaps.py), if it can."""

    def subscribe_requests(self) -> list[str]:
        """The text messages to send right after the handshake."""
        ...

    def on_connect(self) -> None:
        """A new connection starts: forget what the last one confirmed."""
        ...

    def handle(self, raws: Sequence[bytes | bytearray | str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """The batch's trade messages for the pipeline, and its per-type counts."""
        ...

    def count_unreadable(self, reason: str) -> dict[str, int]:
        """Count one message that never reached :meth:`handle`."""
        ...


FEED_APIS = ("exchange", "advanced-trade")
DEFAULT_URLS = {
    "exchange": "wss://ws-feed.exchange.coinbase.com",
    "advanced-trade": "wss://advanced-trade-ws.coinbase.com",
}


def make_adapter(api: str, symbols: Iterable[str], channel: str = "matches", **options: Any) -> FeedAdapter:
    """The adapter for ``api`` (one of :data:`FEED_APIS`)."""
    if api == "exchange":
        from mercurystream.p1.feeds.coinbase_exchange import FeedProtocol

        return FeedProtocol(symbols, channel)
    if api == "advanced-trade":
        from mercurystream.p1.feeds.coinbase_advanced import AdvancedTradeProtocol

        return AdvancedTradeProtocol(symbols, **options)
    raise ValueError(f"unknown feed API {api!r}; expected one of {', '.join(FEED_APIS)}")
