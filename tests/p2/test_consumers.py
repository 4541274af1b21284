"""The analytics, health and slow consumers, fed Batch objects through a real bus."""

from __future__ import annotations

import math
import statistics
from itertools import pairwise

import pytest

from mercurystream.p2.analytics import SECONDS_PER_YEAR
from mercurystream.p2.batch import Batch
from mercurystream.p2.bus import Bus
from mercurystream.p2.consumers import (
    HealthConsumer,
    VolatilityConsumer,
    VolumeConsumer,
    VwapConsumer,
)
from mercurystream.p2.metrics import P2Metrics
from tests.p2.support import NOW_US, batch, feed, make_settings, sample, trade

# --- VWAP ----------------------------------------------------------------------------------------


def test_vwap_consumer_gauges_status_and_skips():
    bus, metrics = Bus(), P2Metrics()
    c = VwapConsumer(bus, make_settings(VWAP_WINDOW_S=60), metrics, clock_us=lambda: NOW_US)
    assert c.subscription.capacity == 50000
    feed(
        bus,
        c,
        [
            trade(1, price=98000.0, size=1.0, t=0),
            trade(2, price=98500.0, size=3.0, t=1),
            trade(2, price=1.0, size=100.0, t=1),  # duplicate: must not move VWAP
            trade(3, price=True, t=2),
            trade(1, product="ETH-USD", price=3421.78, size=0.5, t=2),
            trade(4, price="98000", t=3),
        ],
    )
    expected_btc = (98000 * 1 + 98500 * 3) / 4
    assert sample(metrics, "mercurystream_vwap", product_id="BTC-USD") == pytest.approx(expected_btc)
    assert sample(metrics, "mercurystream_vwap", product_id="ETH-USD") == pytest.approx(3421.78)
    skipped = "mercurystream_analytics_skipped_total"
    assert sample(metrics, skipped, consumer="vwap", reason="duplicate") == 1
    assert sample(metrics, skipped, consumer="vwap", reason="invalid_price") == 2
    assert sample(metrics, "mercurystream_event_age_p99_ms") == pytest.approx(0.42)
    assert c.status() == f"VWAP       | BTC-USD={expected_btc:.2f} | ETH-USD=3421.78 | age p99=0.42ms"

    # 70 s later the first two BTC trades have left the 60 s window
    feed(bus, c, [trade(5, price=99000.0, size=2.0, t=70, age_us=3_000)])
    assert sample(metrics, "mercurystream_vwap", product_id="BTC-USD") == pytest.approx(99000.0)
    assert c.status_line().endswith("age p99=3ms")


def test_vwap_consumer_age_p99_over_many_events():
    bus, metrics = Bus(), P2Metrics()
    c = VwapConsumer(bus, make_settings(), metrics, clock_us=lambda: NOW_US)
    ages = list(range(1, 1001))  # us; p99 by nearest rank is the 990th smallest
    feed(bus, c, [trade(i, t=i / 1000, age_us=a) for i, a in enumerate(reversed(ages))])
    assert c.age_p99_ms() == pytest.approx(0.990)


def test_vwap_consumer_falls_back_to_ms_stamps():
    bus, metrics = Bus(), P2Metrics()
    c = VwapConsumer(bus, make_settings(), metrics, clock_us=lambda: NOW_US)
    ev = trade(1)
    del ev["ingest_ts_us"]
    ev["ingest_ts_ms"] = NOW_US // 1000 - 7
    feed(bus, c, [ev])
    assert c.age_p99_ms() == 7.0


def test_vwap_consumer_status_before_any_trade():
    c = VwapConsumer(Bus(), make_settings(), P2Metrics())
    assert c.status_line() == "age p99=-"


# --- volatility ----------------------------------------------------------------------------------


def test_volatility_consumer_gauge_and_status():
    bus, metrics = Bus(), P2Metrics()
    c = VolatilityConsumer(bus, make_settings(VOL_WINDOW=4), metrics)
    prices = [100.0, 100.5, 99.8, 100.1, 100.3]
    times = [0.0, 1.0, 3.0, 4.0, 6.0]
    events = [trade(i, price=p, t=t) for i, (p, t) in enumerate(zip(prices, times, strict=True))]
    feed(bus, c, [*events[:2], events[1], trade(9, price=math.nan, t=5)])
    assert sample(metrics, "mercurystream_volatility_annualized", product_id="BTC-USD") is None
    assert c.status_line() == "BTC-USD=-"
    feed(bus, c, events[2:])
    last4 = prices[1:]
    rets = [math.log(b / a) for a, b in pairwise(last4)]
    expected = statistics.stdev(rets) * math.sqrt(SECONDS_PER_YEAR / ((6.0 - 1.0) / 3))
    assert sample(metrics, "mercurystream_volatility_annualized", product_id="BTC-USD") == pytest.approx(expected)
    assert c.status() == f"VOLATILITY | BTC-USD={expected * 100:.1f}%"
    skipped = "mercurystream_analytics_skipped_total"
    assert sample(metrics, skipped, consumer="volatility", reason="duplicate") == 1
    assert sample(metrics, skipped, consumer="volatility", reason="invalid_price") == 1


