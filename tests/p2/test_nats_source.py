"""P2 as a JetStream shard, in process, against a real nats-server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import orjson
import pytest
from loguru import logger

from mercurystream.p2.app import P2App
from mercurystream.p2.batch import Batch
from mercurystream.p2.bus import Bus
from mercurystream.p2.config import P2Settings
from mercurystream.p2.consumer import Consumer
from mercurystream.p2.forensics import ForensicsConsumer
from mercurystream.p2.metrics import P2Metrics
from mercurystream.p2.recorder import RecorderConsumer
from mercurystream.shared.jetstream import (
    EVENTS_HEADER,
    MSG_ID_HEADER,
    StreamSettings,
    batch_id,
    consumer_name,
    encode_batch,
    ensure_stream,
    new_origin,
    shard_of,
    subject_for,
)

from .support import iso

PRODUCTS = [f"P{i}-USD" for i in range(12)]


class Seen(Consumer):
    """Every trade id this shard's consumers were handed, per product."""

    name = "seen"
    label = "SEEN"

    def __init__(self, bus: Bus, settings: P2Settings, metrics: P2Metrics) -> None:
        super().__init__(bus, settings.BUS_QUEUE_EVENTS)
        self.ids: list[tuple[str, int]] = []

    def handle(self, batch: Batch) -> None:
        self.ids.extend(zip(batch.product_ids, batch.trade_ids, strict=True))

    def status_line(self) -> str:
        return f"seen={len(self.ids)}"


class Gate(Seen):
    """A consumer that processes at once but reports nothing settled until opened (holds the acks)."""

    name = "gate"
    label = "GATE"
    open_ = False

    @property
    def settled(self) -> int:
        return super().settled if Gate.open_ else 0


def event(product: str, tid: int) -> bytes:
    return orjson.dumps(
        {"type": "match", "product_id": product, "price": 100.0 + tid % 7, "last_size": 1.0, "time": iso(tid / 1000),
         "trade_id": tid, "ingest_ts_ms": int(time.time() * 1000), "ingest_ts_us": int(time.time() * 1e6)}
    )  # fmt: skip


async def publish(url: str, per_product: int, products=PRODUCTS, per_msg: int = 25) -> int:
    """``per_product`` trades of each product in messages of ``per_msg``, as P1's sink makes them."""
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream(timeout=5)
        await ensure_stream(js, StreamSettings())
        origin, seq = new_origin(), 0
        for start in range(0, per_product, per_msg):
            for p in products:
                seq += 1
                body = [event(p, tid) for tid in range(start, min(start + per_msg, per_product))]
                headers = {MSG_ID_HEADER: batch_id(origin, seq), EVENTS_HEADER: str(len(body))}
                await js.publish(subject_for("coinbase", p), encode_batch(body), headers=headers)
        return seq
    finally:
        await nc.close()


async def consumer_state(url: str, shard: str) -> tuple[int, int] | None:
    """``(num_pending, num_ack_pending)`` of a shard's durable consumer; ``None`` before it exists."""
    from nats.js.errors import NotFoundError

    i, n = map(int, shard.split("/"))
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        info = await nc.jetstream(timeout=5).consumer_info("MERCURY_TRADES", consumer_name(i, n))
        return info.num_pending, info.num_ack_pending
    except NotFoundError:
        return None
    finally:
        await nc.close()


def settings_for(tmp_path: Path, url: str, shard: str = "0/1", **kw) -> P2Settings:
    base = {
        "P2_SOURCE": "nats",
        "P2_SHARD": shard,
        "NATS_URL": url,
        "HOST": "127.0.0.1",
        "PORT": 0,
        "METRICS_PORT": 0,
        "STATUS_INTERVAL_S": 0.2,
        "RECORD_FILE": tmp_path / f"rec-{shard.replace('/', '-')}.jsonl",
        "INCIDENTS_DIR": tmp_path / "incidents",
        "DRIFT_SAMPLE_FILE": tmp_path / "drift.jsonl",
        "INCIDENT_CHARTS": False,
    }
    return P2Settings(**{**base, **kw})


async def until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def value(app: P2App, name: str, **labels: str) -> float:
    v = app.metrics.registry.get_sample_value(name, {**labels, "shard": app.settings.P2_SHARD})
    return 0.0 if v is None else v


