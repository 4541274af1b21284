"""P2's Prometheus metrics, in a registry of its own so tests can run several P2s in one process.

Names follow the seed's contract (``mercurystream_*``). The P1→P2 latency histogram is observed
once per event on the hot path, so it is a plain bucket array fed a batch at a time and exported
by a custom collector, rather than a ``prometheus_client.Histogram`` paying a lock per sample.
For the same reason the figures the loop updates on every socket read (events received, events
each consumer processed, the per-product analytics) are plain fields read at scrape time
(:class:`ScrapedCounter`, :class:`ProductGauge`): about twenty locked updates per read were 5 % of
P2's time when reads are small.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from mercurystream.p2.analytics.volume import quote_currency
from mercurystream.shared.labels import MAX_PRODUCT_LABELS, ProductGauge

LATENCY_BUCKETS_MS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class BatchHistogram:
    """A cumulative histogram exported as a Prometheus histogram; ``observe_many`` takes a batch."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def observe_many(self, values: Iterable[float]) -> None:
        """Sort once and cut at each bound: a batch costs a C sort, not a bisect per value."""
        ordered = sorted(values)
        n = len(ordered)
        if not n:
            return
        counts = self.counts
        below = 0
        for i, bound in enumerate(self.bounds):
            at = bisect_right(ordered, bound, below)
            counts[i] += at - below
            below = at
            if below == n:
                break
        counts[-1] += n - below
        self.sum += sum(ordered)
        self.count += n

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation)
        cumulative = 0
        buckets = []
        for bound, c in zip(self.bounds, self.counts, strict=False):
            cumulative += c
            buckets.append((_fmt(bound), cumulative))
        buckets.append(("+Inf", cumulative + self.counts[-1]))
        family.add_metric([], buckets, self.sum)
        yield family


def _fmt(bound: float) -> str:
    return repr(float(bound))