# --- volume --------------------------------------------------------------------------------------


def test_volume_consumer_gauges_status_and_decay():
    bus, metrics = Bus(), P2Metrics()
    c = VolumeConsumer(bus, make_settings(), metrics)
    feed(
        bus,
        c,
        [
            trade(1, price=100_000.0, size=8.0, t=0),
            trade(2, price=100_000.0, size=4.0, t=10),
            trade(2, price=100_000.0, size=4.0, t=10),
            trade(1, product="ETH-USD", price=3000.0, size=29.75, t=20),
            trade(2, product="SOL-USD", price=150.0, size=2.0, t=30),
        ],
    )
    usd = "mercurystream_volume_quote_1m"
    assert sample(metrics, usd, product_id="BTC-USD", quote="USD") == 1_200_000.0
    assert sample(metrics, "mercurystream_trades_1m", product_id="BTC-USD") == 2
    assert c.status() == "VOLUME     | BTC-USD=$1.2M/min(2tx) | ETH-USD=$89.2K/min(1tx) | SOL-USD=$300/min(1tx)"
    # only ETH trades; BTC's trades fall out of the stream's 60 s window and its gauge follows
    feed(bus, c, [trade(3, product="ETH-USD", price=3000.0, size=1.0, t=65)])
    assert sample(metrics, usd, product_id="BTC-USD", quote="USD") == 400_000.0
    assert sample(metrics, "mercurystream_trades_1m", product_id="BTC-USD") == 1
    feed(bus, c, [trade(4, product="ETH-USD", price=3000.0, size=1.0, t=100)])
    assert sample(metrics, usd, product_id="BTC-USD", quote="USD") == 0.0
    assert c.status_line().startswith("BTC-USD=$0/min(0tx) | ETH-USD=$6.0K/min(2tx)")
    assert sample(metrics, "mercurystream_analytics_skipped_total", consumer="volume", reason="duplicate") == 1


def test_volume_is_labelled_and_shown_in_its_quote_currency():
    bus, metrics = Bus(), P2Metrics()
    c = VolumeConsumer(bus, make_settings(), metrics)
    feed(
        bus,
        c,
        [
            trade(1, product="BTC-EUR", price=60_000.0, size=20.0, t=0),
            trade(1, product="ETH-USDC", price=3000.0, size=1.0, t=1),
            trade(1, product="BTC-USD", price=100.0, size=1.0, t=2),
        ],
    )
    name = "mercurystream_volume_quote_1m"
    assert sample(metrics, name, product_id="BTC-EUR", quote="EUR") == 1_200_000.0
    assert sample(metrics, name, product_id="ETH-USDC", quote="USDC") == 3000.0
    assert c.status_line() == "BTC-EUR=1.2M EUR/min(1tx) | BTC-USD=$100/min(1tx) | ETH-USDC=3.0K USDC/min(1tx)"


# --- health --------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_health_consumer_eps_drops_depths():
    bus, metrics = Bus(), P2Metrics()
    clock = FakeClock()
    c = HealthConsumer(bus, make_settings(STATUS_INTERVAL_S=5), metrics, clock=clock)
    other = bus.subscribe("other", 3)
    events = [trade(i) for i in range(5)]
    bus.publish(batch(events))  # "other" keeps 3, drops 2
    for b in c.subscription.take_nowait():
        c.handle(b)
    clock.now += 2.0
    # before a full interval: the rate so far
    assert c.status_line() == "eps=2.5 | drops=2 | subs=2 | qdepths=[0, 3]"
    bus.publish(batch(events * 4))
    for b in c.subscription.take_nowait():
        c.handle(b)
    clock.now += 3.0
    assert c.status() == "HEALTH     | eps=5.0 | drops=22 | subs=2 | qdepths=[0, 3]"
    assert other.dropped == 22
    assert sample(metrics, "mercurystream_events_per_second") == 5.0
    assert sample(metrics, "mercurystream_subscribers") == 2
    assert sample(metrics, "mercurystream_queue_depth", consumer="other") == 3
    # a silent stream reads 0 after one more interval
    clock.now += 5.0
    assert c.status_line().startswith("eps=0.0 |")


