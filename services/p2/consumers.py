"""P2's consumers: the analytics (VWAP, volatility, volume), health and the slow demo consumer.

Each is a :class:`~mercurystream.p2.consumer.Consumer`: a plain ``handle(batch)`` with a status
line. The forensics consumer and the recorder live in modules of their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from mercurystream.p2.analytics import (
    RollingQuantile,
    TradeFilter,
    VolatilityWindow,
    VolumeWindow,
    VwapWindow,
)
from mercurystream.p2.analytics.volume import quote_currency
from mercurystream.p2.batch import Batch
from mercurystream.p2.bus import Bus
from mercurystream.p2.config import P2Settings
from mercurystream.p2.consumer import SHUTDOWN, Consumer
from mercurystream.p2.metrics import P2Metrics
from mercurystream.p2.rule import run
from mercurystream.shared.clip import STATUS_MAX, join_clipped, preview
from mercurystream.shared.clock import now_us
from mercurystream.shared.logger import LogSampler
from mercurystream.shared.schema import CONTROL

AGE_SAMPLES = 10_000
"""The VWAP consumer's age p99 is over the last this many events."""

AGE_REFRESH_US = 1_000_000
"""The age p99 gauge is refreshed at most this often (a quantile read may sort the window)."""


def _fmt_price(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if abs(v) >= 1 else f"{v:.6g}"


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.2f}ms" if ms < 1 else f"{ms:.0f}ms"


def _fmt_quote(amount: float, quote: str) -> str:
    """``$1.2M`` for USD, ``1.2M EUR`` for any other quote currency (``quote_currency``)."""
    text = f"{amount:.0f}"
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if round(amount / div, 1) >= 1:
            text = f"{amount / div:.1f}{suffix}"
            break
    return f"${text}" if quote == "USD" else f"{text} {quote}"


class _SkipReporter:
    """Moves skip counts from the analytics' plain dicts into the metric, once per batch.

    The arithmetic classes only count; this turns new counts into
    ``analytics_skipped_total{consumer,reason}`` increments and a sampled log line with an
    example event, so a flood of bad input is counted exactly and logged a few times.
    """

    def __init__(self, consumer: str, metrics: P2Metrics, trade_filter: TradeFilter, *window_skips: dict[str, int]):
        self._consumer = consumer
        self._counter = metrics.analytics_skipped_total
        self._filter = trade_filter
        self._sources = (trade_filter.skipped, *window_skips)
        self._reported = [dict(src) for src in self._sources]
        self._children: dict[str, Any] = {}
        self._sampler = LogSampler()

    def flush(self) -> None:
        for src, reported in zip(self._sources, self._reported, strict=True):
            if src == reported:
                continue
            for reason, n in src.items():
                new = n - reported.get(reason, 0)
                if not new:
                    continue
                reported[reason] = n
                child = self._children.get(reason)
                if child is None:
                    child = self._children[reason] = self._counter.labels(self._consumer, reason)
                child.inc(new)
                if reason != CONTROL and self._sampler.should_log(reason):
                    example = self._filter.last_rejected.get(reason)
                    tail = f"; e.g. {preview(example)}" if example is not None else ""
                    logger.warning(f"{self._consumer}: {new} event(s) not counted ({reason}){tail}")


class _AnalyticsConsumer(Consumer):
    """A consumer that counts each trade once: its own :class:`TradeFilter` in front of its window."""

    def __init__(self, bus: Bus, settings: P2Settings, metrics: P2Metrics) -> None:
        super().__init__(bus, settings.BUS_QUEUE_EVENTS)
        self.settings = settings
        self.metrics = metrics
        self.trade_filter = TradeFilter(settings.DUPLICATE_LRU_MAX)


