"""P2: the TCP ingest, the bus, the consumers, the HTTP endpoint and the status lines, as one app.

:class:`P2App` owns the lifecycle; :func:`main` (``mercury-p2``) adds configuration, logging,
uvloop and signal handling around it (SIGUSR1 dumps the flight recorder). Consumers are built by
factories ``(bus, settings, metrics)`` so tests and tools can run P2 with any subset;
:func:`default_consumers` is the production set.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry

from mercurystream.p2.bus import QUEUE_BYTES, QUEUE_FULL, Bus
from mercurystream.p2.config import P2Settings
from mercurystream.p2.consumer import CONSUMER_ERROR, Consumer, SyncConsumers
from mercurystream.p2.control import REFUSED_DISABLED, REFUSED_UNAVAILABLE, ControlServer, LoopHandoff
from mercurystream.p2.dedupe import Dedupe
from mercurystream.p2.flight_recorder import MANUAL, Capture, DumpRefused
from mercurystream.p2.metrics import LabelledRegistry, P2Metrics
from mercurystream.p2.nats_source import NatsSource
from mercurystream.p2.server import TcpSource
from mercurystream.shared.config import load_settings
from mercurystream.shared.logger import setup_logging
from mercurystream.shared.runtime import pin_mmap_threshold, tune_gc

ConsumerFactory = Callable[[Bus, P2Settings, P2Metrics], Consumer]

DRAIN_TIMEOUT_S = 5.0


def default_consumers(settings: P2Settings) -> list[ConsumerFactory]:
    """The production consumers for these settings.

    Imported here, not at module level, so a consumer module that is missing or broken fails when
    P2 is wired with it, not whenever anything imports this module.
    """
    from mercurystream.p2.consumers import (
        HealthConsumer,
        SlowConsumer,
        VolatilityConsumer,
        VolumeConsumer,
        VwapConsumer,
    )

    factories: list[ConsumerFactory] = [VwapConsumer, VolatilityConsumer, VolumeConsumer, HealthConsumer]
    if settings.ENABLE_SLOW:
        factories.append(SlowConsumer)
    if settings.FORENSICS:
        from mercurystream.p2.forensics import ForensicsConsumer

        factories.append(ForensicsConsumer)
    if settings.RECORD:
        from mercurystream.p2.recorder import RecorderConsumer

        factories.append(RecorderConsumer)
    return factories


class P2App:
    """Bus, TCP source, consumers, ``/metrics`` and ``POST /incidents``, and the periodic status lines."""

    def __init__(
        self,
        settings: P2Settings,
        registry: CollectorRegistry | None = None,
        consumers: Sequence[ConsumerFactory] | None = None,
    ) -> None:
        self.settings = settings
        nats = getattr(settings, "P2_SOURCE", "tcp") == "nats"
        if nats and registry is None:
            registry = LabelledRegistry({"shard": settings.P2_SHARD})
        self.metrics = P2Metrics(registry, settings.MAX_PRODUCT_LABELS)
        m = self.metrics
        self._drop_counters: dict[str, Any] = {}
        self.dedupe = Dedupe(settings.DUPLICATE_LRU_MAX, settings.DEDUPE_IDS, detector=settings.FORENSICS)
        self.bus = Bus(
            on_drop=self._on_drop,
            queue_bytes=settings.BUS_QUEUE_BYTES,
            judge=self.dedupe.judge,
            pause_bytes=settings.BUS_PAUSE_BYTES,
        )
        factories = default_consumers(settings) if consumers is None else consumers
        self.consumers: list[Consumer] = [make(self.bus, settings, m) for make in factories]
        self.source: TcpSource | NatsSource
        if nats:
            from mercurystream.p2.nats_source import Backlog, waited_on

            self.source = NatsSource(
                settings.NATS_URL,
                settings.stream_settings(),
                settings.shard(),
                self.bus,
                m,
                waited_on(self.consumers),
                Backlog(self.bus, self.consumers),
                max_frame_bytes=settings.MAX_FRAME_BYTES,
                fetch_batch=settings.NATS_FETCH_BATCH,
                ack_wait_s=settings.NATS_ACK_WAIT_S,
                max_ack_pending=settings.NATS_MAX_ACK_PENDING,
            )
        else:
            self.source = TcpSource(
                settings.HOST,
                settings.PORT,
                self.bus,
                m,
                settings.MAX_FRAME_BYTES,
                max_connections=settings.MAX_CONNECTIONS,
                idle_timeout_s=settings.IDLE_TIMEOUT_S,
                partial_timeout_s=settings.PARTIAL_TIMEOUT_S,
                max_partial_bytes_total=settings.MAX_PARTIAL_BYTES_TOTAL,
            )
        self.source.max_future_skew_s = settings.MAX_FUTURE_SKEW_S
        self.sync_consumers = SyncConsumers([c for c in self.consumers if not c.waits])
        """Every consumer that never waits, on one task (the recorder too); the demo's slow one has its own."""
        self._runners: list[Consumer | SyncConsumers] = [self.sync_consumers, *(c for c in self.consumers if c.waits)]
        m.consumer_events_total.source = self._processed
        m.consumer_received_total.source = self._received
        m.consumer_dropped_total.source = self._dropped
        m.budget_evictions_total.source = self._budget_evictions
        self._depth_gauges: dict[str, Any] = {}
        for sub in self.bus.subscriptions:
            self._drop_counter(sub.name)
            self._depth_gauges[sub.name] = m.queue_depth.labels(sub.name)
        self.metrics_port: int | None = None
        self.control: ControlServer | None = None
        self._handoff: LoopHandoff | None = None
        self._dumps_open = False
        self._status_task: asyncio.Task[None] | None = None
        self._started = False

    def _drop_counter(self, name: str) -> Any:
        counter = self._drop_counters.get(name)
        if counter is None:
            counter = self._drop_counters[name] = self.metrics.drops_total.labels(name)
        return counter

    def _on_drop(self, name: str, n: int) -> None:
        self._drop_counter(name).inc(n)

    def _processed(self) -> dict[str, int]:
        """Each consumer's passed-on count, for ``mercurystream_consumer_events_total`` at scrape time."""
        return {c.name: c.passed_on for c in self.consumers}

    def _received(self) -> dict[str, int]:
        """Every event the bus offered each consumer: what it took, dropped and still queues."""
        return {c.name: (s := c.subscription).delivered + s.dropped + s.depth for c in self.consumers}

    def _dropped(self) -> dict[tuple[str, str], int]:
        """Each consumer's drops by reason: the bus's drop-oldest, and the consumer's own."""
        out: dict[tuple[str, str], int] = {}
        for c in self.consumers:
            sub = c.subscription
            out[(c.name, QUEUE_FULL)] = sub.dropped - sub.dropped_bytes
            out[(c.name, QUEUE_BYTES)] = sub.dropped_bytes
            out[(c.name, CONSUMER_ERROR)] = 0
            for reason, n in c.dropped.items():
                out[(c.name, reason)] = n
        return out

    def _budget_evictions(self) -> dict[str, int]:
        """What each memory bound let go, oldest first (``mercurystream_budget_evictions_total``)."""
        rings = [r for c in self.consumers if (r := getattr(c, "recorder", None)) is not None]
        return {
            "bus_queue_bytes": sum(s.dropped_bytes for s in self.bus.subscriptions),
            "flight_ring_bytes": sum(getattr(r, "evicted_bytes_bound", 0) for r in rings),
            "dedupe_ids": self.dedupe.evicted_ids,
            "window_trades": sum(getattr(getattr(c, "window", None), "trimmed", 0) for c in self.consumers),
            "partial_bytes_total": (
                self.source.closed_by_reason["partial_budget"] if isinstance(self.source, TcpSource) else 0
            ),
        }

    @property
    def port(self) -> int:
        return self.source.port

    async def start(self) -> None:
        """Consumers first, so nothing published waits for a consumer; then metrics, then the port.

        If any step fails (a port in use), :meth:`stop` still undoes the steps that succeeded.
        """
        s = self.settings
        self._started = True
        await self.start_consumers()
        self._handoff = LoopHandoff(asyncio.get_running_loop())
        token = s.P2_CONTROL_TOKEN.get_secret_value() if s.P2_CONTROL_TOKEN is not None else None
        self.control = ControlServer(s.HOST, s.METRICS_PORT, self.metrics, self._dump_over_http, token)
        self.control.start()
        self.metrics_port = self.control.port
        self._dumps_open = True
        await self.source.start()
        self._status_task = asyncio.create_task(self._report_status(), name="p2-status")
        names = ", ".join(c.name for c in self.consumers) or "none"
        if isinstance(self.source, NatsSource):
            where = f"reading shard {self.source.shard} of {s.NATS_STREAM} at {s.NATS_URL}"
        else:
            where = f"listening on tcp://{s.HOST}:{self.source.port}"
        logger.info(f"P2 {where}, metrics on http://{s.HOST}:{self.metrics_port}/metrics, consumers: {names}")

    async def stop(self, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Stop accepting, let the consumers drain and flush, stop serving metrics.

        The consumers' tasks stop concurrently, each draining its queues within ``drain_timeout_s``
        (:meth:`Consumer.stop`, :meth:`SyncConsumers.stop`), so the whole drain is bounded by one
        timeout, and a consumer that gives up its backlog on stop (the slow demo) does not hold the
        others.
        """
        if not self._started:
            return
        self._started = False
        self._dumps_open = False
        await self.source.stop()
        await self.stop_consumers(drain_timeout_s)
        if isinstance(self.source, NatsSource):
            await self.source.close()  # acknowledges what the consumers finished while draining
        if self._status_task is not None:
            self._status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._status_task
        self.report_status()
        if self.control is not None:
            control, self.control = self.control, None
            await asyncio.to_thread(control.stop)
        logger.info(f"P2 stopped after {self.source.events} events")

    def dump(self, reason: str, *, respect_cooldown: bool = False, source: str = MANUAL) -> Capture:
        """On the loop's thread: have the forensics consumer dump its ring now; raises :class:`DumpRefused`."""
        if not self._dumps_open:
            raise DumpRefused(REFUSED_UNAVAILABLE, "P2 is not running (starting or stopping)")
        forensics = next((c for c in self.consumers if callable(getattr(c, "dump", None))), None)
        if forensics is None:
            raise DumpRefused(REFUSED_DISABLED, "the forensics consumer is off (FORENSICS=false)")
        cap = forensics.dump(reason, respect_cooldown=respect_cooldown, source=source)
        logger.info(
            f"incident {cap.id} (manual, {source}): {reason!r}, {cap.pre_count} events from the ring "
            f"(pre_bound={cap.pre_bound}), queued for writing"
        )
        return cap

    def _dump_over_http(self, reason: str, respect_cooldown: bool) -> dict[str, Any]:
        """On an HTTP thread: hand the request to the loop and wait for the id (or the refusal)."""
        if self._handoff is None:
            raise DumpRefused(REFUSED_UNAVAILABLE, "P2 is not running (starting or stopping)")
        cap = self._handoff.call(lambda: self.dump(reason, respect_cooldown=respect_cooldown, source="http"))
        incidents_dir = getattr(self.settings, "INCIDENTS_DIR", None)
        return {
            "incident_id": cap.id,
            "type": MANUAL,
            "reason": reason,
            "events": cap.pre_count,
            "pre_bound": cap.pre_bound,
            "path": str(incidents_dir / cap.id) if incidents_dir is not None else None,
        }

    def dump_on_signal(self, signame: str = "SIGUSR1") -> None:
        """The SIGUSR1 handler (on the loop's thread): dump, ignoring the cooldown; a refusal is logged and counted."""
        try:
            self.dump(signame, source=signame)
        except DumpRefused as exc:
            self.metrics.incident_requests_refused_total.labels(reason=exc.reason).inc()
            logger.warning(f"{signame}: no incident dump ({exc.reason}): {exc}")

    async def start_consumers(self) -> None:
        """Start the consumers' tasks (without the port or ``/metrics``: profiling drives them too)."""
        for r in self._runners:
            await r.start()

    async def stop_consumers(self, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        runners = self._runners
        results = await asyncio.gather(*(r.stop(drain_timeout_s) for r in runners), return_exceptions=True)
        for r, result in zip(runners, results, strict=True):
            if isinstance(result, BaseException):
                name = r.name if isinstance(r, Consumer) else "consumers"
                logger.opt(exception=result).error(f"{name}: failed to stop cleanly")

    def drained(self) -> bool:
        """No queued events and every consumer has finished the batches it took."""
        if not self.bus.drained():
            return False
        return all(c.processed >= c.subscription.delivered for c in self.consumers)

    async def wait_drained(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.drained():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def report_status(self) -> None:
        """One status line per consumer, and the queue gauges."""
        m = self.metrics
        subs = self.bus.subscriptions
        m.subscribers.set(len(subs))
        gauges = self._depth_gauges
        for sub in subs:
            gauge = gauges.get(sub.name)
            if gauge is None:
                gauge = gauges[sub.name] = m.queue_depth.labels(sub.name)
            gauge.set(sub.depth)
        shard = f"[shard {self.source.shard}] " if isinstance(self.source, NatsSource) else ""
        logger.info(f"{shard}{'INGEST':<10} | {self.source.status_line()}")
        for c in self.consumers:
            try:
                line = c.status()
            except Exception:
                logger.exception(f"{c.name}: status line failed")
                continue
            logger.info(f"{shard}{line}")

    async def _report_status(self) -> None:
        interval = self.settings.STATUS_INTERVAL_S
        while True:
            await asyncio.sleep(interval)
            self.report_status()


async def serve(settings: P2Settings) -> int:
    """Run P2 until SIGINT or SIGTERM; the process exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = P2App(settings)
    loop.add_signal_handler(signal.SIGUSR1, app.dump_on_signal)
    try:
        await app.start()
    except OSError as exc:
        logger.error(f"P2 cannot start: {exc}")
        await app.stop()
        return 1
    await stop.wait()
    logger.info("P2 stopping: no new connections, draining the consumers")
    await app.stop()
    return 0


SWITCH_INTERVAL_S = 0.0005
"""How long a thread waiting for the GIL lets the running one go on (CPython's default: 5 ms)."""


def tune_runtime() -> None:
    """Interpreter settings for one busy loop thread beside a few I/O threads.

    Garbage collection as every pipeline service (``shared.runtime.tune_gc``): here the default
    threshold ran a collection every couple of batches for nothing (about 0.2 µs an event).

    GIL switching: the recorder's and the bundle writer's threads need the GIL for a moment per
    write, and with the loop busy each of those moments waited up to 5 ms, which throttled the
    recorder below the ingest rate at saturation. The loop pays only when a thread asks, so a
    shorter interval costs nothing while the threads are idle.

    Large events (a line of hundreds of KB) go to their own mappings whatever came before
    (``shared.runtime.pin_mmap_threshold``), so the memory budget's byte bounds hold in RSS too.
    """
    tune_gc()
    pin_mmap_threshold()
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (cheaper reads and callbacks), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main() -> None:
    summary = (
        "P2: framed TCP from P1 (or a shard of a NATS JetStream stream, P2_SOURCE=nats) → bus → "
        "VWAP, volatility, volume, health, forensics, recorder."
    )
    settings = load_settings(P2Settings, "mercury-p2", sys.argv[1:], summary)
    setup_logging("p2", settings.LOG_LEVEL, settings.LOG_JSON)
    tune_runtime()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        code = runner.run(serve(settings))
    sys.exit(code)


if __name__ == "__main__":
    main()
