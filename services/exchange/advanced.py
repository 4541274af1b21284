"""Coinbase Advanced Trade's market-data protocol over the same market, sans I/O (``--api advanced-trade``).

The market (:mod:`.market`) makes Exchange ``match`` messages; this module speaks Advanced Trade
with them. One :class:`AdvancedSession` per connection:

- requests are ``{"type": "subscribe"|"unsubscribe", "channel": ..., "product_ids": [...], "jwt": ...}``,
  one channel each; ``market_trades`` needs products, ``heartbeats`` takes none. A request naming
  an unknown product or channel, or not JSON, is answered ``{"type": "error", "message": "failure
  to subscribe"}`` (Coinbase's error shape: no envelope, no product named) and changes nothing.
  A ``jwt`` is accepted unchecked: the simulator has no accounts;
- every other message carries the envelope ``channel``, ``client_id`` (``""``), ``timestamp``
  and ``sequence_num``, one counter per connection across channels, starting at 0;
- on a ``market_trades`` subscribe, a ``snapshot`` event with the new products' recent trades,
  newest first, then the ``subscriptions`` message (the order a recorded session shows);
- trades are batched: each :meth:`AdvancedSession.market_trades` call makes one ``update`` of
  everything routed to the client since the last (the server calls it every 250 ms), one trade
  per fill, in trade order;
- ``heartbeats`` once a second with ``current_time`` in the Go-formatted shape the live venue
  sends and a ``heartbeat_counter`` of seconds since the server started.

A trade is ``{"product_id", "trade_id" (a string), "price", "size", "time", "side"}``, keys in
the recorded order, ``side`` the taker's in upper case; price and size keep the market's
trimmed-to-the-tick strings.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from mercurystream.exchange.market import ERROR, MATCH, N_CHANNELS, SUBSCRIPTIONS, Msg

MARKET_TRADES, HEARTBEATS = "market_trades", "heartbeats"
ADV_CHANNELS = (MARKET_TRADES, HEARTBEATS)
SNAPSHOT_TRADES = 50
"""Trades per product in the snapshot sent on subscribe."""
BATCH_S = 0.25
"""Coinbase: market_trades updates are collected over 250 ms and sent together."""
FAILURE = orjson.dumps({"type": "error", "message": "failure to subscribe"})
_TAKER_UPPER = {"buy": "SELL", "sell": "BUY"}
"""A ``match`` carries the maker's side; Advanced Trade the taker's, upper case."""


def trade_object(match_text: bytes) -> bytes | None:
    """One Exchange ``match`` as an Advanced Trade trade object (JSON); ``None`` if it is not JSON.

    A malformed fault survives the translation as what it would be here: a missing price stays
    missing, a bad price or an epoch-number time is carried over.
    """
    try:
        m = orjson.loads(match_text)
    except orjson.JSONDecodeError:
        return None
    trade: dict[str, object] = {"product_id": m.get("product_id"), "trade_id": str(m.get("trade_id"))}
    for key in ("price", "size", "time"):
        if key in m:
            trade[key] = m[key]
    side = m.get("side")
    trade["side"] = _TAKER_UPPER.get(side, side) if isinstance(side, str) else side
    return orjson.dumps(trade)


@dataclass(frozen=True, slots=True)
class AdvancedReply:
    """What to send back for one request, in order, and what it changed."""

    kind: int
    """``SUBSCRIPTIONS`` or ``ERROR``."""
    new_products: tuple[int, ...] = ()
    """Products that just joined ``market_trades``: they get a snapshot before the reply."""
    error: str | None = None


class _Bad(Exception):
    pass


class AdvancedSession:
    """Subscriptions and the envelope sequence of one Advanced Trade connection.

    ``mask`` routes market messages like the Exchange :class:`~.protocol.Session`'s (only the
    ``matches`` slot of each product is used, for ``market_trades``), so the server filters both
    APIs the same way. Trades routed here wait in :attr:`trades` for the next batch.
    """

    __slots__ = ("_index", "heartbeats", "mask", "products", "seq", "subscribed", "trades")

    everything = False
    wants_ticker = False

    def __init__(self, product_ids: Sequence[str]) -> None:
        self.products = tuple(product_ids)
        self._index = {p: i for i, p in enumerate(self.products)}
        self.mask = bytearray(len(self.products) * N_CHANNELS)
        self.heartbeats = False
        self.subscribed = False
        self.seq = 0
        self.trades: list[Msg] = []

    @property
    def active(self) -> bool:
        return self.heartbeats or any(self.mask)

    def handle(self, raw: str | bytes) -> AdvancedReply:
        """Apply one request; the caller sends :meth:`snapshot` (if any) then :meth:`subscriptions`."""
        try:
            request = orjson.loads(raw)
            if not isinstance(request, dict):
                raise _Bad("malformed_json")
            kind = request.get("type")
            if kind not in ("subscribe", "unsubscribe"):
                raise _Bad("bad_type")
            channel = request.get("channel")
            if channel not in ADV_CHANNELS:
                raise _Bad("unknown_channel")
            jwt = request.get("jwt")
            if jwt is not None and not isinstance(jwt, str):
                raise _Bad("bad_jwt")
            products = self._products(request.get("product_ids"), channel == MARKET_TRADES and kind == "subscribe")
        except orjson.JSONDecodeError:
            return AdvancedReply(ERROR, error="malformed_json")
        except _Bad as bad:
            return AdvancedReply(ERROR, error=str(bad))
        subscribe = kind == "subscribe"
        new: list[int] = []
        if channel == HEARTBEATS:
            self.heartbeats = subscribe
        else:
            mask = self.mask
            for p in products or (range(len(self.products)) if not subscribe else ()):
                key = p * N_CHANNELS + MATCH
                if subscribe and not mask[key]:
                    new.append(p)
                mask[key] = 1 if subscribe else 0
        if subscribe:
            self.subscribed = True
        return AdvancedReply(SUBSCRIPTIONS, tuple(dict.fromkeys(new)))

    def _products(self, ids: object, required: bool) -> list[int]:
        if ids is None:
            if required:
                raise _Bad("no_products")
            return []
        if not isinstance(ids, list) or (required and not ids):
            raise _Bad("bad_products")
        out = []
        for pid in ids:
            i = self._index.get(pid) if isinstance(pid, str) else None
            if i is None:
                raise _Bad("unknown_product")
            out.append(i)
        return out

    def envelope(self, channel: str, events: bytes, timestamp: str) -> bytes:
        """One message of ``channel`` with the next ``sequence_num``; ``events`` is the JSON array."""
        seq = self.seq
        self.seq = seq + 1
        return b'{"channel":"%s","client_id":"","timestamp":"%s","sequence_num":%d,"events":%s}' % (
            channel.encode(),
            timestamp.encode(),
            seq,
            events,
        )

    def subscriptions(self, timestamp: str) -> bytes:
        subs: dict[str, list[str]] = {}
        products = [p for i, p in enumerate(self.products) if self.mask[i * N_CHANNELS + MATCH]]
        if products:
            subs[MARKET_TRADES] = products
        if self.heartbeats:
            subs[HEARTBEATS] = [HEARTBEATS]
        return self.envelope("subscriptions", orjson.dumps([{"subscriptions": subs}]), timestamp)

    def market_trades(self, trades: list[bytes], timestamp: str, snapshot: bool = False) -> bytes:
        """One ``market_trades`` message of one event holding ``trades`` (trade objects, as given)."""
        kind = b"snapshot" if snapshot else b"update"
        events = b'[{"type":"%s","trades":[%s]}]' % (kind, b",".join(trades))
        return self.envelope(MARKET_TRADES, events, timestamp)

    def heartbeat(self, timestamp: str, current_time: str, counter: int) -> bytes:
        events = orjson.dumps([{"current_time": current_time, "heartbeat_counter": counter}])
        return self.envelope(HEARTBEATS, events, timestamp)

    def take_batch(self) -> tuple[list[bytes], list[bytes]]:
        """The waiting trades as trade objects, and any that are not JSON (a malformed fault) as they are."""
        waiting, self.trades = self.trades, []
        good: list[bytes] = []
        broken: list[bytes] = []
        for _, _, text in waiting:
            obj = trade_object(text)
            if obj is None:
                broken.append(text)
            else:
                good.append(obj)
        return good, broken


def go_time(epoch_us: int, uptime_s: float) -> str:
    """``2026-09-30 02:37:15.057778000 +0000 UTC m=+21697.195984854``: Go's ``time.Time`` string, as recorded."""
    sec, frac = divmod(epoch_us, 1_000_000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec)) + f".{frac:06d}000 +0000 UTC m=+{uptime_s:.9f}"


def iso_ns(epoch_us: int) -> str:
    """The envelope ``timestamp``: ISO-8601 UTC with nine decimals, as recorded (``...40.175203666Z``)."""
    sec, frac = divmod(epoch_us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:06d}000Z"