class VwapConsumer(_AnalyticsConsumer):
    """Rolling VWAP per product over ``VWAP_WINDOW_S`` of exchange time, and P1→consumer age p99.

    Age is this consumer's wall clock when it takes the batch (read once per batch) minus each
    event's ``ingest_ts_us`` (``ingest_ts_ms`` when an older recording lacks it): it includes
    P1's send buffer, the wire, P2's parse and the bus queue.
    """

    name = "vwap"
    label = "VWAP"

    def __init__(
        self, bus: Bus, settings: P2Settings, metrics: P2Metrics, *, clock_us: Callable[[], int] = now_us
    ) -> None:
        super().__init__(bus, settings, metrics)
        self.window = VwapWindow(settings.VWAP_WINDOW_S, settings.WINDOW_TRADES)
        self.ages_us = RollingQuantile(AGE_SAMPLES)
        self._clock_us = clock_us
        self._age_due_us = 0
        self._gauges = metrics.vwap
        self._skips = _SkipReporter(self.name, metrics, self.trade_filter, self.window.skipped)

    def handle(self, batch: Batch) -> None:
        now = self._clock_us()
        ingest_us = batch.ingest_us
        if None not in ingest_us:
            self.ages_us.add_differences(now, ingest_us)
        else:
            self.ages_us.add_differences(now, [us for us in ingest_us if us is not None])
            self.ages_us.add_differences(
                now // 1000 * 1000,
                [ms * 1000 for us, ms in zip(ingest_us, batch.ingest_ms, strict=True) if us is None and ms is not None],
            )
        trades = self.trade_filter.accept(batch)
        if len(trades):
            window = self.window
            vwap = window.vwap
            gauges = self._gauges
            for pid, p in trades.by_product().items():
                run(window, pid, (p.prices, p.sizes, p.times))
                v = vwap(pid)
                if v is not None:
                    gauges.set(pid, v)
            for pid in window.trim():
                v = vwap(pid)
                if v is not None:
                    gauges.set(pid, v)
        self._skips.flush()
        if now >= self._age_due_us:
            self._age_due_us = now + AGE_REFRESH_US
            self.age_p99_ms()

    def age_p99_ms(self) -> float | None:
        """The p99 age in milliseconds (also sets the gauge); ``None`` before any event."""
        p99 = self.ages_us.quantile(0.99)
        if p99 is None:
            return None
        ms = p99 / 1000.0
        self.metrics.age_p99_ms.set(ms)
        return ms

    def status_line(self) -> str:
        parts = [f"{pid}={_fmt_price(v)}" for pid, v in self.window.snapshot().items()]
        age = f"age p99={_fmt_ms(self.age_p99_ms())}"
        return " | ".join([p for p in (join_clipped(parts, width=STATUS_MAX - 64),) if p] + [age])


class VolatilityConsumer(_AnalyticsConsumer):
    """Annualized volatility per product from the last ``VOL_WINDOW`` trades (see :class:`VolatilityWindow`)."""

    name = "volatility"
    label = "VOLATILITY"

    def __init__(self, bus: Bus, settings: P2Settings, metrics: P2Metrics) -> None:
        super().__init__(bus, settings, metrics)
        self.window = VolatilityWindow(settings.VOL_WINDOW)
        self._gauges = metrics.volatility
        self._skips = _SkipReporter(self.name, metrics, self.trade_filter, self.window.skipped)

    def handle(self, batch: Batch) -> None:
        trades = self.trade_filter.accept(batch)
        if len(trades):
            window = self.window
            volatility = window.volatility
            gauges = self._gauges
            for pid, p in trades.by_product().items():
                run(window, pid, (p.prices, p.times))
                v = volatility(pid)
                if v is not None:
                    gauges.set(pid, v)
        self._skips.flush()

    def status_line(self) -> str:
        parts = [f"{pid}={'-' if v is None else f'{v * 100:.1f}%'}" for pid, v in self.window.snapshot().items()]
        return join_clipped(parts) if parts else "waiting for trades"


class VolumeConsumer(_AnalyticsConsumer):
    """Notional in the quote currency and trade count per product over the last 60 s of the stream's exchange time.

    The gauge carries the quote currency as a ``quote`` label (``BTC-EUR``'s is EUR), one value per
    product, so the label adds no series; the status line shows it (``$`` for USD).
    """

    name = "volume"
    label = "VOLUME"
    window_s = 60.0

    def __init__(self, bus: Bus, settings: P2Settings, metrics: P2Metrics) -> None:
        super().__init__(bus, settings, metrics)
        self.window = VolumeWindow(self.window_s, settings.WINDOW_TRADES)
        self._notional = metrics.volume_quote_1m
        self._trades = metrics.trades_1m
        self._skips = _SkipReporter(self.name, metrics, self.trade_filter, self.window.skipped)

    def handle(self, batch: Batch) -> None:
        trades = self.trade_filter.accept(batch)
        if len(trades):
            run(self.window, None, (trades.product_ids, trades.prices, trades.sizes, trades.times))
            self.window.evict()
            self.window.trim()
            self._set(self.window.figures())
        self._skips.flush()

    def _publish(self) -> dict[str, tuple[float, int]]:
        """Every product's figures: the stream's clock moves a quiet product's window too."""
        snap = self.window.snapshot()
        self._set(snap)
        return snap

    def _set(self, snap: dict[str, tuple[float, int]]) -> None:
        usd_set = self._notional.set
        trades_set = self._trades.set
        for pid, (usd, n) in snap.items():
            usd_set(pid, usd)
            trades_set(pid, n)

    def status_line(self) -> str:
        snap = self._publish()
        parts = [f"{pid}={_fmt_quote(amount, quote_currency(pid))}/min({n}tx)" for pid, (amount, n) in snap.items()]
        return join_clipped(parts) if parts else "waiting for trades"


