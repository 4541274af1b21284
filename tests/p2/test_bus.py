"""The bus: exact drop-oldest accounting, per-subscriber isolation, and a slow consumer that slows no one."""

from __future__ import annotations

import asyncio
import time

import pytest

from mercurystream.p2.bus import Batch, Bus, Subscription
from mercurystream.p2.consumer import Consumer


def batch(start: int, n: int) -> Batch:
    events = [{"i": i} for i in range(start, start + n)]
    return Batch(events, [b'{"i":%d}' % i for i in range(start, start + n)], 0)


def queued_ids(sub: Subscription) -> list[int]:
    out = []
    for b in sub.take_nowait():
        assert [line_id(line) for line in b.lines] == [e["i"] for e in b.events]
        out.extend(e["i"] for e in b.events)
    return out


def line_id(line: bytes) -> int:
    return int(line.split(b":")[1].rstrip(b"}"))


def test_under_capacity_nothing_drops() -> None:
    bus = Bus()
    sub = bus.subscribe("a", 10)
    bus.publish(batch(0, 4))
    bus.publish(batch(4, 6))
    assert (sub.depth, sub.dropped) == (10, 0)
    assert queued_ids(sub) == list(range(10))
    assert (sub.depth, sub.delivered) == (0, 10)


def test_drop_oldest_cuts_into_the_oldest_batch() -> None:
    drops: list[tuple[str, int]] = []
    bus = Bus(on_drop=lambda name, n: drops.append((name, n)))
    sub = bus.subscribe("a", 10)
    bus.publish(batch(0, 4))
    bus.publish(batch(4, 4))
    bus.publish(batch(8, 5))  # 13 queued > 10: the 3 oldest go, cutting into the first batch
    assert sub.dropped == 3
    assert sub.depth == 10
    assert drops == [("a", 3)]
    assert queued_ids(sub) == list(range(3, 13))


def test_drop_oldest_removes_whole_batches_then_part_of_the_next() -> None:
    bus = Bus()
    sub = bus.subscribe("a", 10)
    for i in range(5):
        bus.publish(batch(i * 2, 2))
    bus.publish(batch(10, 7))  # 17 queued: three whole 2-event batches and one event of the fourth go
    assert sub.dropped == 7
    assert queued_ids(sub) == list(range(7, 17))


def test_batch_larger_than_capacity_keeps_its_newest_events() -> None:
    drops: list[tuple[str, int]] = []
    bus = Bus(on_drop=lambda name, n: drops.append((name, n)))
    sub = bus.subscribe("a", 5)
    bus.publish(batch(0, 3))
    bus.publish(batch(3, 12))
    assert sub.dropped == 3 + 7
    assert drops == [("a", 10)]
    assert queued_ids(sub) == list(range(10, 15))


@pytest.mark.parametrize("capacity", [1, 2, 7, 50])
def test_conservation_over_many_batches(capacity: int) -> None:
    bus = Bus()
    sub = bus.subscribe("a", capacity)
    taken: list[int] = []
    start = 0
    for k, n in enumerate([1, 3, 9, 0, 2, 60, 5, 1, 1, 13] * 3):
        bus.publish(batch(start, n))
        start += n
        assert sub.depth <= capacity
        if k % 4 == 3:
            taken.extend(queued_ids(sub))
    taken.extend(queued_ids(sub))
    assert bus.published == start
    assert len(taken) + sub.dropped == start
    assert taken == sorted(taken)  # order kept: only the oldest are ever dropped
    assert sub.delivered == len(taken)


def test_take_nowait_respects_max_events_in_whole_batches() -> None:
    bus = Bus()
    sub = bus.subscribe("a", 100)
    for i in range(5):
        bus.publish(batch(i * 10, 10))
    first = sub.take_nowait(max_events=15)
    assert [len(b) for b in first] == [10, 10]
    assert sub.depth == 30
    assert sum(len(b) for b in sub.take_nowait()) == 30
    assert sub.empty


def test_subscribers_are_isolated() -> None:
    drops: list[tuple[str, int]] = []
    bus = Bus(on_drop=lambda name, n: drops.append((name, n)))
    small = bus.subscribe("small", 3)
    big = bus.subscribe("big", 100)
    for i in range(10):
        bus.publish(batch(i * 2, 2))
    assert (small.depth, small.dropped) == (3, 17)
    assert (big.depth, big.dropped) == (20, 0)
    assert {name for name, _ in drops} == {"small"}
    assert bus.depths() == {"small": 3, "big": 20}
    queued_ids(big)
    assert small.depth == 3
    assert not bus.drained()
    queued_ids(small)
    assert bus.drained()


def test_subscriber_names_are_unique_and_capacity_positive() -> None:
    bus = Bus()
    bus.subscribe("a", 1)
    with pytest.raises(ValueError):
        bus.subscribe("a", 1)
    with pytest.raises(ValueError):
        bus.subscribe("b", 0)


def test_empty_batch_is_ignored() -> None:
    bus = Bus()
    sub = bus.subscribe("a", 1)
    bus.publish(Batch([], [], 0))
    assert sub.empty
    assert bus.published == 0


async def test_wait_returns_once_a_batch_is_published() -> None:
    bus = Bus()
    sub = bus.subscribe("a", 10)
    waiter = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    bus.publish(batch(0, 2))
    await asyncio.wait_for(waiter, 5)
    got = sub.take_nowait()
    assert [len(b) for b in got] == [2]