class ScrapedCounter:
    """A counter whose value is a count its owner keeps anyway, read when Prometheus scrapes.

    ``source`` returns the total, or ``{label value: total}`` when the counter has a label
    (``{(value, value): total}`` with several); the owner sets it (``None`` exports zero, or
    nothing with a label). Reading an int another thread is advancing needs no lock.
    """

    def __init__(self, name: str, documentation: str, label: str | tuple[str, ...] | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.source: Callable[[], float | Mapping[Any, float]] | None = None

    def collect(self):
        got = self.source() if self.source is not None else (0.0 if self.label is None else {})
        if self.label is None:
            yield CounterMetricFamily(self.name, self.documentation, value=float(got))  # type: ignore[arg-type]
            return
        several = type(self.label) is tuple
        family = CounterMetricFamily(
            self.name, self.documentation, labels=list(self.label) if several else [self.label]
        )
        for key, v in sorted(got.items()):  # type: ignore[union-attr]
            family.add_metric(list(key) if several else [key], float(v))
        yield family


class LabelledRegistry(CollectorRegistry):
    """A registry that adds constant labels to every sample it exports: a P2 shard's ``shard="i/n"``.

    Every metric of a shard then carries its shard, including the custom collectors, without a label
    on each metric's definition.
    """

    def __init__(self, labels: Mapping[str, str]) -> None:
        super().__init__()
        self.const_labels = dict(labels)

    def collect(self):
        extra = self.const_labels
        for family in super().collect():
            family.samples = [s._replace(labels={**s.labels, **extra}) for s in family.samples]
            yield family


class P2Metrics:
    """Every metric P2 exports."""

    def __init__(self, registry: CollectorRegistry | None = None, max_product_labels: int = MAX_PRODUCT_LABELS) -> None:
        """``max_product_labels``: products with a label of their own in each per-product gauge."""
        n = max_product_labels
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.events_total = ScrapedCounter("mercurystream_events", "Events received by P2 and published to the bus")
        self.events_per_second = Gauge(
            "mercurystream_events_per_second", "Events per second over the last status interval", registry=r
        )
        self.latency_ms = BatchHistogram(
            "mercurystream_latency_ms", "P1 ingest to P2 receive latency in milliseconds", LATENCY_BUCKETS_MS
        )
        r.register(self.latency_ms)
        self.anomalies_total = Counter(
            "mercurystream_anomalies", "Data-quality anomalies detected, by type", ["type"], registry=r
        )
        self.incidents_total = Counter(
            "mercurystream_incidents", "Incident bundles written, by trigger type", ["type"], registry=r
        )
        self.incident_write_errors_total = Counter(
            "mercurystream_incident_write_errors", "Incident bundles that failed to write", registry=r
        )
        self.incidents_pruned_total = Counter(
            "mercurystream_incidents_pruned",
            "Incident bundles removed, oldest first, to keep INCIDENTS_DIR under INCIDENTS_MAX_BYTES",
            registry=r,
        )
        self.incident_triggers_suppressed_total = Counter(
            "mercurystream_incident_triggers_suppressed",
            "Triggers not captured because a capture was active or in cooldown",
            ["type"],
            registry=r,
        )
        self.incident_requests_refused_total = Counter(
            "mercurystream_incident_requests_refused",
            "On-demand incident dumps (POST /incidents, SIGUSR1) refused, by reason",
            ["reason"],
            registry=r,
        )
        self.drift_samples_total = Counter(
            "mercurystream_drift_samples", "Schema drift samples written to the sample file", registry=r
        )
        self.drift_samples_dropped_total = Counter(
            "mercurystream_drift_samples_dropped",
            "Schema drift samples not written to the sample file, by the error (errno name) that lost them",
            ["reason"],
            registry=r,
        )
        self.drops_total = Counter(
            "mercurystream_drops", "Events dropped from a full subscriber queue (drop-oldest)", ["consumer"], registry=r
        )
        self.consumer_events_total = ScrapedCounter(
            "mercurystream_consumer_events", "Events each consumer handled to the end (passed on)", "consumer"
        )
        self.consumer_received_total = ScrapedCounter(
            "mercurystream_consumer_received",
            "Events the bus offered each consumer: passed on + dropped (by reason) + queued + in hand",
            "consumer",
        )
        self.consumer_dropped_total = ScrapedCounter(
            "mercurystream_consumer_dropped",
            "Events a consumer received and did not pass on, by reason "
            "(queue_full, queue_bytes: drop-oldest past the queue's bound in events or bytes; "
            "consumer_error: it raised on the event alone; shutdown)",
            ("consumer", "reason"),
        )
        self.queue_depth = Gauge(
            "mercurystream_queue_depth", "Events waiting in each subscriber queue", ["consumer"], registry=r
        )
        self.subscribers = Gauge("mercurystream_subscribers", "Bus subscribers", registry=r)
        self.frame_errors_total = Counter(
            "mercurystream_frame_errors", "Frames skipped or connections closed for bad framing", ["reason"], registry=r
        )
        self.connections = Gauge("mercurystream_connections", "Open P1 connections", registry=r)
        self.connections_total = Counter("mercurystream_connections_accepted", "P1 connections accepted", registry=r)
        self.nats_messages_total = Counter(
            "mercurystream_p2_nats_messages",
            "JetStream messages this shard read: processed (its products) or foreign (acknowledged unread)",
            ["action"],
            registry=r,
        )
        self.nats_redelivered_total = Counter(
            "mercurystream_p2_nats_redelivered",
            "Messages JetStream delivered again: skipped (this process has the batch) or reprocessed "
            "(delivered before this process started); never venue duplicates",
            ["action"],
            registry=r,
        )
        self.nats_redelivered_events_total = Counter(
            "mercurystream_p2_nats_redelivered_events", "Events in the redelivered messages, by action", ["action"],
            registry=r,
        )  # fmt: skip
        self.nats_acked_total = Counter(
            "mercurystream_p2_nats_acked", "JetStream messages acknowledged by this shard", registry=r
        )
        self.nats_ack_pending = Gauge(
            "mercurystream_p2_nats_ack_pending",
            "Messages on the bus and not yet acknowledged (their consumers have not finished them)",
            registry=r,
        )
        self.nats_connected = Gauge("mercurystream_p2_nats_connected", "1 while connected to NATS", registry=r)
        self.connections_closed_total = ScrapedCounter(
            "mercurystream_connections_closed",
            "P1 connections closed, by reason (peer, stop, oversize, idle_timeout, partial_timeout, "
            "partial_budget, evicted, refused)",
            "reason",
        )
        self.partial_frame_bytes = Gauge(
            "mercurystream_partial_frame_bytes", "Bytes of unfinished frames held across every connection", registry=r
        )
        self.ingest_pauses_total = ScrapedCounter(
            "mercurystream_ingest_pauses",
            "Times P2 stopped reading its connections because every consumer queue held more than BUS_PAUSE_BYTES",
        )
        self.ingest_paused_seconds_total = ScrapedCounter(
            "mercurystream_ingest_paused_seconds", "Seconds P2 spent not reading its connections (BUS_PAUSE_BYTES)"
        )
        self.budget_evictions_total = ScrapedCounter(
            "mercurystream_budget_evictions",
            "Items P2 let go, oldest first, because a memory bound was reached, by bound (bus_queue_bytes, "
            "flight_ring_bytes: events; dedupe_ids: trade ids forgotten; partial_bytes_total: connections; "
            "window_trades: trades the VWAP and volume windows let go early)",
            "bound",
        )
        self.analytics_skipped_total = Counter(
            "mercurystream_analytics_skipped",
            "Events an analytics consumer did not count, by reason",
            ["consumer", "reason"],
            registry=r,
        )
        self.gap_notices_total = Counter(
            "mercurystream_gap_notices",
            "Gap control events from P1 (trade ids lost upstream), by how P1 found the gap",
            ["source"],
            registry=r,
        )
        self.backfilled_total = Counter(
            "mercurystream_backfilled",
            "Trades marked backfilled (fetched by P1 from the venue's REST history)",
            registry=r,
        )
        self.backfill_ids_total = Counter(
            "mercurystream_backfill_ids",
            "Missing trade ids of P1's finished backfills, by outcome (recovered, unrecoverable)",
            ["outcome"],
            registry=r,
        )
        self.vwap = ProductGauge("mercurystream_vwap", "Rolling VWAP over VWAP_WINDOW_S", n)
        self.age_p99_ms = Gauge(
            "mercurystream_event_age_p99_ms", "P1 ingest to VWAP consumer age, p99, in milliseconds", registry=r
        )
        self.volatility = ProductGauge(
            "mercurystream_volatility_annualized",
            "Annualized volatility from the last VOL_WINDOW trades' log returns",
            n,
        )
        self.volume_quote_1m = ProductGauge(
            "mercurystream_volume_quote_1m",
            "Notional (price * size) traded over the last 60 s, in the product's quote currency (label quote)",
            n,
            additive=True,
            extra=("quote", quote_currency),
        )
        self.trades_1m = ProductGauge("mercurystream_trades_1m", "Trades over the last 60 s", n, additive=True)
        self.recorded_total = Counter("mercurystream_recorded_events", "Events written by the recorder", registry=r)
        self.recorder_errors_total = Counter(
            "mercurystream_recorder_errors", "Recorder write failures (events lost from the file)", registry=r
        )
        self.recordings_pruned_total = Counter(
            "mercurystream_recordings_pruned",
            "Closed recording files removed, oldest first, to keep the recording under RECORD_MAX_BYTES",
            registry=r,
        )
        self.recorder_rejected_total = Counter(
            "mercurystream_recorder_rejected",
            "Events the Parquet recorder has no row for (RECORD_FORMAT=parquet), by reason",
            ["reason"],
            registry=r,
        )
        for collector in (
            self.events_total,
            self.connections_closed_total,
            self.ingest_pauses_total,
            self.ingest_paused_seconds_total,
            self.budget_evictions_total,
            self.consumer_events_total,
            self.consumer_received_total,
            self.consumer_dropped_total,
            self.vwap,
            self.volatility,
            self.volume_quote_1m,
            self.trades_1m,
        ):
            r.register(collector)
