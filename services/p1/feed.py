"""The venue adapter: Coinbase Exchange's WebSocket feed in, batches of trade messages out.

:class:`FeedProtocol` decides what each message means and holds no socket; :class:`CoinbaseFeed`
is the thin asyncio shell that connects, subscribes, reconnects, and hands the protocol whatever
the socket already has, a batch at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from loguru import logger
from websockets.asyncio.client import ClientConnection, connect

from mercurystream.p1.backoff import Backoff
from mercurystream.p1.metrics import P1Metrics
from mercurystream.shared.logger import LogSampler
from mercurystream.shared.models import CONTROL_TYPES, TRADE_TYPES

MALFORMED = "malformed"
OTHER = "other"
_ALWAYS_LABELLED = TRADE_TYPES | CONTROL_TYPES | {"last_match", MALFORMED, OTHER}

OnMessages = Callable[[list[dict[str, Any]]], None]


class FeedProtocol:
    """Classify a batch of raw feed messages: trades to forward, everything else counted.

    ``last_match`` is counted and not forwarded: every subscription repeats the latest trade, so
    after a reconnect it would be a false duplicate downstream. Unknown types are counted under
    their own name, up to ``max_type_labels`` names, then under ``other``, because the ``type``
    label of a metric must not grow without bound on a venue's whim.
    """

    def __init__(self, symbols: Iterable[str], channel: str, max_type_labels: int = 32) -> None:
        self.symbols = list(symbols)
        self.channel = channel
        self.max_type_labels = max_type_labels
        self.subscribed = False
        self.counts: dict[str, int] = {}
        self.messages = 0
        self.trades = 0
        self._labels: set[str] = set(_ALWAYS_LABELLED)
        self._sampler = LogSampler()

    def subscribe_request(self) -> str:
        """The subscribe message, sent as text right after the handshake (Coinbase waits 5 s for it)."""
        return orjson.dumps(
            {"type": "subscribe", "product_ids": self.symbols, "channels": [self.channel, "heartbeat"]}
        ).decode()

    def on_connect(self) -> None:
        self.subscribed = False

    def handle(self, raws: list[bytes | str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Return the batch's trade messages (parsed, as received) and its per-type counts."""
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        trade_types = TRADE_TYPES
        trades: list[dict[str, Any]] = []
        append = trades.append
        counts: dict[str, int] = {}
        others: list[dict[str, Any]] | None = None
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
                append(msg)
                counts[t] = counts.get(t, 0) + 1
            else:
                if others is None:
                    others = []
                others.append(msg)
        if others:
            self._handle_others(others, counts)
        self.messages += len(raws)
        self.trades += len(trades)
        totals = self.counts
        for t, n in counts.items():
            totals[t] = totals.get(t, 0) + n
        return trades, counts

    def _handle_others(self, msgs: list[dict[str, Any]], counts: dict[str, int]) -> None:
        for msg in msgs:
            t = msg["type"]
            if t == "heartbeat" or t == "last_match":
                pass
            elif t == "subscriptions":
                self.subscribed = True
                logger.info("feed: subscribed: {}", orjson.dumps(msg.get("channels")).decode())
            elif t == "error":
                self._sampler.warning(
                    "venue_error", "feed: venue error: {} ({})", msg.get("message"), msg.get("reason")
                )
            elif t not in self._labels:
                if len(self._labels) - len(_ALWAYS_LABELLED) < self.max_type_labels:
                    self._labels.add(t)
                    logger.info("feed: ignoring messages of unknown type {!r}", t)
                else:
                    t = OTHER
            counts[t] = counts.get(t, 0) + 1


