"""Venue adapters: one sans-I/O protocol per feed API behind one small interface.

A :class:`FeedAdapter` turns the raw messages one socket read completed into the trade messages
P1's pipeline normalizes, and counts everything else under a bounded ``type`` label. It also
writes the subscribe requests. It holds no socket: the shared shell (``p1.feed.CoinbaseFeed``)
owns connecting, reconnect, backoff, liveness and the accounting, identical for every adapter,
so a later venue is one more module here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from loguru import logger

from mercurystream.shared.clip import clip, join_clipped, preview
from mercurystream.shared.logger import LogSampler

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


class FeedState:
    """The bookkeeping every adapter shares: subscribe state, rejected products, bounded type labels, totals.

    An adapter subclasses it and adds its venue's parsing in ``handle``; ``always_labelled`` names
    the types (or channels) it counts under their own label without spending the budget of
    ``max_type_labels`` names a venue's unknown types may take before they fold into ``other``.
    """

    always_labelled: ClassVar[frozenset[str]] = frozenset({MALFORMED, OTHER, OVERSIZE})

    def __init__(self, symbols: Iterable[str], max_type_labels: int = 32) -> None:
        self.symbols = list(symbols)
        self.max_type_labels = max_type_labels
        self.subscribed = False
        self.subscribed_products: frozenset[str] = frozenset()
        """Products the venue confirmed in its latest subscriptions reply."""
        self.invalid: dict[str, str] = {}
        """Configured products the venue rejected, with its reason; never subscribed again."""
        self.outbox: list[str] = []
        self.fatal: str | None = None
        self.counts: dict[str, int] = {}
        self.messages = 0
        self.trades = 0
        self.gaps: GapTracker | None = None
        self._labels: set[str] = set(self.always_labelled)
        self._sampler = LogSampler()

    @property
    def valid_symbols(self) -> list[str]:
        invalid = self.invalid
        return [s for s in self.symbols if s not in invalid]

    def on_connect(self) -> None:
        self.subscribed = False
        self.subscribed_products = frozenset()
        self.outbox.clear()

    def count_unreadable(self, reason: str) -> dict[str, int]:
        """Count one message that never reached ``handle`` (over the size limit); returns the count."""
        self.messages += 1
        self.counts[reason] = self.counts.get(reason, 0) + 1
        return {reason: 1}

    def _label(self, name: str, kind: str) -> str:
        """``name`` as a metric label: its own while fewer than ``max_type_labels`` unknown ones were seen."""
        name = clip(name)
        if name in self._labels:
            return name
        if len(self._labels) - len(self.always_labelled) < self.max_type_labels:
            self._labels.add(name)
            logger.info("feed: ignoring messages of unknown {} {}", kind, preview(name))
            return name
        return OTHER

    def _tally(self, raws: int, trades: int, counts: dict[str, int]) -> None:
        self.messages += raws
        self.trades += trades
        totals = self.counts
        for t, n in counts.items():
            totals[t] = totals.get(t, 0) + n

    def _give_up_if_none_left(self) -> list[str]:
        """The products still valid; with none, :attr:`fatal` names every rejection."""
        left = self.valid_symbols
        if not left:
            self.fatal = "no valid product to subscribe: " + join_clipped(self.invalid.values(), "; ")
        return left


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
