"""The bus: exact drop-oldest accounting, per-subscriber isolation, and a slow consumer that slows no one."""

from __future__ import annotations

import asyncio
import time

import pytest

from mercurystream.p2.batch import Batch
from mercurystream.p2.bus import Bus, Subscription
from mercurystream.p2.consumer import Consumer


def batch(start: int, n: int) -> Batch:
    return Batch.of_events([{"i": i} for i in range(start, start + n)])


def queued_ids(sub: Subscription) -> list[int]:
    out = []
    for b in sub.take_nowait():
        out.extend(line_id(line) for line in b.lines)
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
    bus.publish(Batch.empty())
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
        self.seen.extend(line_id(line) for line in batch.lines)

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


async def test_consumer_stop_drains_and_only_the_failing_event_is_counted() -> None:
    class Flaky(Counting):
        name = "flaky"

        def handle(self, batch: Batch) -> None:
            if line_id(batch.lines[0]) == 5:
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
    assert c.failed == 1  # only event 5: the rest of its batch is handed over again one at a time
    assert c.processed == 20 and c.passed_on == 19
    assert sum(processed) == 20
    assert c.seen == [*range(5), *range(6, 20)]
    assert c.status() == "FAST       | seen=19"


# --- data derived once per batch ------------------------------------------------------------------


# --- the byte bound ------------------------------------------------------------------------------


def sized(start: int, n: int, pad: int) -> Batch:
    return Batch.of_events([{"i": i, "pad": "x" * pad} for i in range(start, start + n)])


def ids_of(sub: Subscription) -> list[int]:
    return [int(line.split(b'"i":')[1].split(b",")[0]) for b in sub.take_nowait() for line in b.lines]


def test_nbytes_counts_lines_and_a_fixed_overhead_per_event() -> None:
    from mercurystream.p2.batch import EVENT_OVERHEAD_BYTES

    b = sized(0, 3, 100)
    assert b.nbytes == sum(map(len, b.lines)) + 3 * EVENT_OVERHEAD_BYTES
    assert b.events_to_free(0) == 0
    assert b.events_to_free(1) == 1
    assert b.events_to_free(b.nbytes) == 3
    assert b.events_to_free(10 * b.nbytes) == 3


def test_the_byte_bound_drops_the_oldest_and_counts_them_apart() -> None:
    drops: list[tuple[str, int]] = []
    bus = Bus(on_drop=lambda name, n: drops.append((name, n)), queue_bytes=10_000)
    sub = bus.subscribe("a", 1_000_000)
    one = sized(0, 1, 1000).nbytes
    per = 10_000 // one  # events that fit
    for i in range(3 * per):
        bus.publish(sized(i, 1, 1000))
    assert sub.depth_bytes <= 10_000
    assert sub.depth == per
    assert sub.dropped == sub.dropped_bytes == 2 * per
    assert sum(n for _, n in drops) == 2 * per
    assert ids_of(sub) == list(range(2 * per, 3 * per))
    assert sub.depth_bytes == 0


def test_the_byte_bound_cuts_into_a_batch_and_keeps_the_newest_of_a_huge_one() -> None:
    bus = Bus(queue_bytes=20_000)
    sub = bus.subscribe("a", 1_000_000)
    bus.publish(sized(0, 10, 1000))  # about 15 KB
    bus.publish(sized(10, 4, 1000))  # over the bound: the oldest events of the first batch go
    assert sub.depth_bytes <= 20_000
    kept = ids_of(sub)
    assert kept == list(range(14 - len(kept), 14))
    assert sub.dropped_bytes == 14 - len(kept) > 0
    bus.publish(sized(100, 1, 50_000))  # one event larger than the bound: it stays, alone
    assert ids_of(sub) == [100]
    bus.publish(sized(200, 3, 30_000))  # a batch larger than the bound keeps its newest event
    assert ids_of(sub) == [202]


def test_both_bounds_together_account_every_event() -> None:
    bus = Bus(queue_bytes=8_000)
    sub = bus.subscribe("a", 7)
    total = 0
    for i in range(50):
        b = sized(total, 1 + i % 5, 200 * (i % 7))
        total += len(b)
        bus.publish(b)
        assert sub.depth <= 7
        assert sub.depth_bytes <= 8_000 or sub.depth == 1
        assert sub.depth + sub.dropped + sub.delivered == total
        if i % 9 == 0:
            sub.take_nowait()
    assert 0 < sub.dropped_bytes < sub.dropped


# ---------------------------------------------------------------- pressure: pause the sources, not drop


def pressured_bus(pause_bytes: int, queue_bytes: int = 1 << 20) -> tuple[Bus, list[bool]]:
    bus = Bus(queue_bytes=queue_bytes, pause_bytes=pause_bytes)
    calls: list[bool] = []
    bus.on_pressure(calls.append)
    return bus, calls


def test_the_bus_asks_to_pause_once_every_queue_is_past_pause_bytes_and_resumes_at_half() -> None:
    bus, calls = pressured_bus(pause_bytes=10_000)
    a, b = bus.subscribe("a", 1_000_000), bus.subscribe("b", 1_000_000)
    one = sized(0, 1, 1000).nbytes
    i = 0
    while bus.backlog_bytes() <= 10_000:
        assert calls == []
        bus.publish(sized(i, 1, 1000))
        i += 1
    assert calls == [True] and bus.paused and bus.pauses == 1
    bus.publish(sized(i, 1, 1000))  # still paused: no second call, nothing dropped
    assert calls == [True] and a.dropped == b.dropped == 0
    a.take_nowait(1)  # one queue still holds more than half: paused
    assert bus.paused
    a.take_nowait()  # the least-behind queue is empty: every source may read again
    assert calls == [True, False] and not bus.paused
    assert b.depth_bytes > 10_000  # one lagging subscriber alone never pauses the sources
    for j in range(20):
        bus.publish(sized(1000 + j, 1, 1000))
        a.take_nowait()
    assert calls == [True, False]
    assert a.dropped == b.dropped == 0 and one * 20 < b.max_bytes


def test_a_bus_without_listeners_or_with_pause_bytes_0_never_pauses() -> None:
    quiet = Bus(queue_bytes=20_000, pause_bytes=5_000)
    off, calls = pressured_bus(pause_bytes=0, queue_bytes=20_000)
    for bus in (quiet, off):
        sub = bus.subscribe("a", 1_000_000)
        for i in range(100):
            bus.publish(sized(i, 1, 1000))
        assert not bus.paused and bus.pauses == 0
        assert sub.dropped_bytes > 0  # the byte bound still drops the oldest
    assert calls == []