def test_health_consumer_rolls_on_batches():
    bus, metrics = Bus(), P2Metrics()
    clock = FakeClock()
    c = HealthConsumer(bus, make_settings(STATUS_INTERVAL_S=1), metrics, clock=clock)
    for _ in range(4):
        clock.now += 0.5
        feed(bus, c, [trade(i) for i in range(10)])
    # rolled at 1.0 s (20 events) and 2.0 s (20 events)
    assert c.eps == 20.0
    assert sample(metrics, "mercurystream_events_per_second") == 20.0


def test_the_analytics_check_each_batch_once_and_count_each_trade_once_each():
    bus, metrics = Bus(), P2Metrics()
    settings = make_settings()
    consumers = [VwapConsumer(bus, settings, metrics), VolatilityConsumer(bus, settings, metrics)]
    volume = VolumeConsumer(bus, settings, metrics)
    b = batch([trade(1), trade(2, t=1.0), trade(2, t=1.0), trade(3, price="x")])
    bus.publish(b)
    bus.publish(batch([trade(2, t=2.0), trade(4, t=3.0)]))
    for c in (*consumers, volume):
        c.process_pending()
    for c in (*consumers, volume):
        assert c.trade_filter.accepted == 3
        assert c.trade_filter.skipped["duplicate"] == 2
        assert c.trade_filter.skipped["invalid_price"] == 1
        assert sample(metrics, "mercurystream_analytics_skipped_total", consumer=c.name, reason="duplicate") == 2
    assert volume.window.volume("BTC-USD") == (300.0, 3)


def test_vwap_age_uses_the_receiver_column_when_every_event_has_one():
    bus, metrics = Bus(), P2Metrics()
    vwap = VwapConsumer(bus, make_settings(), metrics, clock_us=lambda: NOW_US)
    events = [trade(1, age_us=1000), trade(2, age_us=3000)]
    b = Batch.of_events(events, NOW_US)
    bus.publish(b)
    vwap.process_pending()
    assert sorted(vwap.ages_us._window()) == [1000, 3000]


# --- time outliers -------------------------------------------------------------------------------


def test_one_far_future_trade_moves_no_window_clock():
    """One trade timed 9999-12-31 used to advance the stream's clock and zero every product's volume."""
    bus, metrics = Bus(), P2Metrics()
    settings = make_settings()
    volume = VolumeConsumer(bus, settings, metrics)
    vwap = VwapConsumer(bus, settings, metrics)
    vol = VolatilityConsumer(bus, settings, metrics)
    events = [trade(1, price=100.0, size=2.0, t=0), trade(1, product="ETH-USD", price=10.0, size=3.0, t=1)]
    future = trade(2, price=1e9, size=1.0)
    future["time"] = "9999-12-31T23:59:59.999999Z"
    bus.publish(batch(events))
    bus.publish(batch([future]))
    bus.publish(batch([trade(3, price=102.0, size=2.0, t=2), trade(4, price=104.0, size=2.0, t=3)]))
    for c in (volume, vwap, vol):
        for b in c.subscription.take_nowait():
            c.handle(b)
    usd = "mercurystream_volume_quote_1m"
    assert sample(metrics, usd, product_id="BTC-USD", quote="USD") == 200.0 + 204.0 + 208.0
    assert sample(metrics, usd, product_id="ETH-USD", quote="USD") == 30.0
    assert sample(metrics, "mercurystream_vwap", product_id="BTC-USD") == pytest.approx(102.0)
    assert vol.window.snapshot()["BTC-USD"] is not None
    for name in ("volume", "vwap", "volatility"):
        skipped = "mercurystream_analytics_skipped_total"
        assert sample(metrics, skipped, consumer=name, reason="invalid_time") == 1
        assert sample(metrics, skipped, consumer=name, reason="outside_window") in (None, 0)


def test_a_time_within_the_future_skew_still_counts():
    bus, metrics = Bus(), P2Metrics()
    c = VolumeConsumer(bus, make_settings(), metrics)
    bus.publish(Batch.of_events([trade(1, size=1.0, t=59), trade(2, size=1.0, t=61)], NOW_US, max_future_skew_s=60))
    for b in c.subscription.take_nowait():
        c.handle(b)
    assert sample(metrics, "mercurystream_trades_1m", product_id="BTC-USD") == 1
    assert sample(metrics, "mercurystream_analytics_skipped_total", consumer="volume", reason="invalid_time") == 1
