"""BatchHistogram: a batch at a time gives what one value at a time gives, bounds included."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from mercurystream.p2.metrics import LATENCY_BUCKETS_MS, BatchHistogram, P2Metrics

values = st.lists(
    st.sampled_from(LATENCY_BUCKETS_MS) | st.floats(-1.0, 20_000.0, allow_nan=False) | st.integers(-5, 12_000),
    max_size=60,
)


@given(st.lists(values, max_size=5))
def test_observe_many_is_observe_of_each(batches: list[list[float]]) -> None:
    many = BatchHistogram("h", "doc", LATENCY_BUCKETS_MS)
    one = BatchHistogram("h", "doc", LATENCY_BUCKETS_MS)
    for b in batches:
        many.observe_many(b)
        for v in b:
            one.observe(v)
    assert many.counts == one.counts
    assert many.count == one.count
    assert many.sum == pytest.approx(one.sum, rel=1e-12, abs=1e-9)


def test_a_value_on_a_bound_is_in_that_bucket_and_the_input_is_not_reordered() -> None:
    h = BatchHistogram("h", "doc", (1, 2))
    batch = [2.0, 1.0, 0.5, 3.0]
    h.observe_many(batch)
    assert batch == [2.0, 1.0, 0.5, 3.0]
    assert h.counts == [2, 1, 1]
    h.observe_many([])
    assert h.count == 4


def test_the_exported_histogram_is_cumulative() -> None:
    registry = CollectorRegistry()
    metrics = P2Metrics(registry)
    metrics.latency_ms.observe_many([0.04, 0.3, 0.3, 20_000.0])
    assert registry.get_sample_value("mercurystream_latency_ms_bucket", {"le": "0.05"}) == 1
    assert registry.get_sample_value("mercurystream_latency_ms_bucket", {"le": "0.5"}) == 3
    assert registry.get_sample_value("mercurystream_latency_ms_bucket", {"le": "+Inf"}) == 4
    assert registry.get_sample_value("mercurystream_latency_ms_count") == 4


def test_scraped_counters_read_their_owners_counts_at_scrape_time() -> None:
    registry = CollectorRegistry()
    metrics = P2Metrics(registry)
    assert registry.get_sample_value("mercurystream_events_total") == 0
    assert registry.get_sample_value("mercurystream_consumer_events_total", {"consumer": "vwap"}) is None
    counts = {"vwap": 3, "recorder": 1}
    metrics.events_total.source = lambda: 7
    metrics.consumer_events_total.source = lambda: counts
    assert registry.get_sample_value("mercurystream_events_total") == 7
    counts["vwap"] = 5
    assert registry.get_sample_value("mercurystream_consumer_events_total", {"consumer": "vwap"}) == 5
    assert registry.get_sample_value("mercurystream_consumer_events_total", {"consumer": "recorder"}) == 1


def test_product_gauges_export_the_latest_value_of_each_product() -> None:
    registry = CollectorRegistry()
    metrics = P2Metrics(registry)
    metrics.vwap.set("BTC-USD", 100.0)
    metrics.vwap.set("ETH-USD", 3.5)
    metrics.vwap.set("BTC-USD", 101.0)
    metrics.trades_1m.set("BTC-USD", 4)
    assert registry.get_sample_value("mercurystream_vwap", {"product_id": "BTC-USD"}) == 101.0
    assert registry.get_sample_value("mercurystream_vwap", {"product_id": "ETH-USD"}) == 3.5
    assert registry.get_sample_value("mercurystream_trades_1m", {"product_id": "BTC-USD"}) == 4
    assert registry.get_sample_value("mercurystream_volatility_annualized", {"product_id": "BTC-USD"}) is None


def test_ten_thousand_products_leave_metrics_and_status_lines_bounded():
    """10,000 distinct product ids (and a few of 900 KB, which are drift) through every consumer."""
    import math

    from prometheus_client import generate_latest

    from mercurystream.p2.app import P2App
    from mercurystream.p2.batch import Batch
    from mercurystream.shared.clip import STATUS_MAX
    from tests.p2.support import NOW_US, make_settings, trade

    app = P2App(make_settings(FORENSICS=False))
    events = [trade(k, product=f"P{i:05d}-" + "Q" * 57, t=k) for i in range(10_000) for k in range(3)]
    events += [trade(i, product="L" * 900_000) for i in range(3)]
    for k in range(0, len(events), 3000):
        app.bus.publish(Batch.of_events(events[k : k + 3000], NOW_US))
        for c in app.consumers:  # taken batch by batch: all of it stays within BUS_QUEUE_BYTES
            c.process_pending()
    body = generate_latest(app.metrics.registry)
    lines = body.splitlines()
    assert len(body) < 80_000, len(body)
    assert max(map(len, lines)) < 300
    for name in ("vwap", "volatility_annualized", "volume_quote_1m", "trades_1m"):
        labelled = [x for x in lines if x.startswith(f"mercurystream_{name}{{".encode())]
        assert len(labelled) == 100 + (name in ("volume_quote_1m", "trades_1m")), name
        assert app.metrics.registry.get_sample_value(f"mercurystream_{name}_unlabelled_products") == 1024 - 100
    other = app.metrics.registry.get_sample_value("mercurystream_trades_1m", {"product_id": "_other"})
    assert math.isclose(other, 3 * (1024 - 100))  # three trades each; the dedupe tracks at most 1,024 products
    for c in app.consumers:
        assert len(c.status()) <= STATUS_MAX + 80, c.name
