"""P1: Coinbase WebSocket ingest → validated, stamped events → framed TCP to P2 (``mercury-p1``)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry

from mercurystream.p1.backfill import Backfiller, BackfillPlanner, Outcome, rest_url_for
from mercurystream.p1.config import P1Settings
from mercurystream.p1.feed import CoinbaseFeed
from mercurystream.p1.feeds import make_adapter
from mercurystream.p1.gaps import IMPLAUSIBLE_JUMP, Gap, GapTracker, control_event
from mercurystream.p1.metrics import P1Metrics
from mercurystream.p1.nats_sink import NatsSink
from mercurystream.p1.pipeline import IngestPipeline
from mercurystream.p1.sink import TcpSink
from mercurystream.shared.clip import join_clipped
from mercurystream.shared.clock import now_us
from mercurystream.shared.config import load_settings
from mercurystream.shared.logger import setup_logging
from mercurystream.shared.runtime import tune_gc

SUBSCRIBED_MAX = 512
"""Characters of the product lists in P1's status line; the rest is counted (``… +N more``)."""


class P1App:
    """Feed → pipeline → sink, the metrics endpoint and the status line, with one start/stop."""

    def __init__(
        self, settings: P1Settings, registry: CollectorRegistry | None = None, metrics_host: str | None = None
    ) -> None:
        self.settings = settings
        # Until a P1_METRICS_HOST setting exists, bind loopback like P2's HOST default does.
        self.metrics_host = metrics_host or getattr(settings, "P1_METRICS_HOST", "127.0.0.1")
        nats = getattr(settings, "P1_SINK", "tcp") == "nats"
        self.metrics = P1Metrics(registry, settings.MAX_PRODUCT_LABELS, sink_target="nats" if nats else "p2")
        self.pipeline = IngestPipeline(feed=settings.FEED_API)
        self.sink: TcpSink | NatsSink
        if nats:
            self.sink = NatsSink(
                settings.NATS_URL,
                settings.stream_settings(),
                settings.P1_BUFFER_EVENTS,
                settings.P1_BUFFER_BYTES,
                settings.BACKOFF_MAX,
                settings.MAX_FRAME_BYTES,
                self.metrics,
                self.pipeline.venue,
                round_s=getattr(settings, "NATS_ROUND_MS", 0.0) / 1000,
            )
        else:
            self.sink = TcpSink(
                settings.P2_HOST,
                settings.P2_PORT,
                settings.P1_BUFFER_EVENTS,
                settings.BACKOFF_MAX,
                settings.MAX_FRAME_BYTES,
                self.metrics,
                buffer_bytes=settings.P1_BUFFER_BYTES,
            )
        options = {"signer": settings.signer()} if settings.FEED_API == "advanced-trade" else {}
        self.feed = CoinbaseFeed(
            settings.COINBASE_WS_URL,
            settings.SYMBOLS,
            settings.FEED_CHANNEL,
            settings.BACKOFF_MAX,
            self._on_trades,
            self.metrics,
            max_size=settings.MAX_FRAME_BYTES,
            adapter=make_adapter(settings.FEED_API, settings.SYMBOLS, settings.FEED_CHANNEL, **options),
        )
        self.gaps: GapTracker | None = None
        self.backfiller: Backfiller | None = None
        if settings.FEED_API == "exchange" and settings.FEED_CHANNEL == "matches":
            self._wire_gaps(settings)
        self.metrics_port: int | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._invalid_counter = self.metrics.validation_failures_total
        self._publish = self.sink.publish

    def _on_trades(self, trades: list[dict[str, Any]]) -> None:
        payloads, invalid = self.pipeline.process(trades, now_us())
        if invalid:
            self._invalid_counter.inc(invalid)
        self._publish(payloads)

    def _wire_gaps(self, s: P1Settings) -> None:
        """Gap notices on the ``matches`` channel (p1/gaps.py) and, with ``BACKFILL``, their backfill."""
        m = self.metrics
        implausible = m.bad_trade_ids_total.labels(IMPLAUSIBLE_JUMP)

        def on_jump(what: str) -> None:
            (implausible if what == IMPLAUSIBLE_JUMP else m.gap_rebaselines_total).inc()

        self.gaps = self.feed.protocol.gaps = GapTracker(s.SYMBOLS, max_jump=s.GAP_MAX_IDS, on_jump=on_jump)
        self.feed.on_gaps = self._on_gaps
        if s.BACKFILL:
            rate = s.BACKFILL_RATE
            requests = self.metrics.backfill_requests_total
            self.backfiller = Backfiller(
                s.COINBASE_REST_URL or rest_url_for(s.COINBASE_WS_URL),
                self._on_backfilled,
                self._on_backfill_outcome,
                rate=rate,
                burst=min(15.0, max(1.0, 1.5 * rate)),
                planner=BackfillPlanner(max_queue=s.BACKFILL_QUEUE_GAPS, max_ids=s.BACKFILL_MAX_IDS),
                on_request=lambda result: requests.labels(result).inc(),
            )

    def _on_gaps(self, gaps: list[Gap]) -> None:
        """Forward one ``gap`` control event per confirmed gap, count it, and queue its backfill."""
        now = now_us()
        p = self.pipeline
        self._publish([control_event(g, p.venue, p.feed, now) for g in gaps])
        m = self.metrics
        for g in gaps:
            m.gaps_total.labels(g.source).inc()
            m.gap_ids_total.labels(g.source).inc(g.size)
            if self.backfiller is not None:
                m.backfill_ids_total.labels("requested").inc(g.size)
                self.backfiller.submit(g)
        if self.backfiller is not None:
            m.backfill_pending.set(len(self.backfiller.planner))

    def _on_backfilled(self, trades: list[dict[str, Any]]) -> None:
        payloads, invalid = self.pipeline.process(trades, now_us(), backfilled=True)
        if invalid:
            self._invalid_counter.inc(invalid)
        self._publish(payloads)

    def _on_backfill_outcome(self, outcome: Outcome) -> None:
        """After a gap's last recovered trades: the ``backfill`` control event with its counts."""
        p = self.pipeline
        self._publish([control_event(outcome.gap, p.venue, p.feed, now_us(), recovered=outcome.recovered)])
        m = self.metrics
        m.backfill_ids_total.labels("recovered").inc(outcome.recovered)
        m.backfill_ids_total.labels("unrecoverable").inc(outcome.unrecoverable)
        if self.backfiller is not None:
            m.backfill_pending.set(len(self.backfiller.planner))

    async def start(self) -> None:
        s = self.settings
        self.metrics_port = self.metrics.serve(s.P1_METRICS_PORT, self.metrics_host)
        logger.info(
            "P1 starting: feed {} ({}) channel={} auth={} symbols={} → {}; metrics on {}:{}",
            s.COINBASE_WS_URL,
            s.FEED_API,
            s.FEED_CHANNEL if s.FEED_API == "exchange" else "market_trades",
            "jwt" if s.COINBASE_API_KEY_NAME else "none",
            ",".join(s.SYMBOLS),
            self.sink_target(),
            self.metrics_host,
            self.metrics_port,
        )
        await self.sink.start()
        if self.backfiller is not None:
            await self.backfiller.start()
            logger.info("P1 backfill on: missing trade ids from {}", self.backfiller.base_url)
        await self.feed.start()
        self._status_task = asyncio.create_task(self._status_loop(), name="p1-status")

    async def stop(self) -> None:
        """Stop reading the feed, flush what is held to P2 (bounded), then close the endpoint."""
        if self._status_task is not None:
            self._status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._status_task
            self._status_task = None
        await self.feed.stop()
        if self.backfiller is not None:
            await self.backfiller.stop()
        await self.sink.stop(self.settings.P1_SHUTDOWN_TIMEOUT_S)
        logger.info(self.status_line())
        self.metrics.close()

    @property
    def _sink_label(self) -> str:
        return "nats" if isinstance(self.sink, NatsSink) else "p2"

    def sink_target(self) -> str:
        """Where events go: ``P2 host:port``, or ``JetStream <url> stream <name>``."""
        if isinstance(self.sink, NatsSink):
            return f"JetStream {self.sink.target}"
        return f"P2 {self.sink.host}:{self.sink.port}"

    def status_line(self) -> str:
        b = self.sink.buffer
        proto = self.feed.protocol
        line = (
            f"P1 | msgs={proto.messages} valid={self.pipeline.valid} invalid={self.pipeline.invalid} "
            f"forwarded={b.forwarded} acked={b.acked} buffered={b.held} dropped={b.dropped_total} "
            f"reconnects ws={self.feed.reconnects} {self._sink_label}={self.sink.reconnects} "
            f"subscribed={join_clipped(sorted(proto.subscribed_products), ',', SUBSCRIBED_MAX) or '-'}"
        )
        if proto.invalid:
            line += f" invalid_products={join_clipped(proto.invalid, ',', SUBSCRIBED_MAX)}"
        if self.gaps is not None and any(self.gaps.gaps.values()):
            line += f" gaps={sum(self.gaps.gaps.values())} gap_ids={sum(self.gaps.ids.values())}"
            if self.backfiller is not None:
                c = self.backfiller.planner.counts
                line += f" backfill=recovered:{c['recovered']},unrecoverable:{c['unrecoverable']}"
        return line

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.STATUS_INTERVAL_S)
            logger.info(self.status_line())