async def test_a_shard_consumes_processes_records_and_acknowledges(nats_server, tmp_path):
    async def go():
        await publish(nats_server, 100, PRODUCTS[:3])
        lines: list[str] = []
        sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
        app = P2App(settings_for(tmp_path, nats_server, RECORD=True), consumers=[Seen, RecorderConsumer])
        await app.start()
        try:
            seen = app.consumers[0]

            async def done():
                return len(seen.ids) == 300 and await consumer_state(nats_server, "0/1") == (0, 0)

            await until(done, 20, "300 events processed and every message acknowledged")
            assert sorted(seen.ids) == sorted((p, t) for p in PRODUCTS[:3] for t in range(100))
            for p in PRODUCTS[:3]:
                ids = [t for q, t in seen.ids if q == p]
                assert ids == sorted(ids)  # per-subject order
            assert value(app, "mercurystream_events_total") == 300
            assert value(app, "mercurystream_p2_nats_messages_total", action="processed") == 12
            assert value(app, "mercurystream_p2_nats_acked_total") == 12
            assert value(app, "mercurystream_latency_ms_count") == 300

            async def status_seen():
                return any(line.startswith("[shard 0/1] INGEST") and "msgs=12" in line for line in lines)

            await until(status_seen, 10, "the shard's status line")
        finally:
            await app.stop()
            logger.remove(sink)
        assert len(Path(app.settings.RECORD_FILE).read_bytes().splitlines()) == 300

    await asyncio.wait_for(go(), 60)


async def test_two_shards_split_the_products_disjointly_and_fully(nats_server, tmp_path):
    async def go():
        await publish(nats_server, 50)
        apps = [P2App(settings_for(tmp_path, nats_server, f"{i}/2"), consumers=[Seen]) for i in range(2)]
        for app in apps:
            await app.start()
        try:

            async def done():
                states = [await consumer_state(nats_server, f"{i}/2") for i in range(2)]
                return states == [(0, 0), (0, 0)] and sum(len(a.consumers[0].ids) for a in apps) == 600

            await until(done, 30, "both shards to finish")
            got = [set(a.consumers[0].ids) for a in apps]
            assert not got[0] & got[1]
            assert got[0] | got[1] == {(p, t) for p in PRODUCTS for t in range(50)}
            for i, ids in enumerate(got):
                assert {p for p, _ in ids} == {p for p in PRODUCTS if shard_of(p, 2) == i}
                assert ids  # 12 products: both shards have some
            for i, app in enumerate(apps):
                mine = sum(1 for p in PRODUCTS if shard_of(p, 2) == i) * 2
                assert value(app, "mercurystream_p2_nats_messages_total", action="processed") == mine
                assert value(app, "mercurystream_p2_nats_messages_total", action="foreign") == 24 - mine
        finally:
            for app in apps:
                await app.stop()

    await asyncio.wait_for(go(), 60)


async def test_a_redelivered_batch_is_skipped_not_a_venue_duplicate(nats_server, tmp_path):
    """The acks are held past ack_wait, so the server redelivers batches this shard already has."""

    async def go():
        await publish(nats_server, 40, PRODUCTS[:2], per_msg=20)
        Gate.open_ = False
        settings = settings_for(tmp_path, nats_server, NATS_ACK_WAIT_S=1.0)
        app = P2App(settings, consumers=[Gate, ForensicsConsumer])

        async def no_progress(older_than: float) -> None:
            return None

        app.source._in_progress = no_progress  # let ack_wait expire, as for a shard that stalled
        await app.start()
        try:
            gate = app.consumers[0]

            async def redelivered():
                return value(app, "mercurystream_p2_nats_redelivered_total", action="skipped") >= 4

            await until(redelivered, 20, "the redeliveries")
            Gate.open_ = True
            await until(lambda: _ready(consumer_state(nats_server, "0/1"), (0, 0)), 20, "every ack")
            assert sorted(gate.ids) == sorted((p, t) for p in PRODUCTS[:2] for t in range(40))
            assert value(app, "mercurystream_events_total") == 80
            assert value(app, "mercurystream_anomalies_total", type="duplicate") == 0
            assert value(app, "mercurystream_p2_nats_redelivered_total", action="reprocessed") == 0
        finally:
            Gate.open_ = True
            await app.stop()

    await asyncio.wait_for(go(), 60)


async def _ready(state, want) -> bool:
    return await state == want