class Counting(Consumer):
    name = "fast"
    label = "FAST"

    def __init__(self, bus: Bus, capacity: int) -> None:
        super().__init__(bus, capacity)
        self.seen: list[int] = []

    def handle(self, batch: Batch) -> None:
        self.seen.extend(e["i"] for e in batch.events)

    def status_line(self) -> str:
        return f"seen={len(self.seen)}"


class Sleeping(Counting):
    name = "slow"
    label = "SLOW"

    def __init__(self, bus: Bus, capacity: int, delay_s: float) -> None:
        super().__init__(bus, capacity)
        self.delay_s = delay_s

    async def handle_async(self, batch: Batch) -> None:
        await asyncio.sleep(self.delay_s)
        self.handle(batch)


async def test_slow_consumer_slows_neither_the_publisher_nor_another_consumer() -> None:
    """THE slow-consumer proof.

    The publisher behaves like the TCP reader: publish a batch, yield to the loop, repeat. If
    publishing waited for the slow consumer, 200 batches would take 200 x 50 ms = 10 s; they take
    milliseconds. The fast consumer sees every event in order with zero drops while the slow one,
    with the same queue size, drops the oldest and accounts for every event it did not process.
    """
    bus = Bus()
    fast = Counting(bus, capacity=1000)
    slow = Sleeping(bus, capacity=1000, delay_s=0.05)
    await fast.start()
    await slow.start()
    batches, size = 200, 100
    total = batches * size
    t0 = time.perf_counter()
    for i in range(batches):
        bus.publish(batch(i * size, size))
        await asyncio.sleep(0)
    publish_s = time.perf_counter() - t0

    deadline = time.monotonic() + 30
    while len(fast.seen) < total and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    fast_done_s = time.perf_counter() - t0

    assert publish_s < batches * slow.delay_s / 5
    assert fast.seen == list(range(total))
    assert fast.subscription.dropped == 0
    assert fast_done_s < batches * slow.delay_s / 2
    assert slow.subscription.dropped > 0
    assert len(slow.seen) < total / 2

    await fast.stop()
    await slow.stop(drain_timeout_s=30)
    assert len(slow.seen) + slow.subscription.dropped == total
    assert slow.seen == sorted(slow.seen)
    assert slow.seen[-1] == total - 1  # drop-oldest keeps the freshest


async def test_consumer_stop_drains_and_a_failing_batch_is_counted() -> None:
    class Flaky(Counting):
        name = "flaky"

        def handle(self, batch: Batch) -> None:
            if batch.events[0]["i"] == 5:
                raise RuntimeError("boom")
            super().handle(batch)

    bus = Bus()
    c = Flaky(bus, capacity=100)
    processed: list[int] = []
    c.on_processed(lambda name, n: processed.append(n))
    await c.start()
    for i in range(4):
        bus.publish(batch(i * 5, 5))
    await c.stop()
    assert c.failed == 5
    assert c.processed == 20
    assert sum(processed) == 20
    assert c.seen == [*range(5), *range(10, 20)]
    assert c.status() == "FAST       | seen=15"


# --- data derived once per batch ------------------------------------------------------------------


class Squares:
    """A derived column: each event's ``i`` squared."""

    made = 0

    def __init__(self, values: list[int]) -> None:
        self.values = values

    @classmethod
    def of(cls, b: Batch) -> Squares:
        cls.made += 1
        return cls([e["i"] ** 2 for e in b.events])

    def tail(self, start: int) -> Squares:
        return Squares(self.values[start:])


def test_derived_data_is_computed_once_and_shared_by_every_subscriber() -> None:
    Squares.made = 0
    bus = Bus()
    subs = [bus.subscribe(name, 100) for name in ("a", "b", "c")]
    bus.publish(batch(0, 4))
    seen = [sub.take_nowait()[0].derived(Squares) for sub in subs]
    assert Squares.made == 1
    assert all(s is seen[0] for s in seen)
    assert seen[0].values == [0, 1, 4, 9]


def test_a_dropped_head_slices_what_was_derived_and_the_receiver_columns() -> None:
    Squares.made = 0
    bus = Bus()
    early = bus.subscribe("early", 100)
    late = bus.subscribe("late", 3)
    b = Batch(
        [{"i": i} for i in range(5)], [b"x"] * 5, 0, latencies_ms=[0.5, 1.5, 2.5, 3.5, 4.5], ingest_us=[1, 2, 3, 4, 5]
    )
    b.derived(Squares)
    bus.publish(b)
    (tail,) = late.take_nowait()
    assert [e["i"] for e in tail.events] == [2, 3, 4]
    assert tail.derived(Squares).values == [4, 9, 16]
    assert Squares.made == 1  # sliced, not recomputed
    assert tail.latencies_ms == [2.5, 3.5, 4.5] and tail.ingest_us == [3, 4, 5]
    (whole,) = early.take_nowait()
    assert whole is b


def test_a_tail_keeps_each_latency_with_its_event_when_some_have_none() -> None:
    b = Batch([{"i": i} for i in range(6)], [b"x"] * 6, 0, latencies_ms=[0.5, 2.5, 3.5, 5.5], latency_at=[0, 2, 3, 5])
    tail = b.tail(3)
    assert tail.latencies_ms == [3.5, 5.5] and tail.latency_at == [0, 2]
    assert b.tail(6).latencies_ms == [] and b.tail(6).latency_at == []


def test_a_tail_of_a_batch_without_derived_data_derives_its_own() -> None:
    Squares.made = 0
    b = Batch([{"i": i} for i in range(4)], [b"x"] * 4, 0)
    tail = b.tail(2)
    assert tail.latencies_ms is None and tail.ingest_us is None
    assert tail.derived(Squares).values == [4, 9]
    assert Squares.made == 1