async def run(settings: P1Settings) -> int:
    """Run until SIGINT or SIGTERM; returns the process exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = P1App(settings)
    try:
        await app.start()
    except (OSError, ValueError) as exc:  # binding the endpoint: OSError, or UnicodeError for a name no resolver takes
        logger.error("P1 cannot start: {}: {}", type(exc).__name__, exc)
        await app.stop()
        return 1
    stopped = asyncio.create_task(stop.wait())
    gave_up = asyncio.create_task(app.feed.gave_up.wait())
    await asyncio.wait((stopped, gave_up), return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    gave_up.cancel()
    fatal = app.feed.protocol.fatal
    if fatal is not None:
        logger.error("P1 cannot run: {}", fatal)
        await app.stop()
        return 2
    logger.info("P1 stopping: flushing what is held for up to {:g} s", settings.P1_SHUTDOWN_TIMEOUT_S)
    await app.stop()
    return 0


def main() -> None:
    summary = "P1: Coinbase WebSocket ingest → framed TCP to P2, or batches to NATS JetStream (P1_SINK=nats)."
    settings = load_settings(P1Settings, "mercury-p1", sys.argv[1:], summary)
    setup_logging("p1", settings.LOG_LEVEL, settings.LOG_JSON)
    tune_gc()
    # The standard loop, not uvloop: measured here, uvloop added ~10 MB of RSS to P1 for ~2% throughput,
    # since the websockets parser, not the loop, is P1's cost.
    sys.exit(asyncio.run(run(settings)))


if __name__ == "__main__":
    main()
