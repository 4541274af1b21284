"""Coinbase Advanced Trade's market-data WebSocket (``wss://advanced-trade-ws.coinbase.com``), sans I/O.

Every message has one envelope: ``channel``, ``client_id``, ``timestamp``, ``sequence_num`` (one
counter per connection, across channels) and ``events``. P1 subscribes to ``heartbeats`` (one a
second; without it the venue closes idle channels) and ``market_trades`` (fills batched over
250 ms, ``events`` of type ``snapshot`` on subscribe, then ``update``). Errors are
``{"type": "error", "message": ...}`` with no envelope and no product named.

Each trade is translated into the Coinbase Exchange ``match`` it is equivalent to, the pipeline's
input dialect, so validation and normalization stay one code path:

- ``trade_id`` is a string of digits here and an int in the schema: it becomes ``int(trade_id)``
  (the same number; Coinbase's ids are per product and fit int64). A trade id that is not a
  string of at most 19 ASCII digits is kept as it came and counted under ``non_numeric_trade_id``;
  the pipeline then forwards the trade as received and counts it invalid, so P2's drift detector
  sees it.
- ``side`` (``BUY``/``SELL``) is the taker's here, the maker's on an Exchange ``match``: it is
  written as the maker's (``BUY`` → ``sell``), so ``shared.models.taker_side``, the one rule for
  the normalized side, gives back the taker's.
- ``sequence_num`` numbers the connection's messages, not a product's: it is not the event's
  ``sequence``; a skip in it is counted (:attr:`AdvancedTradeProtocol.sequence_gaps`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from loguru import logger
from pydantic import SecretStr

from mercurystream.p1.feeds import MALFORMED, OTHER, OVERSIZE, FeedState
from mercurystream.shared.clip import STATUS_MAX, clip, preview
from mercurystream.shared.schema import INT64_MAX

MARKET_TRADES = "market_trades"
HEARTBEATS = "heartbeats"
SUBSCRIPTIONS = "subscriptions"
ERROR = "error"
SNAPSHOT_TRADE = "snapshot_trade"
"""A trade of a ``snapshot`` event already forwarded, or from before P1 first subscribed: not forwarded."""
NON_NUMERIC_TRADE_ID = "non_numeric_trade_id"
_ALWAYS_LABELLED = frozenset(
    {MARKET_TRADES, HEARTBEATS, SUBSCRIPTIONS, ERROR, SNAPSHOT_TRADE, NON_NUMERIC_TRADE_ID, MALFORMED, OTHER, OVERSIZE}
)
_MAKER_SIDE = {"BUY": "sell", "SELL": "buy"}
"""The taker's side as Advanced Trade writes it → the maker's, as an Exchange ``match`` carries it."""
_INT64_DIGITS = len(str(INT64_MAX))
JWT_LIFETIME_S = 120
"""Coinbase: a JWT expires after 2 minutes; one is signed for every subscribe message."""


class JwtSigner:
    """Sign the ES256 JWT Coinbase's Advanced Trade WebSocket takes in each subscribe message.

    Per Coinbase's WebSocket authentication docs: header ``alg=ES256``, ``kid`` = the API key name,
    a random ``nonce``; claims ``iss="cdp"``, ``sub`` = the key name, ``nbf`` = now, ``exp`` = now
    + 120 s, and no ``uri`` (WebSocket JWTs are not bound to a request). The private key is parsed
    once here; neither it nor a token is ever logged.
    """

    __slots__ = ("_key", "key_name")

    def __init__(self, key_name: str, private_key: SecretStr) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        pem = private_key.get_secret_value().replace("\\n", "\n").strip().encode()
        try:
            key = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise ValueError("COINBASE_API_PRIVATE_KEY is not a PEM EC private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("COINBASE_API_PRIVATE_KEY is not a P-256 (ES256) EC private key")
        self.key_name = key_name
        self._key = key

    def __repr__(self) -> str:
        return f"JwtSigner(key_name={self.key_name!r})"

    def token(self, now_s: float | None = None) -> str:
        import jwt

        now = int(time.time() if now_s is None else now_s)
        claims = {"iss": "cdp", "sub": self.key_name, "nbf": now, "exp": now + JWT_LIFETIME_S}
        headers = {"kid": self.key_name, "nonce": secrets.token_hex(16)}
        return jwt.encode(claims, self._key, algorithm="ES256", headers=headers)


def trade_id_int(raw: object) -> int | None:
    """``"846149798"`` → ``846149798``; ``None`` for anything but at most 19 ASCII digits within int64."""
    if type(raw) is not str or not 0 < len(raw) <= _INT64_DIGITS or not raw.isascii() or not raw.isdigit():
        return None
    value = int(raw)
    return value if value <= INT64_MAX else None


class AdvancedTradeProtocol(FeedState):
    """Classify a batch of Advanced Trade messages: trades to forward (as Exchange ``match``), the rest counted.

    Counts are per envelope ``channel`` (``market_trades``, ``heartbeats``, ``subscriptions``, up
    to ``max_type_labels`` other names, then ``other``), ``error``, ``malformed``, and per trade
    :data:`SNAPSHOT_TRADE` and :data:`NON_NUMERIC_TRADE_ID`.

    The ``snapshot`` sent on every subscribe repeats recent trades. Its trades up to the last id
    P1 forwarded for the product (all of them, before P1 forwarded any) are counted, not
    forwarded, as ``last_match`` is on the Exchange feed; newer ones, trades made while P1 was
    disconnected, are forwarded. Trades go out in trade-id order (a snapshot lists newest first).

    A rejected subscribe names no product. When the ``market_trades`` subscribe of several
    products fails, each is subscribed alone; once every reply is in, those the venue never
    confirmed are invalid. With none left, :attr:`fatal` says why.
    """

    always_labelled = _ALWAYS_LABELLED

    def __init__(self, symbols: Iterable[str], signer: JwtSigner | None = None, max_type_labels: int = 32) -> None:
        super().__init__(symbols, max_type_labels)
        self.signer = signer
        self.sequence_gaps = 0
        """Envelope ``sequence_num`` values skipped, over all connections. (No gap notices: this feed has no
        per-product trade-id heartbeat here, so :attr:`gaps` stays ``None``.)"""
        self.last_trade_id: dict[str, int] = {}
        """Per product, the highest trade id forwarded or seen in a snapshot."""
        self._last_seq: int | None = None
        self._pending = 0
        self._probing: list[str] | None = None

    def _request(self, channel: str, products: list[str] | None) -> str:
        request: dict[str, Any] = {"type": "subscribe", "channel": channel}
        if products is not None:
            request["product_ids"] = products
        if self.signer is not None:
            request["jwt"] = self.signer.token()
        self._pending += 1
        return orjson.dumps(request).decode()

    def subscribe_requests(self) -> list[str]:
        """``heartbeats`` first (it names no product, so it cannot fail on one), then ``market_trades``."""
        return [self._request(HEARTBEATS, None), self._request(MARKET_TRADES, self.valid_symbols)]

    def on_connect(self) -> None:
        super().on_connect()
        self._last_seq = None
        self._pending = 0
        self._probing = None

    def handle(self, raws: Sequence[bytes | bytearray | str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Return the batch's trades (as Exchange ``match`` messages) and its per-type counts."""
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        trades: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        for raw in raws:
            try:
                msg = loads(raw)
            except decode_error:
                counts[MALFORMED] = counts.get(MALFORMED, 0) + 1
                self._sampler.warning("invalid_json", "feed: message is not JSON: {!r}", raw[:200])
                continue
            channel = msg.get("channel") if type(msg) is dict else None
            if type(channel) is not str:
                if type(msg) is dict and msg.get("type") == ERROR:
                    counts[ERROR] = counts.get(ERROR, 0) + 1
                    self._on_error(msg)
                else:
                    counts[MALFORMED] = counts.get(MALFORMED, 0) + 1
                    self._sampler.warning("no_channel", "feed: message without a string channel: {!r}", raw[:200])
                continue
            seq = msg.get("sequence_num")
            if type(seq) is int:
                last = self._last_seq
                if last is not None and seq > last + 1:
                    self.sequence_gaps += seq - last - 1
                if last is None or seq > last:
                    self._last_seq = seq
            if channel == MARKET_TRADES:
                self._market_trades(msg, trades, counts)
            elif channel == SUBSCRIPTIONS:
                self._on_subscriptions(msg)
            elif channel != HEARTBEATS:
                channel = self._label(channel, "channel")
            counts[channel] = counts.get(channel, 0) + 1
        self._tally(len(raws), len(trades), counts)
        return trades, counts

    def _market_trades(self, msg: dict[str, Any], out: list[dict[str, Any]], counts: dict[str, int]) -> None:
        events = msg.get("events")
        if type(events) is not list:
            self._sampler.warning("no_events", "feed: market_trades without an events list: {!r}", str(msg)[:200])
            return
        last_ids = self.last_trade_id
        maker_side = _MAKER_SIDE
        for event in events:
            raw_trades = event.get("trades") if type(event) is dict else None
            if type(raw_trades) is not list:
                self._sampler.warning("no_trades", "feed: market_trades event without trades: {!r}", str(event)[:200])
                continue
            snapshot = event.get("type") == "snapshot"
            batch: list[tuple[int, dict[str, Any]]] = []
            odd: list[dict[str, Any]] = []
            for t in raw_trades:
                if type(t) is not dict:
                    t = {"trade": t}
                raw_id = t.get("trade_id")
                tid = trade_id_int(raw_id)
                side = t.get("side")
                match = {
                    "type": "match",
                    "product_id": t.get("product_id"),
                    "price": t.get("price"),
                    "size": t.get("size"),
                    "time": t.get("time"),
                    "trade_id": raw_id if tid is None else tid,
                    "side": maker_side.get(side, side) if type(side) is str else side,
                }
                if tid is None:
                    counts[NON_NUMERIC_TRADE_ID] = counts.get(NON_NUMERIC_TRADE_ID, 0) + 1
                    self._sampler.warning("trade_id", "feed: trade id {!r} is not a number", raw_id)
                    odd.append(match)
                else:
                    batch.append((tid, match))
            if len(batch) > 1 and any(batch[i][0] > batch[i + 1][0] for i in range(len(batch) - 1)):
                batch.sort(key=lambda pair: pair[0])
            # A snapshot is judged against what was forwarded before it, not against its own trades.
            before = dict(last_ids) if snapshot else last_ids
            for tid, match in batch:
                pid = match["product_id"]
                last = last_ids.get(pid) if type(pid) is str else None
                if snapshot and (type(pid) is not str or (known := before.get(pid)) is None or tid <= known):
                    counts[SNAPSHOT_TRADE] = counts.get(SNAPSHOT_TRADE, 0) + 1
                else:
                    out.append(match)
                if type(pid) is str and (last is None or tid > last):
                    last_ids[pid] = tid
            if not snapshot:
                out.extend(odd)
            elif odd:
                counts[SNAPSHOT_TRADE] = counts.get(SNAPSHOT_TRADE, 0) + len(odd)

    def _on_subscriptions(self, msg: dict[str, Any]) -> None:
        products: set[str] = set()
        confirmed = False
        events = msg.get("events")
        for event in events if type(events) is list else ():
            subs = event.get("subscriptions") if type(event) is dict else None
            listed = subs.get(MARKET_TRADES) if type(subs) is dict else None
            if type(listed) is list:
                confirmed = True
                products.update(p for p in listed if type(p) is str)
        if self._pending:
            self._pending -= 1
        if confirmed:
            self.subscribed = True
            self.subscribed_products = frozenset(products & set(self.symbols))
        logger.info("feed: subscribed: {}", clip(orjson.dumps(events).decode(), STATUS_MAX))
        self._settle_probe()

    def _on_error(self, msg: dict[str, Any]) -> None:
        message = msg.get("message")
        if self._pending == 0:
            self._sampler.warning("venue_error", "feed: venue error: {}", preview(message))
            return
        self._pending -= 1
        if self._probing is not None or self.subscribed_products:
            self._settle_probe()
            return
        valid = self.valid_symbols
        if len(valid) == 1:
            self._reject(valid, message)
            return
        logger.error(
            "feed: the venue rejected the market_trades subscribe ({}); subscribing each product alone", message
        )
        self._probing = valid
        self.outbox.extend(self._request(MARKET_TRADES, [p]) for p in valid)

    def _settle_probe(self) -> None:
        """Once every reply to the one-product subscribes is in, the products never confirmed are invalid."""
        probing = self._probing
        if probing is None or self._pending:
            return
        self._probing = None
        rejected = [p for p in probing if p not in self.subscribed_products]
        if rejected:
            self._reject(rejected, "failure to subscribe")

    def _reject(self, products: list[str], message: object) -> None:
        for p in products:
            self.invalid[p] = f"{p}: the venue rejected its subscribe ({message})"
        left = self._give_up_if_none_left()
        logger.error(
            "feed: the venue rejected {} ({}); {} left",
            ",".join(products),
            message,
            ",".join(left) or "none",
        )
