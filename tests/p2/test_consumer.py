"""The consumer framework: consumers as tasks, one shared task for those that never wait, the shell without a loop."""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise

import pytest

from mercurystream.p2.bus import Bus
from mercurystream.p2.consumer import YIELD_BELOW_EVENTS, SyncConsumers
from mercurystream.p2.consumers import (
    HealthConsumer,
    SlowConsumer,
    VolatilityConsumer,
    VolumeConsumer,
    VwapConsumer,
)
from mercurystream.p2.metrics import P2Metrics
from tests.p2.support import batch, broken, eventually, make_settings, sample, trade

# --- running as tasks ----------------------------------------------------------------------------


async def test_consumers_run_as_tasks_and_drain_on_stop():
    bus, metrics = Bus(), P2Metrics()
    settings = make_settings()
    consumers = [
        VwapConsumer(bus, settings, metrics),
        VolatilityConsumer(bus, settings, metrics),
        VolumeConsumer(bus, settings, metrics),
        HealthConsumer(bus, settings, metrics),
    ]
    for c in consumers:
        await c.start()
    for k in range(20):
        bus.publish(batch([trade(k * 10 + i, price=100.0 + i, t=k + i / 10) for i in range(10)]))
    await eventually(lambda: all(c.processed == 200 for c in consumers))
    for c in consumers:
        await c.stop()
    assert all(c.failed == 0 for c in consumers)
    assert consumers[0].trade_filter.accepted == 200
    assert sample(metrics, "mercurystream_trades_1m", product_id="BTC-USD") > 0


async def test_sync_consumers_share_one_task_and_let_the_loop_in_between_them():
    bus, metrics = Bus(), P2Metrics()
    settings = make_settings()
    consumers = [
        VwapConsumer(bus, settings, metrics),
        VolatilityConsumer(bus, settings, metrics),
        VolumeConsumer(bus, settings, metrics),
        HealthConsumer(bus, settings, metrics),
    ]
    group = SyncConsumers(consumers)
    order: list[str] = []
    for c in consumers:
        c.on_processed(lambda name, n: order.append(name))
    await group.start()
    tasks_before = len(asyncio.all_tasks())

    async def reader() -> None:  # stands for the socket: it must get the loop between two consumers
        while sum(x != "loop" for x in order) < 4:
            order.append("loop")
            await asyncio.sleep(0)

    bus.publish(batch([trade(i, price=100.0 + i, t=i / 10) for i in range(10)]))
    await reader()
    assert [x for x in order if x != "loop"] == ["vwap", "volatility", "volume", "health"]
    consumer_positions = [i for i, x in enumerate(order) if x != "loop"]
    assert all(b - a > 1 for a, b in pairwise(consumer_positions)), order
    for k in range(1, 20):
        bus.publish(batch([trade(k * 10 + i, price=100.0 + i, t=k + i / 10) for i in range(10)]))
    await group.stop()  # drains every queue before it returns
    assert all(c.processed == 200 and c.failed == 0 for c in consumers)
    assert len(asyncio.all_tasks()) == tasks_before - 1
    assert sample(metrics, "mercurystream_trades_1m", product_id="BTC-USD") > 0


async def test_sync_consumers_run_back_to_back_under_load():
    bus, metrics = Bus(), P2Metrics()
    settings = make_settings()
    consumers = [VwapConsumer(bus, settings, metrics), VolumeConsumer(bus, settings, metrics)]
    group = SyncConsumers(consumers)
    order: list[str] = []
    for c in consumers:
        c.on_processed(lambda name, n: order.append(name))
    await group.start()
    n = YIELD_BELOW_EVENTS
    bus.publish(batch([trade(i, price=100.0 + i % 7, t=i / 1000) for i in range(n)]))
    while len(order) < 2:
        order.append("loop")
        await asyncio.sleep(0)
    assert order[-2:] == ["vwap", "volume"]  # no turn for the reader in between
    await group.stop()
    assert all(c.processed == n for c in consumers)


def test_a_consumer_that_waits_cannot_join_the_shared_task():
    bus, metrics = Bus(), P2Metrics()
    with pytest.raises(ValueError, match="task of its own"):
        SyncConsumers([SlowConsumer(bus, make_settings(), metrics)])


async def test_slow_consumer_drops_oldest_and_slows_no_one():
    bus, metrics = Bus(), P2Metrics()
    settings = make_settings(BUS_QUEUE_EVENTS=20, SLOW_DELAY_MS=20)
    slow = SlowConsumer(bus, settings, metrics)
    vwap = VwapConsumer(bus, make_settings(), metrics)
    await slow.start()
    await vwap.start()
    total = 0
    for k in range(30):
        bus.publish(batch([trade(k * 10 + i, t=k) for i in range(10)]))
        total += 10
        await asyncio.sleep(0)
    await eventually(lambda: vwap.processed == total)
    assert slow.handled < total
    await eventually(lambda: slow.handled >= 3)
    assert slow.subscription.dropped > 0
    status = slow.status()
    assert status.startswith("SLOW       | processed=")
    assert f"dropped={slow.subscription.dropped}" in status
    assert status.endswith("delay=20ms")
    started = time.monotonic()
    await slow.stop()
    await vwap.stop()
    assert time.monotonic() - started < 5  # the backlog is abandoned, not slept through
    assert slow.handled + slow.subscription.dropped + slow.abandoned == total
    assert vwap.subscription.dropped == 0