class HealthConsumer(Consumer):
    """Events per second it saw, bus drops, subscribers and every subscriber's queue depth.

    Events/s is measured over ``STATUS_INTERVAL_S`` with a monotonic clock read once per batch
    (and on each status), so a silent stream shows 0 after one interval rather than its last rate.
    """

    name = "health"
    label = "HEALTH"

    def __init__(
        self,
        bus: Bus,
        settings: P2Settings,
        metrics: P2Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(bus, settings.BUS_QUEUE_EVENTS)
        self.bus = bus
        self.metrics = metrics
        self.interval_s = settings.STATUS_INTERVAL_S
        self._clock = clock
        self._since = clock()
        self._count = 0
        self.eps: float | None = None
        """Events/s over the last complete interval; ``None`` until one has passed."""

    def handle(self, batch: Batch) -> None:
        self._count += len(batch)
        now = self._clock()
        if now - self._since >= self.interval_s:
            self._roll(now)

    def _roll(self, now: float) -> None:
        self.eps = self._count / (now - self._since)
        self._count = 0
        self._since = now
        metrics = self.metrics
        metrics.events_per_second.set(self.eps)
        subs = self.bus.subscriptions
        metrics.subscribers.set(len(subs))
        for sub in subs:
            metrics.queue_depth.labels(sub.name).set(sub.depth)

    def status_line(self) -> str:
        now = self._clock()
        elapsed = now - self._since
        if elapsed >= self.interval_s:
            self._roll(now)
        eps = self.eps
        if eps is None:
            eps = self._count / elapsed if elapsed > 0 else 0.0
        subs = self.bus.subscriptions
        drops = sum(s.dropped for s in subs)
        return f"eps={eps:.1f} | drops={drops} | subs={len(subs)} | qdepths={[s.depth for s in subs]}"


class SlowConsumer(Consumer):
    """The demo consumer (``ENABLE_SLOW``): ``SLOW_DELAY_MS`` per event, to show drop-oldest at work.

    It takes one batch at a time so the backlog stays in its bus queue, where the oldest events
    are dropped and counted, while the reader and the other consumers go on at full speed. On
    stop it does not sleep through its backlog: what is still queued is counted as abandoned.
    """

    name = "slow"
    label = "SLOW"

    def __init__(self, bus: Bus, settings: P2Settings, metrics: P2Metrics | None = None) -> None:
        super().__init__(bus, settings.BUS_QUEUE_EVENTS, max_batch_events=1)
        self.delay_s = settings.SLOW_DELAY_MS / 1000.0
        self.handled = 0
        self.abandoned = 0

    def handle(self, batch: Batch) -> None:
        """Without the delay (the delay needs the event loop: see :meth:`handle_async`)."""
        self.handled += len(batch)

    async def handle_async(self, batch: Batch) -> None:
        delay = self.delay_s
        n = len(batch)
        for i in range(n):
            if self._stopping:
                self.abandoned += n - i
                self.drop(SHUTDOWN, n - i)
                return
            await asyncio.sleep(delay)
            self.handled += 1

    async def close(self) -> None:
        if self.abandoned:
            logger.info(f"{self.name}: {self.abandoned} queued events abandoned at stop (demo consumer)")

    def status_line(self) -> str:
        sub = self.subscription
        delay_ms = self.delay_s * 1000
        return f"processed={self.handled} | dropped={sub.dropped} | queued={sub.depth} | delay={delay_ms:g}ms"
