"""One client's side of the feed protocol, sans I/O: subscribe/unsubscribe requests in, replies out.

Mirrors Coinbase Exchange's websocket feed: a request names channels either as strings (using the
request's top-level ``product_ids``) or as ``{"name": ..., "product_ids": [...]}`` objects; a valid
request is answered with a ``subscriptions`` message listing everything the client now receives;
an invalid one with ``{"type": "error", "message": ..., "reason": ...}`` and no change at all
(Coinbase ignores the whole request when any part of it is bad) while the connection stays open.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from mercurystream.exchange.market import CHANNELS, ERROR, MATCH, N_CHANNELS, SUBSCRIPTIONS, TICKER

_MAX_ECHO = 64
"""Longest client-supplied name quoted back in an error reason."""


@dataclass(frozen=True, slots=True)
class Reply:
    """What to send back for one request."""

    kind: int
    """``SUBSCRIPTIONS`` or ``ERROR``."""
    text: bytes
    new_matches: tuple[int, ...] = ()
    """Products that just joined ``matches``: each gets a ``last_match`` after the reply."""
    new_tickers: tuple[int, ...] = ()
    """Products that just joined ``ticker``: each gets a ``ticker`` repeating its latest trade."""
    error: str | None = None
    """Short reason key for counting (``malformed_json``, ``unknown_channel``, ...)."""


class _Bad(Exception):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason


def _echo(value: object) -> str:
    s = value if isinstance(value, str) else repr(value)
    return s if len(s) <= _MAX_ECHO else s[:_MAX_ECHO] + "..."


def error_message(message: str, reason: str) -> bytes:
    return orjson.dumps({"type": "error", "message": message, "reason": reason})


class Session:
    """Subscriptions of one connection, as a routing mask over ``product_index * N_CHANNELS + channel``."""

    __slots__ = ("_index", "mask", "products", "subscribed")

    def __init__(self, product_ids: Sequence[str]) -> None:
        self.products = tuple(product_ids)
        self._index = {p: i for i, p in enumerate(self.products)}
        self.mask = bytearray(len(self.products) * N_CHANNELS)
        self.subscribed = False
        """True once a subscribe has succeeded: the server's subscribe deadline no longer applies."""

    @property
    def active(self) -> bool:
        """Receives anything from the market stream."""
        return any(self.mask)

    @property
    def wants_ticker(self) -> bool:
        return any(self.mask[TICKER::N_CHANNELS])

    @property
    def everything(self) -> bool:
        """Subscribed to every key: the server can skip filtering."""
        return all(self.mask)

    def handle(self, raw: str | bytes) -> Reply:
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Reply(ERROR, error_message("Malformed JSON", _echo(str(exc))), error="malformed_json")
        if not isinstance(request, dict):
            return Reply(ERROR, error_message("Malformed JSON", "expected a JSON object"), error="malformed_json")
        kind = request.get("type")
        if kind not in ("subscribe", "unsubscribe"):
            reason = 'type has to be either "subscribe" or "unsubscribe"'
            return Reply(ERROR, error_message("Failed to subscribe", reason), error="bad_type")
        subscribe = kind == "subscribe"
        try:
            wanted = self._parse(request, subscribe)
        except _Bad as bad:
            verb = "Failed to subscribe" if subscribe else "Failed to unsubscribe"
            return Reply(ERROR, error_message(verb, bad.reason), error=bad.key)
        mask = self.mask
        new: dict[int, list[int]] = {MATCH: [], TICKER: []}
        for channel, products in wanted:
            for p in products:
                key = p * N_CHANNELS + channel
                if subscribe and channel in new and not mask[key]:
                    new[channel].append(p)
                mask[key] = 1 if subscribe else 0
        if subscribe:
            self.subscribed = True
        return Reply(
            SUBSCRIPTIONS,
            self.subscriptions(),
            tuple(dict.fromkeys(new[MATCH])),
            tuple(dict.fromkeys(new[TICKER])),
        )

    def _parse(self, request: dict, subscribe: bool) -> list[tuple[int, list[int]]]:
        """Validate the whole request before anything changes: ``[(channel, [product index])]``."""
        top = request.get("product_ids", [])
        top_products = self._products(top) if top is not None else []
        channels = request.get("channels")
        if channels is None and isinstance(request.get("channel"), str):
            channels = [request["channel"]]
        if not channels:
            raise _Bad("no_channels", "No channels provided")
        if not isinstance(channels, list):
            raise _Bad("bad_channels", "channels must be a list")
        out: list[tuple[int, list[int]]] = []
        for entry in channels:
            if isinstance(entry, str):
                name, products = entry, top_products
            elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
                name = entry["name"]
                own = entry.get("product_ids")
                products = self._products(own) if own is not None else top_products
            else:
                raise _Bad("bad_channels", "a channel is a name or an object with a name and product_ids")
            if name not in CHANNELS:
                raise _Bad("unknown_channel", f"{_echo(name)} is not a valid channel")
            channel = CHANNELS.index(name)
            if not products:
                if subscribe:
                    raise _Bad("no_products", f"You need to specify at least one product ID for channel {name}")
                products = list(range(len(self.products)))
            out.append((channel, products))
        return out

    def _products(self, ids: object) -> list[int]:
        if not isinstance(ids, list):
            raise _Bad("bad_products", "product_ids must be a list of product ids")
        index = self._index
        out = []
        for pid in ids:
            i = index.get(pid) if isinstance(pid, str) else None
            if i is None:
                raise _Bad("unknown_product", f"{_echo(pid)} is not a valid product")
            out.append(i)
        return out

    def subscriptions(self) -> bytes:
        """The ``subscriptions`` message: every channel with at least one product, in a fixed order."""
        channels = []
        for c, name in enumerate(CHANNELS):
            products = [p for i, p in enumerate(self.products) if self.mask[i * N_CHANNELS + c]]
            if products:
                channels.append({"name": name, "product_ids": products})
        return orjson.dumps({"type": "subscriptions", "channels": channels})