async def test_unfinished_messages_are_redelivered_to_the_next_run_and_reprocessed(nats_server, tmp_path):
    """Stopped before its consumers settled, a shard leaves the messages unacknowledged; the next run gets them."""

    async def go():
        await publish(nats_server, 20, PRODUCTS[:2], per_msg=10)
        Gate.open_ = False
        first = P2App(settings_for(tmp_path, nats_server, NATS_ACK_WAIT_S=1.0), consumers=[Gate])
        await first.start()
        await until(lambda: _true(len(first.consumers[0].ids) == 40), 20, "the first run to process")
        await first.stop()
        assert value(first, "mercurystream_p2_nats_acked_total") == 0
        Gate.open_ = True
        second = P2App(settings_for(tmp_path, nats_server), consumers=[Gate, ForensicsConsumer])
        await second.start()
        try:
            await until(lambda: _ready(consumer_state(nats_server, "0/1"), (0, 0)), 20, "the redeliveries")
            assert sorted(second.consumers[0].ids) == sorted((p, t) for p in PRODUCTS[:2] for t in range(20))
            assert value(second, "mercurystream_p2_nats_redelivered_total", action="reprocessed") == 4
            assert value(second, "mercurystream_p2_nats_redelivered_events_total", action="reprocessed") == 40
            assert value(second, "mercurystream_anomalies_total", type="duplicate") == 0
        finally:
            await second.stop()

    await asyncio.wait_for(go(), 60)


async def _true(v: bool) -> bool:
    return v


