"""Events and batches for the consumer tests: trades at fixed offsets from one instant; metric and wait helpers."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from datetime import UTC, datetime

from mercurystream.p2.batch import Batch
from mercurystream.p2.bus import Bus
from mercurystream.p2.config import P2Settings
from mercurystream.p2.metrics import P2Metrics

BASE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()
NOW_US = 1_714_564_800_000_000


def iso(offset_s: float) -> str:
    return datetime.fromtimestamp(BASE + offset_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def trade(tid, product="BTC-USD", price=100.0, size=1.0, t=0.0, age_us=420, **extra):
    ev = {
        "type": "match",
        "product_id": product,
        "price": price,
        "last_size": size,
        "time": iso(t),
        "trade_id": tid,
        "ingest_ts_ms": (NOW_US - age_us) // 1000,
        "ingest_ts_us": NOW_US - age_us,
    }
    ev.update(extra)
    return ev


def batch(events) -> Batch:
    return Batch.of_events(events, NOW_US)


def make_settings(**overrides) -> P2Settings:
    return P2Settings(**overrides)


def sample(metrics: P2Metrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def counted(metrics: P2Metrics, name: str, **labels: str) -> float:
    """A counter's value, 0 while its series does not exist yet."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def eventually(cond, timeout: float = 20.0) -> None:
    """Wait until ``cond()`` holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def feed(bus: Bus, consumer, events) -> None:
    """Publish through the bus and hand the consumer what its queue holds, as the run loop would."""
    bus.publish(batch(events))
    for b in consumer.subscription.take_nowait():
        consumer.handle(b)


def broken(b: Batch) -> Batch:
    """A batch no receiver makes: a trade id that is not an int, so any consumer reading ids fails on it."""
    b.trade_ids = (b.trade_ids[0], "x", *b.trade_ids[2:])
    return b


def lines_batch(lines: list[bytes], recv_ts_us: int = 1000) -> Batch:
    """A batch that is only its recorded lines, as the recorders read it (no column is looked at)."""
    return Batch(lines, recv_ts_us, [[None] * len(lines)] * 8, [], [])


class ReferenceLru:
    """The duplicate memory as an OrderedDict, as first written."""

    def __init__(self, max_ids: int) -> None:
        self.max_ids = max_ids
        self.ids: OrderedDict[int, None] = OrderedDict()

    def observe(self, tid: int) -> bool:
        if tid in self.ids:
            self.ids.move_to_end(tid)
            return True
        self.ids[tid] = None
        if len(self.ids) > self.max_ids:
            self.ids.popitem(last=False)
        return False
