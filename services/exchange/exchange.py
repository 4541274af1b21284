"""``mercury-exchange``: an offline stand-in for Coinbase's websocket feeds (Exchange, or Advanced Trade).

One market (:mod:`.market`) is paced by the event loop's clock and fanned out to every subscribed
client, filtered by its subscriptions (:mod:`.protocol`) and passed through its own seeded fault
injector (:mod:`.faults`). Each client has a bounded queue drained by its own writer task, so a slow
client never holds back the others; one that falls ``max_queue`` messages behind is disconnected,
as Coinbase does (``ErrSlowConsume``). With ``--flood`` (for benchmarks) the slowest subscriber's
reading paces the market instead, so no subscriber is ever dropped as too slow.

``--api advanced-trade`` serves the same market with Advanced Trade's protocol (:mod:`.advanced`):
one envelope per message, ``market_trades`` batched every 250 ms, ``heartbeats`` every second.
Faults apply to the trades before they are batched (a malformed ``invalid_json`` trade goes out
as a message of its own), and an on-demand disconnect works the same.

The same port answers plain HTTP: ``GET /stats`` (JSON counters), ``GET /healthz`` and, only with
``--allow-faults``, ``POST /faults?kind=duplicate&count=3`` (kinds: duplicate, gap, reorder,
malformed, disconnect) with the run's token in an ``X-Faults-Token`` header. Fault injection on
demand is a control, and any web page open on the machine can send a GET to localhost: so it is off
by default, POST only, needs a token (``--faults-token``, ``MERCURY_FAULTS_TOKEN``, or one
generated per run and printed once at start) and refuses any ``Origin`` but the server's own. A
browser sends a cross-origin request with a custom header only after a preflight, which gets 405.

On start the CLI prints one line to stdout, ``mercury-exchange listening on ws://HOST:PORT``, so a
script that passed ``--port 0`` can read the port; with ``--allow-faults`` a second line says how to
send faults (with the token when it was generated).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import itertools
import os
import secrets
import signal
import struct
import sys
import time
from collections import deque
from typing import Any, Literal, NoReturn
from urllib.parse import parse_qs, urlsplit

import orjson
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.http11 import Request, Response

from mercurystream.exchange.advanced import (
    BATCH_S,
    FAILURE,
    SNAPSHOT_TRADES,
    AdvancedSession,
    go_time,
    iso_ns,
    trade_object,
)
from mercurystream.exchange.faults import KINDS, FaultInjector, FaultRates
from mercurystream.exchange.market import (
    DEFAULT_PRODUCTS,
    HEARTBEATS_KIND,
    KIND_NAMES,
    LAST_MATCH,
    MARKET_TRADES_KIND,
    MATCH,
    N_CHANNELS,
    TICKER,
    Market,
    Msg,
    spec_for,
)
from mercurystream.exchange.protocol import Session
from mercurystream.exchange.rest import TradeHistory, is_trades_path
from mercurystream.shared.config import CommonSettings, ConfigError, Port, build_settings, parse_symbols
from mercurystream.shared.logger import LogSampler, setup_logging

DISCONNECT_REASONS = (
    "subscribe_timeout",
    "slow_consumer",
    "scheduled",
    "on_demand",
    "server_stop",
    "client_closed",
    "connection_lost",
)
FAULTS_TOKEN_HEADER = "X-Faults-Token"
FAULTS_TOKEN_ENV = "MERCURY_FAULTS_TOKEN"
MIN_TOKEN_CHARS = 16
MAX_REQUEST_BYTES = 1 << 16
"""Largest client message accepted; bigger ones close the connection (Coinbase: "Message too big")."""


class ExchangeConfig(BaseModel):
    """Everything the server needs; the CLI builds it from flags, tests construct it directly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", min_length=1)
    port: Port = 8765
    api: Literal["exchange", "advanced-trade"] = Field("exchange", description="the Coinbase API to speak")
    rate: float = Field(50.0, gt=0, le=1_000_000, description="trades per second, all products together")
    products: tuple[str, ...] = DEFAULT_PRODUCTS
    seed: int = 0
    max_trades: int | None = Field(None, ge=0)
    disconnect_every_s: float | None = Field(None, gt=0)
    duplicate_rate: float = Field(0.0, ge=0, le=1)
    gap_rate: float = Field(0.0, ge=0, le=1)
    reorder_rate: float = Field(0.0, ge=0, le=1)
    malformed_rate: float = Field(0.0, ge=0, le=1)
    reorder_window: int = Field(5, ge=1, le=1000)
    heartbeat: bool = True
    subscribe_timeout_s: float = Field(5.0, gt=0)
    max_queue: int = Field(100_000, gt=0, description="messages queued for one client before it is dropped")
    tick_s: float = Field(0.002, gt=0, le=1.0, description="shortest pause between market batches")
    batch_limit: int = Field(50_000, gt=0, description="most trades generated in one batch")
    cascade_prob: float = Field(0.15, ge=0, lt=1)
    start_us: int | None = Field(None, description="market start time (epoch us); default: now")
    status_interval_s: float = Field(5.0, gt=0)
    flood: bool = Field(False, description="generate trades only as fast as the slowest subscriber reads them")
    flood_chunk: int = Field(
        2000, gt=0, le=1_000_000, description="trades per chunk in flood mode, and the low-water mark for the next"
    )
    rest_history: int = Field(
        10_000, ge=0, le=1_000_000, description="matches kept per product for GET /products/{id}/trades"
    )
    allow_faults: bool = Field(False, description="answer POST /faults (with the token)")
    faults_token: str | None = Field(
        None,
        min_length=MIN_TOKEN_CHARS,
        max_length=256,
        pattern=r"^[!-~]+$",
        description="the token POST /faults must carry; default: generated per run",
    )

    @field_validator("products", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        return parse_symbols(v)

    @field_validator("products")
    @classmethod
    def _known_shape(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("expected at least one product id")
        if len(set(v)) != len(v):
            raise ValueError("product ids must be unique")
        for p in v:
            spec_for(p)
        return v

    @model_validator(mode="after")
    def _rates(self) -> ExchangeConfig:
        self.fault_rates()
        if self.faults_token is not None and not self.allow_faults:
            raise ValueError("a faults token needs --allow-faults")
        return self

    def fault_rates(self) -> FaultRates:
        return FaultRates(self.duplicate_rate, self.gap_rate, self.reorder_rate, self.malformed_rate)


class _Client:
    __slots__ = (
        "closer",
        "id",
        "injector",
        "pending",
        "reason",
        "remote",
        "session",
        "timer",
        "wake",
        "writer",
        "ws",
    )

    def __init__(
        self, cid: int, ws: ServerConnection, session: Session | AdvancedSession, injector: FaultInjector
    ) -> None:
        self.id = cid
        self.ws = ws
        self.session = session
        self.injector = injector
        self.pending: list[Msg] = []
        self.wake = asyncio.Event()
        self.reason: str | None = None
        self.remote = "{}:{}".format(*ws.remote_address[:2]) if ws.remote_address else "?"
        self.writer: asyncio.Task | None = None
        self.closer: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None


_H16 = struct.Struct(">BBH").pack
_H64 = struct.Struct(">BBQ").pack


def _frame_header(n: int) -> bytes:
    if n < 126:
        return bytes((0x81, n))
    if n < 65536:
        return _H16(0x81, 126, n)
    return _H64(0x81, 127, n)


_HEADERS = [_frame_header(n) for n in range(4096)]
"""Headers by payload length: every market message is shorter than 4 KiB."""


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame (RFC 6455 section 5.2), as a server sends it."""
    return _frame_header(len(payload)) + payload


def text_frames(msgs: list[Msg]) -> bytes:
    """The text frames of a batch as one buffer: headers from a table, payloads copied once, by ``join``."""
    payloads = [m[2] for m in msgs]
    headers = _HEADERS
    top = len(headers)
    parts: list[bytes] = [b""] * (2 * len(payloads))
    parts[::2] = [headers[n] if n < top else _frame_header(n) for n in map(len, payloads)]
    parts[1::2] = payloads
    return b"".join(parts)


def _json_response(status: int, body: object, extra: tuple[tuple[str, str], ...] = ()) -> Response:
    data = orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"
    headers = Headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
            *extra,
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, data)


def _origin(host: str, port: int) -> str:
    """The ``Origin`` a browser sends for a page served from ``host:port`` (IPv6 in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host and not host.startswith("[") else f"http://{host}:{port}"


def _method_not_allowed(method: str, allowed: str) -> Response:
    return _json_response(405, {"error": f"{method} not allowed; use {allowed}"}, (("Allow", allowed),))


class _PumpClock:
    """When a pump's next heartbeat and status line are due, in seconds since the pump started."""

    __slots__ = ("batch_s", "next_batch", "next_hb", "next_status", "status_interval_s")

    def __init__(self, status_interval_s: float, batch_s: float | None = None) -> None:
        self.status_interval_s = status_interval_s
        self.next_hb = 1.0
        self.next_status = status_interval_s
        self.batch_s = batch_s
        """Advanced Trade: how often trades waiting per client go out as one ``market_trades``."""
        self.next_batch = batch_s if batch_s is not None else float("inf")

    @property
    def next_due(self) -> float:
        return min(self.next_hb, self.next_status, self.next_batch)


class ExchangeServer:
    """The websocket server around one :class:`Market`. ``await start()`` returns the bound port."""

    def __init__(self, config: ExchangeConfig | None = None) -> None:
        self.config = config or ExchangeConfig()
        self.port: int | None = None
        self._server: Server | None = None
        self._pump_task: asyncio.Task | None = None
        self._market: Market | None = None
        self._clients: dict[int, _Client] = {}
        self._live: dict[int, _Client] = {}
        """Clients that receive market messages: subscribed to something and not being closed."""
        self._ids = itertools.count(1)
        self._connections_total = 0
        self._sent = [0] * len(KIND_NAMES)
        self._disconnects = dict.fromkeys(DISCONNECT_REASONS, 0)
        self._request_errors: dict[str, int] = {}
        self._faults_done = dict.fromkeys((*KINDS, "disconnect"), 0)
        self._sampler = LogSampler()
        self._started_at = 0.0
        self._flushed = False
        self._room = asyncio.Event()
        """Flood mode: set when a subscriber may have drained below the low-water mark."""
        cfg = self.config
        self.faults_token: str | None = None
        """What ``POST /faults`` must carry in ``X-Faults-Token``; ``None`` while fault injection is off."""
        if cfg.allow_faults:
            self.faults_token = cfg.faults_token or secrets.token_urlsafe(32)
        self._own_origins: frozenset[str] = frozenset()
        self.advanced = cfg.api == "advanced-trade"
        self._recent: list[deque[bytes]] = []
        """Advanced Trade: each product's latest ``match`` texts, for the snapshot sent on subscribe."""
        self._trades_sent = 0
        self.history: TradeHistory | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> int:
        cfg = self.config
        loop = asyncio.get_running_loop()
        self._market = Market(
            cfg.products,
            rate=cfg.rate,
            seed=cfg.seed,
            start_us=cfg.start_us if cfg.start_us is not None else time.time_ns() // 1000,
            max_trades=cfg.max_trades,
            cascade_prob=cfg.cascade_prob,
        )
        self._market.tickers = False
        # Seeded with each product's trade from before the stream, so the first snapshot is never empty.
        self._recent = [deque([self._market.last_match(p)], maxlen=SNAPSHOT_TRADES) for p in range(len(cfg.products))]
        self.history = TradeHistory(cfg.products, self._market.last_trade_id, cfg.rest_history)
        self._started_at = time.monotonic()
        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            process_request=self._http,
            compression=None,
            max_size=MAX_REQUEST_BYTES,
            close_timeout=2.0,
            server_header="mercury-exchange",
        )
        self.port = self._server.sockets[0].getsockname()[1]
        hosts = {cfg.host, "127.0.0.1", "localhost", "[::1]"}
        self._own_origins = frozenset(_origin(h, self.port) for h in hosts)
        pump = self._flood_pump if cfg.flood else self._pump
        self._pump_task = asyncio.create_task(pump(loop.time()), name="exchange-pump")
        self._pump_task.add_done_callback(self._pump_done)
        logger.info(
            "exchange ({}) on ws://{}:{}: {} at {} trades/s{}, seed {}",
            cfg.api,
            cfg.host,
            self.port,
            ",".join(cfg.products),
            cfg.rate,
            " (flood: as fast as the slowest subscriber reads)" if cfg.flood else "",
            cfg.seed,
        )
        return self.port

    async def stop(self) -> None:
        if self._server is None:
            return
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        for c in list(self._clients.values()):
            self._disconnect(c, "server_stop", 1001, "server stopping")
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        logger.info("exchange stopped: {} trades generated", self.trades)

    @property
    def market(self) -> Market:
        if self._market is None:
            raise RuntimeError("the exchange has not started")
        return self._market

    @property
    def trades(self) -> int:
        return self._market.trades if self._market is not None else 0

    # ---- market pump -------------------------------------------------------------------------

    async def _pump(self, t0: float) -> None:
        """Generate what is due, fan it out, sleep until the next trade, heartbeat or status line."""
        cfg = self.config
        market = self.market
        loop = asyncio.get_running_loop()
        clock = _PumpClock(cfg.status_interval_s, BATCH_S if self.advanced else None)
        while True:
            now = loop.time() - t0
            now_us = int(now * 1e6)
            self._generate(now_us, cfg.batch_limit)
            self._periodic(clock, now, now_us)
            nxt = market.next_us
            if nxt is not None and nxt <= now_us:
                await asyncio.sleep(0)  # behind: yield to the writers, then catch up
                continue
            wake = min(clock.next_due, 1e18 if nxt is None else nxt / 1e6)
            await asyncio.sleep(min(1.0, max(cfg.tick_s, wake - (loop.time() - t0))))

    async def _flood_pump(self, t0: float) -> None:
        """Generate the next chunk whenever every subscriber's queue is under ``flood_chunk`` messages.

        A benchmark of a reader must not measure the exchange: here trades are made only as fast as
        the slowest live subscriber takes them, so the exchange spends CPU on nothing but what is
        read, and a reader is never cut off as a slow consumer. A writer empties its queue when it
        starts writing a batch, so the next chunk is made while that batch drains into the socket:
        the reader does not wait for the generator. Trade times follow the market's own clock
        (Poisson spacing at ``rate``), not the wall clock; heartbeats carry that clock too.
        """
        cfg = self.config
        market = self.market
        loop = asyncio.get_running_loop()
        room = self._room
        low = cfg.flood_chunk
        live = self._live
        far = 1 << 62
        clock = _PumpClock(cfg.status_interval_s, BATCH_S if self.advanced else None)
        while True:
            now = loop.time() - t0
            self._periodic(clock, now, market.clock_us)
            if live and not market.exhausted and all(len(c.pending) < low for c in live.values()):
                self._generate(far, low)
                await asyncio.sleep(0)  # let the writers take the chunk
                continue
            room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(room.wait(), max(0.001, clock.next_due - now))

    def _generate(self, until_us: int, limit: int) -> None:
        """Trades up to ``until_us`` (at most ``limit``) out to the subscribers; at the end, what is held."""
        market = self.market
        msgs = market.advance(until_us, limit)
        if msgs:
            if self.advanced:
                recent = self._recent
                for key, kind, text in msgs:
                    if kind == MATCH:
                        recent[key // N_CHANNELS].append(text)
            self.history.add(msgs)  # type: ignore[union-attr]
            self._fanout(msgs)
        if market.exhausted and not self._flushed:
            self._flushed = True
            self._flush_held()
            logger.info("max trades reached ({}): heartbeats only from now on", market.trades)

    def _periodic(self, clock: _PumpClock, now: float, market_us: int) -> None:
        """Heartbeats (stamped with ``market_us``) and the status line, when due."""
        if now >= clock.next_batch:
            self._advanced_batches(market_us)
            clock.next_batch = max(clock.next_batch + BATCH_S, now + BATCH_S / 2)
        if now >= clock.next_hb:
            if self.config.heartbeat:
                if self.advanced:
                    self._advanced_heartbeats(market_us)
                else:
                    self._fanout(self.market.heartbeats(market_us))
            clock.next_hb = max(clock.next_hb + 1.0, now + 0.5)
        if now >= clock.next_status:
            clock.next_status = now + clock.status_interval_s
            self._status_line()

    @staticmethod
    def _pump_done(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.opt(exception=task.exception()).error("market pump died: no more trades or heartbeats")

    def _fanout(self, msgs: list[Msg]) -> None:
        limit = self.config.max_queue
        for c in list(self._live.values()):
            session = c.session
            if session.everything:
                sel = msgs
            else:
                mask = session.mask
                sel = [m for m in msgs if mask[m[0]]]
            injector = c.injector
            if injector.active:
                sel = injector.apply(sel)
            if not sel:
                continue
            pending = c.pending
            queued = len(pending)
            if type(c.session) is AdvancedSession:
                pending = c.session.trades
                queued += len(pending)
            if queued + len(sel) > limit:
                self._sampler.warning(
                    "slow_consumer", "client {} is {} messages behind: disconnecting", c.remote, queued
                )
                self._disconnect(c, "slow_consumer", 1008, "ErrSlowConsume")
                continue
            pending.extend(sel)
            c.wake.set()

    def _advanced_batches(self, market_us: int) -> None:
        """Advanced Trade: every client's trades since the last batch, as one ``market_trades`` update."""
        timestamp = iso_ns(self.market.start_us + market_us)
        for c in self._live.values():
            session = c.session
            if type(session) is not AdvancedSession or not session.trades:
                continue
            good, broken = session.take_batch()
            if good:
                c.pending.append((-1, MARKET_TRADES_KIND, session.market_trades(good, timestamp)))
                self._trades_sent += len(good)
            for text in broken:
                c.pending.append((-1, MARKET_TRADES_KIND, text))
            c.wake.set()

    def _advanced_heartbeats(self, market_us: int) -> None:
        epoch_us = self.market.start_us + market_us
        timestamp = iso_ns(epoch_us)
        uptime = time.monotonic() - self._started_at
        current = go_time(epoch_us, uptime)
        for c in self._live.values():
            session = c.session
            if type(session) is AdvancedSession and session.heartbeats:
                c.pending.append((-1, HEARTBEATS_KIND, session.heartbeat(timestamp, current, int(uptime))))
                c.wake.set()

    def _flush_held(self) -> None:
        """Release messages held back for reordering: the stream has ended, nothing will follow them."""
        for c in self._live.values():
            held = c.injector.flush()
            if held:
                c.pending.extend(held)
                c.wake.set()

    def _status_line(self) -> None:
        s = self._sent
        logger.info(
            "trades={} clients={} live={} sent match={} ticker={} heartbeat={} faults={} drops={}",
            self.trades,
            len(self._clients),
            len(self._live),
            s[0],
            s[1],
            s[2],
            sum(self._faults_total().values()),
            self._disconnects["slow_consumer"],
        )

    # ---- connections -------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        cfg = self.config
        cid = next(self._ids)
        injector = FaultInjector(cfg.fault_rates(), seed=cfg.seed * 1_000_003 + cid, reorder_window=cfg.reorder_window)
        session = AdvancedSession(cfg.products) if self.advanced else Session(cfg.products)
        c = _Client(cid, ws, session, injector)
        self._clients[cid] = c
        self._connections_total += 1
        logger.info("client {} connected from {}", cid, c.remote)
        c.writer = asyncio.create_task(self._writer(c), name=f"exchange-writer-{cid}")
        if cfg.disconnect_every_s is not None:
            c.timer = asyncio.get_running_loop().call_later(
                cfg.disconnect_every_s, self._disconnect, c, "scheduled", 1001, "scheduled disconnect"
            )
        try:
            try:
                async with asyncio.timeout(cfg.subscribe_timeout_s):
                    while not c.session.subscribed:
                        self._on_request(c, await ws.recv())
            except TimeoutError:
                self._disconnect(c, "subscribe_timeout", 1008, f"no subscribe within {cfg.subscribe_timeout_s:g} s")
                await ws.wait_closed()
                return
            async for raw in ws:
                self._on_request(c, raw)
        except ConnectionClosedOK:
            pass
        except ConnectionClosed as exc:
            if c.reason is None:
                c.reason = "connection_lost"
                self._disconnects["connection_lost"] += 1
                logger.info("client {} connection lost: {}", cid, exc)
        finally:
            self._forget(c)
            if c.writer is not None:
                c.writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await c.writer
            if c.closer is not None:
                with contextlib.suppress(Exception):
                    await c.closer

    def _forget(self, c: _Client) -> None:
        if c.reason is None:
            c.reason = "client_closed"
            self._disconnects["client_closed"] += 1
        logger.info("client {} gone ({})", c.id, c.reason)
        if c.timer is not None:
            c.timer.cancel()
        self._clients.pop(c.id, None)
        self._live.pop(c.id, None)
        for kind, n in c.injector.injected.items():
            self._faults_done[kind] += n
        self._update_tickers()
        self._room.set()

    def _on_request(self, c: _Client, raw: str | bytes) -> None:
        if c.reason is not None:
            return
        if type(c.session) is AdvancedSession:
            self._on_advanced_request(c, c.session, raw)
            return
        reply = c.session.handle(raw)
        if reply.error is not None:
            self._request_errors[reply.error] = self._request_errors.get(reply.error, 0) + 1
            self._sampler.warning(reply.error, "client {}: bad request: {}", c.remote, reply.text.decode())
        c.pending.append((-1, reply.kind, reply.text))
        market = self.market
        for p in reply.new_matches:
            c.pending.append((-1, LAST_MATCH, market.last_match(p)))
        for p in reply.new_tickers:
            c.pending.append((-1, TICKER, market.subscribe_ticker(p)))
        c.wake.set()
        if c.session.active:
            self._live[c.id] = c
        else:
            self._live.pop(c.id, None)
        self._update_tickers()
        self._room.set()

    def _on_advanced_request(self, c: _Client, session: AdvancedSession, raw: str | bytes) -> None:
        reply = session.handle(raw)
        if reply.error is not None:
            self._request_errors[reply.error] = self._request_errors.get(reply.error, 0) + 1
            self._sampler.warning(reply.error, "client {}: bad request: {!r}", c.remote, raw[:200])
            c.pending.append((-1, reply.kind, FAILURE))
        else:
            market = self.market
            timestamp = iso_ns(market.start_us + market.clock_us)
            if reply.new_products:
                recent = [text for p in reply.new_products for text in reversed(self._recent[p])]
                good = [t for t in map(trade_object, recent) if t is not None]
                c.pending.append((-1, MARKET_TRADES_KIND, session.market_trades(good, timestamp, snapshot=True)))
            c.pending.append((-1, reply.kind, session.subscriptions(timestamp)))
        c.wake.set()
        if session.active:
            self._live[c.id] = c
        else:
            self._live.pop(c.id, None)
        self._room.set()

    def _update_tickers(self) -> None:
        if self._market is not None:
            self._market.tickers = any(c.session.wants_ticker for c in self._live.values())

    def _disconnect(self, c: _Client, reason: str, code: int, text: str) -> None:
        """Close one client, counting why; later reasons for the same client are ignored."""
        if c.reason is not None:
            return
        c.reason = reason
        self._disconnects[reason] += 1
        self._live.pop(c.id, None)
        c.pending = []
        self._update_tickers()
        self._room.set()
        c.closer = asyncio.create_task(c.ws.close(code, text))

    async def _writer(self, c: _Client) -> None:
        """Drain the client's queue: one socket write and one drain per batch, not per message.

        Server frames are unmasked, so a text frame is a short header plus the payload; framing a
        batch here and writing it as one buffer costs a tenth of sending through the protocol object
        message by message. The write happens inside ``send_context``, which checks the connection is
        still open (nothing may follow a close frame) and waits for the socket buffer to drain.
        """
        ws = c.ws
        sent = self._sent
        n_kinds = len(sent)
        room = self._room
        batched = hasattr(ws, "send_context")
        try:
            while True:
                batch = c.pending
                if not batch:
                    c.wake.clear()
                    await c.wake.wait()
                    continue
                c.pending = []
                room.set()
                if batched:
                    data = text_frames(batch)
                    async with ws.send_context():
                        ws.transport.write(data)
                    kinds = [m[1] for m in batch]
                    for kind in range(n_kinds):
                        sent[kind] += kinds.count(kind)
                else:  # pragma: no cover - websockets without send_context
                    for m in batch:
                        await ws.send(m[2], text=True)
                        sent[m[1]] += 1
        except ConnectionClosed:
            return

    # ---- HTTP --------------------------------------------------------------------------------

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/faults":
            return self._faults_request(connection, request, parse_qs(url.query))
        if url.path in ("/healthz", "/stats") and request.method != "GET":
            return _method_not_allowed(request.method, "GET")
        if url.path == "/healthz":
            return _json_response(200, {"status": "ok", "trades": self.trades})
        if url.path == "/stats":
            return _json_response(200, self.stats)
        if is_trades_path(url.path) and self.history is not None:
            if request.method != "GET":
                return _method_not_allowed(request.method, "GET")
            status, body, headers = self.history.answer(url.path, url.query)
            return _json_response(status, body, tuple(headers.items()))
        return None

    def _faults_refusal(self, request: Request) -> Response | None:
        """Why this request may not inject faults, as its response; ``None`` when it may."""
        if request.method != "POST":
            return _method_not_allowed(request.method, "POST")
        if self.faults_token is None:
            return _json_response(403, {"error": "fault injection is off; start mercury-exchange with --allow-faults"})
        origins = request.headers.get_all("Origin")
        if any(o not in self._own_origins for o in origins):
            return _json_response(403, {"error": "cross-origin request refused (the Origin is not this server)"})
        tokens = request.headers.get_all(FAULTS_TOKEN_HEADER)
        if len(tokens) != 1 or not secrets.compare_digest(tokens[0].encode(), self.faults_token.encode()):
            return _json_response(403, {"error": f"missing or wrong {FAULTS_TOKEN_HEADER} token"})
        return None

    def _faults_request(self, connection: ServerConnection, request: Request, query: dict[str, list[str]]) -> Response:
        refused = self._faults_refusal(request)
        if refused is not None:
            remote = "{}:{}".format(*connection.remote_address[:2]) if connection.remote_address else "?"
            self._request_errors["faults_refused"] = self._request_errors.get("faults_refused", 0) + 1
            self._sampler.warning(
                "faults_refused", "/faults from {} refused: {} {}", remote, refused.status_code, request.method
            )
            return refused
        kind = query.get("kind", [""])[-1]
        raw_count = query.get("count", ["1"])[-1]
        if kind not in (*KINDS, "disconnect"):
            return _json_response(400, {"error": f"kind must be one of {', '.join((*KINDS, 'disconnect'))}"})
        try:
            count = int(raw_count)
        except ValueError:
            count = 0
        if not 1 <= count <= 1_000_000:
            return _json_response(400, {"error": "count must be an integer from 1 to 1000000"})
        targets = list(self._live.values())
        if not targets:
            return _json_response(409, {"error": "no subscribed client to inject into"})
        if kind == "disconnect":
            for c in targets:
                self._disconnect(c, "on_demand", 1011, "injected disconnect")
            self._faults_done["disconnect"] += len(targets)
        else:
            for c in targets:
                c.injector.inject(kind, count)
        logger.info("injecting {} x {} into {} client(s)", count, kind, len(targets))
        return _json_response(200, {"kind": kind, "count": count, "clients": len(targets)})

    def _faults_total(self) -> dict[str, int]:
        total = dict(self._faults_done)
        for c in self._clients.values():
            for kind, n in c.injector.injected.items():
                total[kind] += n
        return total

    @property
    def stats(self) -> dict[str, Any]:
        """Counters for ``/stats`` and for tests: trades, messages sent by type, connections, faults."""
        market = self._market
        return {
            "uptime_s": round(time.monotonic() - self._started_at, 3) if self._started_at else 0.0,
            "port": self.port,
            "trades_generated": self.trades,
            "max_trades_reached": bool(market and market.exhausted),
            "api": self.config.api,
            "messages_sent": dict(zip(KIND_NAMES, self._sent, strict=True)),
            "market_trades_sent": self._trades_sent,
            "connections": {
                "current": len(self._clients),
                "subscribed": len(self._live),
                "total": self._connections_total,
            },
            "disconnects": dict(self._disconnects),
            "request_errors": dict(self._request_errors),
            "faults_injected": self._faults_total(),
            "products": {
                pid: {"last_trade_id": market.last_trade_id(i), "sequence": market.last_sequence(i)}
                for i, pid in enumerate(market.product_ids)
            }
            if market
            else {},
        }


# ---- CLI -------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="mercury-exchange",
        description="Offline Coinbase websocket feed: Exchange (matches, ticker) or Advanced Trade (market_trades).",
    )
    p.add_argument(
        "--api",
        choices=("exchange", "advanced-trade"),
        default="exchange",
        help="the protocol to serve (default exchange)",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (default 8765)")
    p.add_argument("--rate", type=float, default=50.0, help="trades per second, all products (default 50)")
    p.add_argument("--products", default=",".join(DEFAULT_PRODUCTS), help="comma-separated product ids")
    p.add_argument("--seed", type=int, default=0, help="same seed, same trade stream (default 0)")
    p.add_argument("--max-trades", type=int, default=None, help="stop trading after N trades; heartbeats go on")
    p.add_argument("--disconnect-every", type=float, default=None, metavar="S", help="close each connection after S s")
    for kind in KINDS:
        p.add_argument(f"--{kind}-rate", type=float, default=0.0, help=f"probability of a {kind} per trade message")
    p.add_argument("--reorder-window", type=int, default=5, help="a reordered message moves up to N places")
    p.add_argument(
        "--heartbeat",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send heartbeats (--no-heartbeat: accept the channel but stay silent, to test stall detection)",
    )
    p.add_argument("--subscribe-timeout", type=float, default=5.0, help="seconds a client has to subscribe")
    p.add_argument("--max-queue", type=int, default=100_000, help="messages queued per client before dropping it")
    p.add_argument(
        "--flood",
        action="store_true",
        help="benchmark mode: generate trades only as fast as the slowest subscriber reads them, so the "
        "exchange spends CPU only on what is read; trade times advance by --rate's Poisson spacing, not "
        "the wall clock, and --rate no longer paces the stream",
    )
    p.add_argument(
        "--rest-history",
        type=int,
        default=10_000,
        help="matches kept per product for GET /products/{id}/trades, Coinbase's REST trades (default 10000)",
    )
    p.add_argument("--port-file", default=None, help="also write the bound port to this file")
    p.add_argument(
        "--allow-faults",
        action="store_true",
        help=f"answer POST /faults?kind=K&count=N carrying the token in an {FAULTS_TOKEN_HEADER} header "
        "(off by default: any web page open on the machine can reach a local port)",
    )
    p.add_argument(
        "--faults-token",
        default=None,
        help=f"the token (at least {MIN_TOKEN_CHARS} printable ASCII characters, no spaces); default: "
        f"${FAULTS_TOKEN_ENV}, else generated per run and printed once at start. The variable keeps it out of ps",
    )
    return p


def config_from_args(args: argparse.Namespace) -> ExchangeConfig:
    """Raises :class:`ConfigError` with one line naming the flag."""
    values = {
        "api": args.api,
        "host": args.host,
        "port": args.port,
        "rate": args.rate,
        "products": args.products,
        "seed": args.seed,
        "max_trades": args.max_trades,
        "disconnect_every_s": args.disconnect_every,
        "duplicate_rate": args.duplicate_rate,
        "gap_rate": args.gap_rate,
        "reorder_rate": args.reorder_rate,
        "malformed_rate": args.malformed_rate,
        "reorder_window": args.reorder_window,
        "heartbeat": args.heartbeat,
        "subscribe_timeout_s": args.subscribe_timeout,
        "max_queue": args.max_queue,
        "flood": args.flood,
        "rest_history": args.rest_history,
        "allow_faults": args.allow_faults,
    }
    token_flag = "--faults-token"
    if args.faults_token is not None:
        values["faults_token"] = args.faults_token
    elif args.allow_faults and os.environ.get(FAULTS_TOKEN_ENV):
        values["faults_token"] = os.environ[FAULTS_TOKEN_ENV]
        token_flag = FAULTS_TOKEN_ENV
    flags = {
        "disconnect_every_s": "--disconnect-every",
        "subscribe_timeout_s": "--subscribe-timeout",
        "faults_token": token_flag,
    }
    try:
        return ExchangeConfig(**values)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        flag = flags.get(field, "--" + field.replace("_", "-")) if field else "options"
        msg = err["msg"].removeprefix("Value error, ")
        given = err.get("input")
        if field == "faults_token":
            raise ConfigError(
                f"{flag}: expected at least {MIN_TOKEN_CHARS} printable ASCII characters, no spaces"
            ) from None
        if field and isinstance(given, (str, int, float)):
            raise ConfigError(f"{flag}={given!r}: {msg}") from None
        raise ConfigError(f"{flag}: {msg}") from None


async def _serve(cfg: ExchangeConfig, port_file: str | None) -> int:
    server = ExchangeServer(cfg)
    try:
        port = await server.start()
    except OSError as exc:
        print(f"mercury-exchange: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if port_file:
        # Written before the announcement and renamed into place, so a reader never sees it half-written.
        tmp = f"{port_file}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(f"{port}\n")
            os.replace(tmp, port_file)
        except OSError as exc:
            print(f"mercury-exchange: cannot write --port-file {port_file}: {exc.strerror or exc}", file=sys.stderr)
            await server.stop()
            return 1
    print(f"mercury-exchange listening on ws://{cfg.host}:{port}", flush=True)
    if server.faults_token is not None:
        given = cfg.faults_token is not None
        token = f"the token given in --faults-token or ${FAULTS_TOKEN_ENV}" if given else server.faults_token
        print(f"mercury-exchange faults: POST /faults with {FAULTS_TOKEN_HEADER}: {token}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("signal received: stopping")
    await server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        common = build_settings(CommonSettings)
    except ConfigError as exc:
        print(f"mercury-exchange: {exc}", file=sys.stderr)
        return 2
    setup_logging("exchange", common.LOG_LEVEL, common.LOG_JSON)
    cfg = cfg.model_copy(update={"status_interval_s": common.STATUS_INTERVAL_S})
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is not installed on Windows
        runner = asyncio.Runner()
    try:
        with runner:
            return runner.run(_serve(cfg, args.port_file))
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 0


if __name__ == "__main__":
    sys.exit(main())