# --- the shell without a loop, and the shared per-batch work --------------------------------------


def test_process_pending_handles_everything_queued_and_reports_once():
    bus, metrics = Bus(), P2Metrics()
    vwap = VwapConsumer(bus, make_settings(), metrics)
    reported: list[tuple[str, int]] = []
    vwap.on_processed(lambda name, n: reported.append((name, n)))
    for k in range(3):
        bus.publish(batch([trade(k * 10 + i, t=k) for i in range(10)]))
    assert vwap.process_pending() == 30
    assert vwap.processed == 30 and reported == [("vwap", 30)]
    assert vwap.process_pending() == 0 and reported == [("vwap", 30)]


def test_process_pending_loses_only_the_failing_event_of_a_batch_and_goes_on():
    bus, metrics = Bus(), P2Metrics()
    vwap = VwapConsumer(bus, make_settings(), metrics)
    bus.publish(broken(batch([trade(1), trade(3), trade(4)])))
    bus.publish(batch([trade(2)]))
    assert vwap.process_pending() == 4
    assert vwap.failed == 1 and vwap.processed == 4 and vwap.passed_on == 3
    assert vwap.dropped == {"consumer_error": 1}
    assert vwap.trade_filter.accepted == 3


# --- every event received is passed on or counted -------------------------------------------------


def accounting(app) -> dict[str, tuple[float, float, dict[str, float]]]:
    """Per consumer, from /metrics' own registry: (received, passed on, dropped by reason)."""
    out = {}
    for c in app.consumers:
        got = {
            s.labels["reason"]: s.value
            for metric in app.metrics.registry.collect()
            if metric.name == "mercurystream_consumer_dropped"
            for s in metric.samples
            if s.labels["consumer"] == c.name
        }
        received = sample(app.metrics, "mercurystream_consumer_received_total", consumer=c.name)
        passed = sample(app.metrics, "mercurystream_consumer_events_total", consumer=c.name)
        out[c.name] = (received, passed, got)
    return out


def hostile_batches() -> list:
    from tests.p2.support import NOW_US

    drift = {**trade(100), "price": "12.5"}
    no_product = {**trade(101), "product_id": ""}
    long_product = trade(102, product="P" * 500)
    huge = [trade(103, price=1e308, size=1e308, t=1), trade(104, price=1e-308, t=2), trade(105, price=1e308, t=3)]
    future = {**trade(106), "time": "9999-12-31T23:59:59.999999Z"}
    big_int = {**trade(107), "price": 10**400}
    from mercurystream.p2.batch import Batch

    return [Batch.of_events([drift, no_product, long_product, *huge, future, big_int], NOW_US)]


@pytest.mark.parametrize("case", ["clean", "hostile", "overflow", "failing"])
async def test_received_is_passed_on_plus_counted_drops_for_every_consumer(tmp_path, case, monkeypatch):
    from mercurystream.p2.app import P2App
    from mercurystream.p2.consumer import Consumer

    settings = make_settings(
        RECORD=True,
        RECORD_FILE=tmp_path / "rec.jsonl",
        INCIDENTS_DIR=tmp_path / "incidents",
        DRIFT_SAMPLE_FILE=tmp_path / "drift.jsonl",
        INCIDENT_CHARTS=False,
        ENABLE_SLOW=True,
        SLOW_DELAY_MS=0,
        BUS_QUEUE_EVENTS=40 if case == "overflow" else 50_000,
    )
    app = P2App(settings)
    names = {c.name for c in app.consumers}
    assert names == {"vwap", "volatility", "volume", "health", "slow", "forensics", "recorder"}
    if case == "failing":
        # Every consumer raises on one marked event, alone or within a batch.
        for c in app.consumers:
            for attr in ("handle", "handle_async") if c.waits else ("handle",):
                inner = getattr(c, attr)

                def failing(batch, inner=inner):
                    if 7 in batch.trade_ids:
                        raise RuntimeError("injected")
                    return inner(batch)

                async def failing_async(batch, inner=inner):
                    if 7 in batch.trade_ids:
                        raise RuntimeError("injected")
                    return await inner(batch)

                monkeypatch.setattr(c, attr, failing_async if attr == "handle_async" else failing)
    batches = [batch([trade(k * 10 + i, t=k) for i in range(10)]) for k in range(6)]
    if case == "hostile":
        batches += [*hostile_batches(), broken(batch([trade(200), trade(201), trade(202)]))]
    published = sum(map(len, batches))
    for b in batches:
        app.bus.publish(b)  # no await between: with a queue of 40 the bus drops the oldest
    await app.start_consumers()
    try:
        assert await app.wait_drained(20.0)
    finally:
        await app.stop_consumers()
    got = accounting(app)
    for name, (received, passed, dropped) in got.items():
        assert received == published, name
        assert received == passed + sum(dropped.values()), (name, received, passed, dropped)
        assert set(dropped) >= {"queue_full", "consumer_error"}
    if case == "overflow":
        assert all(d["queue_full"] == published - 40 for _, _, d in got.values())
    if case == "failing":
        assert all(d["consumer_error"] == 1 for _, _, d in got.values()), got
        assert all(p == published - 1 for _, p, _ in got.values())
    if case == "clean":
        assert all(p == published and sum(d.values()) == 0 for _, p, d in got.values())
    recorder = next(c for c in app.consumers if c.name == "recorder")
    assert recorder.writer.written + recorder.writer.errors == recorder.passed_on
    assert isinstance(recorder, Consumer)