@pytest.mark.parametrize("bad", ["1/1", "x", "0/0"])
def test_a_bad_shard_is_a_configuration_error(bad, tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        settings_for(tmp_path, "nats://127.0.0.1:1", bad)


class Batches(Seen):
    """Every bus batch's size and stream origin."""

    name = "batches"
    label = "BATCHES"

    def __init__(self, bus: Bus, settings: P2Settings, metrics: P2Metrics) -> None:
        super().__init__(bus, settings, metrics)
        self.batches: list[tuple[int, object]] = []

    def handle(self, batch: Batch) -> None:
        super().handle(batch)
        self.batches.append((len(batch), batch.origin))


async def test_a_fetch_is_one_bus_batch_and_a_broken_message_stays_alone(nats_server, tmp_path):
    """P2's cost is per batch: a fetch's whole-frame messages make one, which knows its stream sequences."""

    async def go():
        n = await publish(nats_server, 100, PRODUCTS[:3])  # 12 messages of 25 events
        nc = await nats.connect(nats_server, connect_timeout=5, max_reconnect_attempts=0)
        try:
            cut = encode_batch([event(PRODUCTS[0], 500), event(PRODUCTS[0], 501)])[:-7]
            await nc.jetstream(timeout=5).publish(subject_for("coinbase", PRODUCTS[0]), cut)
        finally:
            await nc.close()
        n += await publish(nats_server, 50, PRODUCTS[1:2])  # two more good messages, after the broken one
        app = P2App(settings_for(tmp_path, nats_server), consumers=[Batches])
        await app.start()
        try:
            seen = app.consumers[0]

            async def done():
                return await consumer_state(nats_server, "0/1") == (0, 0)

            await until(done, 20, "every message acknowledged")
            assert len(seen.ids) == 300 + 1 + 50  # the broken message's first event is whole
            assert len(seen.batches) <= 3  # the messages before the broken one, it, those after
            origins = [o for _, o in seen.batches]
            assert [o.first_seq for o in origins] == sorted(o.first_seq for o in origins)
            covered = [s for o in origins for s in range(o.first_seq, o.last_seq + 1)]
            assert covered == list(range(1, n + 2))
            assert any(o.first_seq == o.last_seq == 13 for o in origins), "the broken message alone"
            assert value(app, "mercurystream_frame_errors_total", reason="truncated") == 1
        finally:
            await app.stop()

    await asyncio.wait_for(go(), 60)


class SlowBatches(Batches):
    """Batches, taking a few milliseconds each, so a queue holds what the source publishes meanwhile."""

    name = "slow"
    label = "SLOW"

    def handle(self, batch: Batch) -> None:
        super().handle(batch)
        time.sleep(0.003)


class Quick(Consumer):
    """A consumer that never waits and does nothing: the source waits on its queue."""

    name = "quick"

    def handle(self, batch: Batch) -> None:
        pass

    def status_line(self) -> str:
        return ""


async def test_a_backlog_far_larger_than_the_queues_is_published_in_batches_that_fit_and_nothing_drops(
    nats_server, tmp_path
):
    """A shard that starts behind (restarted, or after a burst) fetches messages that together outgrow its queues:
    the stream holds the rest, each batch waits for room, and the bus drops nothing."""

    async def go():
        await publish(nats_server, 600, PRODUCTS[:4], per_msg=150)  # 16 messages of 150 events
        app = P2App(settings_for(tmp_path, nats_server, BUS_QUEUE_EVENTS=400), consumers=[SlowBatches])
        await app.start()
        try:
            seen = app.consumers[0]

            async def done():
                return len(seen.ids) == 2400 and await consumer_state(nats_server, "0/1") == (0, 0)

            await until(done, 30, "2,400 events processed and every message acknowledged")
            assert seen.subscription.dropped == 0
            assert value(app, "mercurystream_drops_total", consumer="slow") == 0
            assert max(n for n, _ in seen.batches) <= 200  # what a queue at its pause threshold has room for
            assert sorted(seen.ids) == sorted((p, t) for p in PRODUCTS[:4] for t in range(600))
        finally:
            await app.stop()

    await asyncio.wait_for(go(), 60)


def test_a_batch_waits_until_every_waited_on_queue_has_room_for_all_of_it() -> None:
    from mercurystream.p2.nats_source import Backlog

    bus = Bus(queue_bytes=100_000, pause_bytes=40_000)
    quick = Quick(bus, 100)
    backlog = Backlog(bus, [quick])
    assert backlog.batch_limits() == (60_000, 50)
    assert backlog.fits(10**6, 10**9)  # an empty queue takes anything: waiting would not make room
    bus.publish(Batch.of_events([{"i": i} for i in range(60)]))
    depth_bytes = quick.subscription.depth_bytes
    assert backlog.fits(40, 100_000 - depth_bytes)
    assert not backlog.fits(41, 10)
    assert not backlog.fits(1, 100_001 - depth_bytes)


@pytest.mark.parametrize(("var", "value"), [("P2_SHARD", "2/2"), ("P2_SOURCE", "kafka"), ("NATS_URL", "http://x")])
def test_mercury_p2_exits_2_with_one_line_on_a_bad_nats_setting(var, value):
    import os
    import subprocess
    import sys

    from mercurystream.processes import child_env

    env = child_env({var: value})
    got = subprocess.run([os.path.join(os.path.dirname(sys.executable), "mercury-p2")], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert got.returncode == 2
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1 and var in lines[0], got.stderr


def test_the_source_stops_fetching_before_a_waited_on_queue_could_drop() -> None:
    from mercurystream.p2.nats_source import Backlog

    class Waits(Quick):
        name = "waits"

        async def handle_async(self, batch: Batch) -> None:
            pass

    bus = Bus(queue_bytes=100_000, pause_bytes=40_000)
    quick, waits = Quick(bus, 100), Waits(bus, 100)
    backlog = Backlog(bus, [quick, waits])
    behind = backlog.behind
    assert backlog.room_bytes() == 100_000
    one = Batch.of_events([{"i": 0, "pad": "x" * 1000}])
    while quick.subscription.depth_bytes <= 40_000:
        assert not behind()
        bus.publish(one)
    assert behind() and quick.subscription.dropped == 0  # past pause_bytes, long before the byte bound
    assert backlog.room_bytes() == 100_000 - quick.subscription.depth_bytes
    quick.subscription.take_nowait()
    assert not behind()  # the consumer that waits (the slow demo one) is not waited on
    small = Batch.of_events([{"i": 1}])
    for _ in range(51):
        bus.publish(small)
    assert behind()  # past half the bound in events


def test_a_fetch_asks_for_no_more_messages_than_the_fullest_queue_has_room_for() -> None:
    from mercurystream.p2.batch import Batch
    from mercurystream.p2.bus import Bus
    from mercurystream.p2.metrics import P2Metrics
    from mercurystream.p2.nats_source import Backlog, NatsSource
    from mercurystream.shared.jetstream import StreamSettings

    bus = Bus(queue_bytes=1_000_000, pause_bytes=400_000)
    sub = bus.subscribe("only", 1_000_000)
    backlog = Backlog(bus, [])
    backlog.subs = [sub]
    source = NatsSource("nats://127.0.0.1:4222", StreamSettings(), (0, 1), bus, P2Metrics(), lambda: 0, backlog)
    assert source._fetch_size() == 64  # nothing measured yet
    source._msg_bytes = 50_000  # a P1 message of 2 ms of trades at a high rate, as the bus counts it
    assert source._fetch_size() == 20
    bus.publish(Batch.of_events([{"i": i, "pad": "x" * 1000} for i in range(300)]))
    assert source._fetch_size() == max(1, (1_000_000 - sub.depth_bytes) // 50_000) < 20
    source._msg_bytes = 10**9
    assert source._fetch_size() == 1  # at least one: the pause before a fetch, not its size, waits for room