class CoinbaseFeed:
    """Connect, subscribe, read; reconnect with capped backoff and jitter, resubscribing each time.

    Messages are not handed on one by one: ``recv`` returns without suspending while the socket
    has whole messages queued, so the loop collects them and a callback scheduled with
    ``call_soon`` flushes everything gathered the moment ``recv`` would have to wait. A batch is
    therefore exactly what had arrived, and the pipeline downstream runs once per batch.

    The handshake is bounded by ``subscribe_timeout`` and the subscribe request goes out right
    after it, inside Coinbase's 5 s limit. Silence for ``idle_timeout_s`` (heartbeats arrive every
    second per product) means a dead connection: reconnect. Compression is off: deflate costs more
    CPU per message than the bandwidth of a trades feed is worth.
    """

    def __init__(
        self,
        url: str,
        symbols: Iterable[str],
        channel: str,
        backoff_max: float,
        on_messages: OnMessages,
        metrics: P1Metrics,
        subscribe_timeout: float = 5.0,
        *,
        idle_timeout_s: float = 10.0,
        max_size: int = 1 << 20,
        max_batch: int = 4096,
        backoff_base_s: float = 0.5,
    ) -> None:
        self.url = url
        self.protocol = FeedProtocol(symbols, channel)
        self.backoff = Backoff(backoff_max, backoff_base_s)
        self.on_messages = on_messages
        self.metrics = metrics
        self.subscribe_timeout = subscribe_timeout
        self.idle_timeout_s = idle_timeout_s
        self.max_size = max_size
        self.max_batch = max_batch
        self.connects = 0
        self.reconnects = 0
        self.connected = False
        self._buf: list[bytes | str] = []
        self._flush_scheduled = False
        self._deadline: asyncio.Timeout | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._sampler = LogSampler()
        self._connected_gauge = metrics.connected.labels("websocket")
        self._reconnects_counter = metrics.reconnects_total.labels("websocket")

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="p1-feed")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._flush()

    async def _run(self) -> None:
        first = True
        while not self._stopping:
            if not first:
                self.reconnects += 1
                self._reconnects_counter.inc()
            first = False
            reason = "closed"
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                reason = f"nothing received for {self.idle_timeout_s:g} s (or handshake timeout)"
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self._set_connected(False)
                self._flush()
            if self.protocol.subscribed:
                self.backoff.reset()
            delay = self.backoff.next_delay()
            if self._sampler.should_log("reconnect"):
                logger.warning("feed: {} ({}); reconnecting in {:.2f} s", self.url, reason, delay)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        async with connect(
            self.url,
            open_timeout=self.subscribe_timeout,
            close_timeout=2.0,
            max_size=self.max_size,
            max_queue=1024,
            compression=None,
        ) as ws:
            self.connects += 1
            self.protocol.on_connect()
            await ws.send(self.protocol.subscribe_request())
            self._set_connected(True)
            async with asyncio.timeout(self.idle_timeout_s) as deadline:
                self._deadline = deadline
                try:
                    await self._receive(ws)
                finally:
                    self._deadline = None

    async def _receive(self, ws: ClientConnection) -> None:
        recv = ws.recv
        call_soon = asyncio.get_running_loop().call_soon
        flush = self._flush
        max_batch = self.max_batch
        while True:
            raw = await recv(decode=False)
            buf = self._buf
            buf.append(raw)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                call_soon(flush)
            elif len(buf) >= max_batch:
                flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        raws = self._buf
        if not raws:
            return
        self._buf = []
        deadline = self._deadline
        if deadline is not None and not deadline.expired():
            deadline.reschedule(asyncio.get_running_loop().time() + self.idle_timeout_s)
        trades, counts = self.protocol.handle(raws)
        self.metrics.count_messages(counts)
        if trades:
            try:
                self.on_messages(trades)
            except Exception:
                logger.exception("feed: the pipeline failed on a batch of {} trades; they are lost", len(trades))

    def _set_connected(self, up: bool) -> None:
        if up != self.connected:
            self.connected = up
            self._connected_gauge.set(1 if up else 0)
            if up:
                logger.info("feed: connected to {}", self.url)
