"""Coinbase Exchange's WebSocket feed (``wss://ws-feed.exchange.coinbase.com``): what each message means.

:class:`FeedProtocol` is sans-I/O: raw messages in, trade messages to forward and per-type counts
out, plus the subscribe requests to send. The shared shell (``p1.feed``) owns the socket.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from loguru import logger

from mercurystream.p1.feeds import MALFORMED, OTHER, OVERSIZE, FeedState
from mercurystream.p1.gaps import GapTracker
from mercurystream.shared.clip import STATUS_MAX, clip, join_clipped, preview
from mercurystream.shared.models import CONTROL_TYPES, TRADE_TYPES

SUBSCRIBE_TICKER = "subscribe_ticker"
"""The ticker Coinbase sends per product right after a ticker subscribe, repeating its latest trade."""
_ALWAYS_LABELLED = frozenset(TRADE_TYPES | CONTROL_TYPES) | {"last_match", SUBSCRIBE_TICKER, MALFORMED, OTHER, OVERSIZE}
_INVALID_PRODUCT = " is not a valid product"
"""The end of Coinbase's reason when a subscribe names an unknown product, e.g. ``"XYZ-USD is not a valid product"``
(its ``error`` message says ``"Failed to subscribe"``; the whole subscribe is then ignored). Whatever precedes
it is the echoed product, spaces and all: a pattern for the product's shape missed ``"BTC USD"``."""


class FeedProtocol(FeedState):
    """Classify a batch of raw feed messages: trades to forward, everything else counted.

    ``last_match`` and the first ``ticker`` of each product after a ticker subscribe
    (``subscribe_ticker``) are counted and not forwarded: both repeat the latest trade, so after a
    reconnect they would be false duplicates downstream. Unknown types are counted under
    their own name, up to ``max_type_labels`` names, then under ``other``, because the ``type``
    label of a metric must not grow without bound on a venue's whim.

    Coinbase rejects a whole subscribe that names one unknown product. Such an ``error`` marks the
    product invalid and queues a subscribe for the valid rest in :attr:`outbox`; with none left,
    :attr:`fatal` says why. ``subscribed`` turns true only on the venue's ``subscriptions``.
    """

    always_labelled = _ALWAYS_LABELLED

    def __init__(self, symbols: Iterable[str], channel: str, max_type_labels: int = 32) -> None:
        super().__init__(symbols, max_type_labels)
        self.channel = channel
        self._awaiting_ticker: set[str] = set()
        self.gaps: GapTracker | None = None
        """Set by the app on the ``matches`` channel: sees the trades, heartbeats and ``last_match`` (p1/gaps.py)."""

    def subscribe_request(self) -> str:
        """The subscribe message, sent as text right after the handshake (Coinbase waits 5 s for it)."""
        products = self.valid_symbols
        self._awaiting_ticker = set(products) if self.channel == "ticker" else set()
        return orjson.dumps(
            {"type": "subscribe", "product_ids": products, "channels": [self.channel, "heartbeat"]}
        ).decode()

    def subscribe_requests(self) -> list[str]:
        return [self.subscribe_request()]

    def handle(self, raws: Sequence[bytes | bytearray | str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Return the batch's trade messages (parsed, as received) and its per-type counts."""
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        trade_types = TRADE_TYPES
        trades: list[dict[str, Any]] = []
        append = trades.append
        counts: dict[str, int] = {}
        others: list[dict[str, Any]] | None = None
        awaiting = self._awaiting_ticker
        for raw in raws:
            try:
                msg = loads(raw)
            except decode_error:
                counts[MALFORMED] = counts.get(MALFORMED, 0) + 1
                self._sampler.warning("invalid_json", "feed message is not JSON: {!r}", raw[:200])
                continue
            t = msg.get("type") if type(msg) is dict else None
            if type(t) is not str:
                counts[MALFORMED] = counts.get(MALFORMED, 0) + 1
                self._sampler.warning("no_type", "feed message is not an object with a string type: {!r}", raw[:200])
            elif t in trade_types:
                if awaiting and t == "ticker" and type(pid := msg.get("product_id")) is str and pid in awaiting:
                    awaiting.discard(pid)
                    t = SUBSCRIBE_TICKER
                else:
                    append(msg)
                counts[t] = counts.get(t, 0) + 1
            else:
                if others is None:
                    others = []
                others.append(msg)
        if self.gaps is not None and trades:
            self.gaps.on_trades(trades)
        if others:
            self._handle_others(others, counts)
        self._tally(len(raws), len(trades), counts)
        return trades, counts

    def _handle_others(self, msgs: list[dict[str, Any]], counts: dict[str, int]) -> None:
        for msg in msgs:
            t = msg["type"]
            if t == "heartbeat" or t == "last_match":
                if self.gaps is not None:
                    self.gaps.on_control(msg)
            elif t == "subscriptions":
                self._on_subscriptions(msg)
            elif t == "error":
                self._on_error(msg)
            else:
                t = self._label(t, "type")
            counts[t] = counts.get(t, 0) + 1

    def _on_subscriptions(self, msg: dict[str, Any]) -> None:
        products: set[str] = set()
        channels = msg.get("channels")
        for entry in channels if type(channels) is list else ():
            if type(entry) is dict and entry.get("name") == self.channel and type(entry.get("product_ids")) is list:
                products.update(p for p in entry["product_ids"] if type(p) is str)
        self.subscribed = True
        self.subscribed_products = frozenset(products & set(self.symbols))
        logger.info("feed: subscribed: {}", clip(orjson.dumps(channels).decode(), STATUS_MAX))

    def _rejected_product(self, reason: object) -> str | None:
        """The configured product an unknown-product ``reason`` names, compared as echoed, then trimmed and
        upper-cased (as ``SYMBOLS`` is read); ``None`` for any other reason or a product not configured."""
        if type(reason) is not str or not reason.endswith(_INVALID_PRODUCT):
            return None
        echoed = reason[: -len(_INVALID_PRODUCT)]
        symbols = self.symbols
        if echoed in symbols:
            return echoed
        echoed = echoed.strip().upper()
        return echoed if echoed in symbols else None

    def _on_error(self, msg: dict[str, Any]) -> None:
        reason = msg.get("reason")
        product = self._rejected_product(reason)
        if product is None or product in self.invalid:
            self._sampler.warning(
                "venue_error", "feed: venue error: {} ({})", preview(msg.get("message")), preview(reason)
            )
            return
        self.invalid[product] = reason
        left = self._give_up_if_none_left()
        logger.error(
            "feed: the venue rejected the subscribe: {}; resubscribing without it ({} left)",
            preview(reason),
            join_clipped(left, ",") or "none",
        )
        if left:
            self.outbox.append(self.subscribe_request())
