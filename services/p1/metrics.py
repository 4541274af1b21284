"""P1's Prometheus metrics, in a registry of its own so tests can run several P1s in one process.

Every counter here is incremented once per batch with the batch's count, never once per event.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from mercurystream.shared.labels import MAX_PRODUCT_LABELS, ProductGauge

DROP_REASONS = ("buffer_full", "unacked_at_disconnect", "shutdown", "oversize")
TARGETS = ("websocket", "p2", "nats")
PRESET_TYPES = (
    "match",
    "ticker",
    "last_match",
    "subscribe_ticker",
    "subscriptions",
    "heartbeat",
    "error",
    "malformed",
)


class P1Metrics:
    """Every metric P1 exports, plus the HTTP endpoint that serves them."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        max_product_labels: int = MAX_PRODUCT_LABELS,
        sink_target: str = "p2",
    ) -> None:
        """``max_product_labels``: configured products with a label of their own; the rest are summed
        under ``product_id="_other"`` (``shared.labels``). ``sink_target``: ``p2`` (TCP) or ``nats``; only
        the websocket and that target get ``connected``/``reconnects`` series, so an alert over every
        target never sees the unused one's 0."""
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.messages_total = Counter(
            "mercurystream_p1_messages", "WebSocket messages received, by message type", ["type"], registry=r
        )
        self.sequence_gaps_total = Counter(
            "mercurystream_p1_sequence_gaps",
            "Venue message sequence numbers skipped on a connection (Advanced Trade's sequence_num)",
            registry=r,
        )
        self.validation_failures_total = Counter(
            "mercurystream_p1_validation_failures",
            "Trade messages that failed validation (forwarded as received)",
            registry=r,
        )
        self.forwarded_total = Counter(
            "mercurystream_p1_forwarded", "Frames written to P2, resends included", registry=r
        )
        self.acked_total = Counter("mercurystream_p1_acked", "Events P2 acknowledged", registry=r)
        self.resent_total = Counter(
            "mercurystream_p1_resent", "Events requeued for resend after P2's final ack", registry=r
        )
        self.buffered = Gauge(
            "mercurystream_p1_buffered", "Events held for P2: not yet sent, or sent and not acknowledged", registry=r
        )
        self.dropped_total = Counter(
            "mercurystream_p1_dropped", "Events P1 gave up on, by reason", ["reason"], registry=r
        )
        self.nats_batches_total = Counter(
            "mercurystream_p1_nats_batches",
            "JetStream publishes of batches by result (stored; duplicate: the stream had its id; failed: resent)",
            ["result"],
            registry=r,
        )
        for result in ("stored", "duplicate", "failed"):
            self.nats_batches_total.labels(result)
        self.reconnects_total = Counter(
            "mercurystream_p1_reconnects", "Connection attempts after the first, by target", ["target"], registry=r
        )
        self.connected = Gauge(
            "mercurystream_p1_connected",
            "1 while connected, by target (websocket: once the venue confirmed the subscription)",
            ["target"],
            registry=r,
        )
        # Both product gauges are set only for products named in SYMBOLS, and capped like P2's.
        self.subscribed = ProductGauge(
            "mercurystream_p1_subscribed",
            "1 while the venue confirms this product on the feed channel (_other: how many more)",
            max_product_labels,
            additive=True,
        )
        self.invalid_products = ProductGauge(
            "mercurystream_p1_invalid_products",
            "1 for a configured product the venue rejected as not valid (no longer subscribed)",
            max_product_labels,
            additive=True,
        )
        r.register(self.subscribed)
        r.register(self.invalid_products)
        self.gaps_total = Counter(
            "mercurystream_p1_gaps",
            "Gaps confirmed (trade ids lost upstream), by how they were found (heartbeat, trade_id)",
            ["source"],
            registry=r,
        )
        self.gap_ids_total = Counter(
            "mercurystream_p1_gap_ids",
            "Trade ids confirmed lost upstream, by how they were found",
            ["source"],
            registry=r,
        )
        self.bad_trade_ids_total = Counter(
            "mercurystream_p1_bad_trade_ids",
            "Heartbeats, last_match and trades whose trade id is no gap, by reason (implausible_jump: more "
            "than GAP_MAX_IDS from the product's baseline)",
            ["reason"],
            registry=r,
        )
        self.bad_trade_ids_total.labels("implausible_jump")
        self.gap_rebaselines_total = Counter(
            "mercurystream_p1_gap_rebaselines",
            "Implausible trade-id jumps the feed confirmed by continuing from them, adopted as the baseline",
            registry=r,
        )
        self.backfill_ids_total = Counter(
            "mercurystream_p1_backfill_ids",
            "Missing trade ids handed to the backfill (requested) and how they ended (recovered, unrecoverable)",
            ["outcome"],
            registry=r,
        )
        self.backfill_requests_total = Counter(
            "mercurystream_p1_backfill_requests",
            "REST trades requests sent by the backfill, by result",
            ["result"],
            registry=r,
        )
        self.backfill_pending = Gauge(
            "mercurystream_p1_backfill_pending", "Gaps waiting for or in backfill", registry=r
        )
        for source in ("heartbeat", "trade_id"):
            self.gaps_total.labels(source)
            self.gap_ids_total.labels(source)
        for outcome in ("requested", "recovered", "unrecoverable"):
            self.backfill_ids_total.labels(outcome)
        for result in ("ok", "rate_limited", "not_found", "error"):
            self.backfill_requests_total.labels(result)
        for reason in DROP_REASONS:
            self.dropped_total.labels(reason)
        for target in ("websocket", sink_target):
            self.reconnects_total.labels(target)
            self.connected.labels(target)
        self._type_children = {t: self.messages_total.labels(t) for t in PRESET_TYPES}
        self._server = None
        self._thread = None

    def count_messages(self, counts: dict[str, int]) -> None:
        """Add one batch's per-type counts; children are cached because ``labels()`` takes a lock."""
        children = self._type_children
        for type_, n in counts.items():
            child = children.get(type_)
            if child is None:
                child = children[type_] = self.messages_total.labels(type_)
            child.inc(n)

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Start ``/metrics`` on a daemon thread; returns the bound port (useful with port 0)."""
        self._server, self._thread = start_http_server(port, addr, registry=self.registry)
        return self._server.server_port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
