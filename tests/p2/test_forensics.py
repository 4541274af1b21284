"""ForensicsConsumer end to end: batches in, metrics, status line, bundles and drift samples on disk."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from mercurystream.p2.batch import Batch
from mercurystream.p2.bus import Bus
from mercurystream.p2.config import P2Settings
from mercurystream.p2.forensics import ForensicsConsumer
from mercurystream.p2.metrics import P2Metrics
from tests.p2.support import broken


def event(tid: int, pid: str = "BTC-USD", lat_us: int = 400, **extra) -> dict:
    ingest = 1_714_564_800_000_000 + tid * 1000
    e = {
        "type": "match",
        "product_id": pid,
        "price": 60000.0 + tid,
        "last_size": 0.01,
        "time": f"2024-05-01T12:00:00.{tid:06d}Z",
        "trade_id": tid,
        "ingest_ts_ms": ingest // 1000,
        "ingest_ts_us": ingest,
        "recv_ts_ms": (ingest + lat_us) // 1000,
        "recv_ts_us": ingest + lat_us,
    }
    e.update(extra)
    return e


def batch(events: list[dict]) -> Batch:
    return Batch.of_events(events)


def make(tmp_path, bus=None, **overrides):
    values = {
        "INCIDENTS_DIR": tmp_path / "incidents",
        "DRIFT_SAMPLE_FILE": tmp_path / "drift.jsonl",
        "FLIGHT_PRE_EVENTS": 10,
        "FLIGHT_POST_EVENTS": 3,
        "FLIGHT_COOLDOWN_S": 60.0,
        "GAP_REORDER_WINDOW": 2,
    }
    values.update(overrides)
    settings = P2Settings(**values)
    metrics = P2Metrics()
    clock = {"t": 100.0}
    consumer = ForensicsConsumer(bus or Bus(), settings, metrics, clock=lambda: clock["t"], chart=False)
    return consumer, metrics, clock


def sample(metrics: P2Metrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


def test_status_line_is_the_seeds(tmp_path):
    consumer, _, _ = make(tmp_path)
    assert consumer.status() == ("FORENSICS  | processed=0 | drift=0 | dup=0 | ooo=0 | gaps=0 | spikes=0 | incidents=0")
    consumer.writer.stop(5)


def test_duplicate_batch_produces_a_bundle_with_exact_meta(tmp_path):
    consumer, metrics, _ = make(tmp_path)
    stream = [event(k) for k in range(1, 9)] + [event(5), event(9), event(6), event(10), event(11)]
    try:
        consumer.handle(batch(stream))
        assert consumer.writer.wait_idle(30)
    finally:
        consumer.writer.stop(30)
    assert consumer.counts == {
        "schema_drift": 0,
        "duplicate": 2,
        "out_of_order": 2,
        "sequence_gap": 0,
        "latency_spike": 0,
    }
    assert consumer.incidents_written == 1
    path = consumer.last_bundle_path
    assert path.parent == tmp_path / "incidents"
    meta = orjson.loads((path / "meta.json").read_bytes())
    assert meta["type"] == "duplicate" and meta["product_id"] == "BTC-USD"
    assert (meta["pre_events"], meta["post_events"], meta["trigger_line"], meta["complete"]) == (9, 3, 9, True)
    assert meta["counters_at_trigger"] == {
        "processed": 9,
        "schema_drift": 0,
        "duplicate": 1,
        "out_of_order": 1,
        "sequence_gap": 0,
        "latency_spike": 0,
        "incidents_written": 0,
    }
    assert [(s["type"], s["line"]) for s in meta["suppressed_triggers"]] == [("duplicate", 11)]
    assert meta["config"]["FLIGHT_POST_EVENTS"] == 3
    assert meta["config"]["INCIDENTS_DIR"] == str(tmp_path / "incidents")
    lines = (path / "events.jsonl").read_bytes().splitlines()
    assert lines == [orjson.dumps(e) for e in stream[:12]]
    assert orjson.loads(lines[meta["trigger_line"] - 1])["trade_id"] == 5
    assert sample(metrics, "mercurystream_anomalies_total", type="duplicate") == 2
    assert sample(metrics, "mercurystream_anomalies_total", type="out_of_order") == 2
    assert sample(metrics, "mercurystream_anomalies_total", type="sequence_gap") == 0
    assert sample(metrics, "mercurystream_incidents_total", type="duplicate") == 1
    assert sample(metrics, "mercurystream_incident_triggers_suppressed_total", type="duplicate") == 1
    assert consumer.status_line().endswith("dup=2 | ooo=2 | gaps=0 | spikes=0 | incidents=1")


def test_gap_capture_spans_batches_and_cooldown_suppresses_the_next(tmp_path):
    consumer, metrics, clock = make(tmp_path, FLIGHT_POST_EVENTS=4)
    try:
        consumer.handle(batch([event(k) for k in (1, 2, 3, 6, 7)]))
        assert consumer.recorder.active is None
        consumer.handle(batch([event(8)]))  # 4, 5 due two events after 6
        assert consumer.recorder.active is not None
        consumer.handle(batch([event(k) for k in (9, 10, 11, 12, 13)]))
        clock["t"] = 130.0
        consumer.handle(batch([event(k) for k in (20, 21, 22, 23)]))
        assert consumer.writer.wait_idle(30)
    finally:
        consumer.writer.stop(30)
    assert consumer.counts["sequence_gap"] == 2 + 6
    assert consumer.incidents_written == 1
    meta = orjson.loads((consumer.last_bundle_path / "meta.json").read_bytes())
    assert meta["type"] == "sequence_gap" and meta["detail"]["ranges"] == [[4, 5]]
    assert (meta["pre_events"], meta["post_events"], meta["trigger_line"]) == (6, 4, 6)
    assert meta["suppressed_triggers"] == []
    assert sample(metrics, "mercurystream_incident_triggers_suppressed_total", type="sequence_gap") == 1
    assert sample(metrics, "mercurystream_anomalies_total", type="sequence_gap") == 8


def test_drift_samples_are_paced_and_written(tmp_path):
    consumer, metrics, _ = make(tmp_path, DRIFT_SAMPLES_PER_MIN=2)
    bad = [event(k, price=str(k), vendor="x") for k in range(1, 6)]
    try:
        consumer.handle(batch(bad))
        assert consumer.writer.wait_idle(30)
    finally:
        consumer.writer.stop(30)
    assert consumer.counts["schema_drift"] == 5
    rows = [orjson.loads(line) for line in (tmp_path / "drift.jsonl").read_bytes().splitlines()]
    assert len(rows) == 2
    assert rows[0]["event"] == bad[0]
    assert rows[0]["missing"] == []
    assert rows[0]["mismatched"] == [{"key": "price", "expected": "number", "got": "str"}]
    assert rows[0]["unexpected"] == ["vendor"]
    assert rows[0]["time"].endswith("Z")
    assert sample(metrics, "mercurystream_anomalies_total", type="schema_drift") == 5
    assert sample(metrics, "mercurystream_drift_samples_total") == 2


def test_a_failing_disk_does_not_stop_the_pipeline(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    consumer, metrics, _ = make(tmp_path, INCIDENTS_DIR=blocker / "incidents", FLIGHT_POST_EVENTS=0)
    try:
        consumer.handle(batch([event(1), event(1)]))
        consumer.handle(batch([event(2)]))
        assert consumer.writer.wait_idle(30)
    finally:
        consumer.writer.stop(30)
    assert consumer.incidents_written == 0 and consumer.writer.errors == 1
    assert sample(metrics, "mercurystream_incident_write_errors_total") == 1
    assert consumer.counts["duplicate"] == 1


async def wait_for(pred, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(0.01)
    return pred()


async def test_stop_during_a_capture_writes_it_incomplete(tmp_path):
    bus = Bus()
    settings = P2Settings(
        INCIDENTS_DIR=tmp_path / "incidents",
        DRIFT_SAMPLE_FILE=tmp_path / "drift.jsonl",
        FLIGHT_PRE_EVENTS=100,
        FLIGHT_POST_EVENTS=1000,
    )
    metrics = P2Metrics()
    consumer = ForensicsConsumer(bus, settings, metrics, chart=False)
    await consumer.start()
    try:
        bus.publish(batch([event(k) for k in range(1, 50)]))
        bus.publish(batch([event(10), *[event(k) for k in range(50, 60)]]))
        assert await wait_for(lambda: consumer.processed == 60)
        assert consumer.recorder.active is not None
    finally:
        await consumer.stop()
    assert consumer.incidents_written == 1
    meta = orjson.loads((consumer.last_bundle_path / "meta.json").read_bytes())
    assert meta["complete"] is False
    assert (meta["pre_events"], meta["post_events"], meta["post_target"], meta["trigger_line"]) == (50, 10, 1000, 50)
    assert meta["counters_at_trigger"]["processed"] == 50
    report = (consumer.last_bundle_path / "report.md").read_text()
    assert "incomplete: finalized at shutdown with 10 of 1,000 post events" in report
    assert sample(metrics, "mercurystream_incidents_total", type="duplicate") == 1


async def test_failed_batch_is_counted_by_the_shell(tmp_path):
    bus = Bus()
    consumer, _, _ = make(tmp_path, bus)
    await consumer.start()
    try:
        bus.publish(broken(batch([event(1), event(3)])))
        bus.publish(batch([event(2)]))
        assert await wait_for(lambda: consumer.processed == 3)
    finally:
        await consumer.stop()
    assert consumer.failed == 1 and consumer.passed_on == 2


@pytest.mark.parametrize("posts", [0, 2])
def test_counters_at_trigger_exclude_later_events_of_the_batch(tmp_path, posts):
    consumer, _, _ = make(tmp_path, FLIGHT_POST_EVENTS=posts, FLIGHT_COOLDOWN_S=0)
    try:
        consumer.handle(batch([event(1), event(2)]))
        consumer.processed = 2
        consumer.handle(batch([event(1, price="x"), event(3), event(2), event(4), event(1)]))
        assert consumer.writer.wait_idle(30)
    finally:
        consumer.writer.stop(30)
    metas = sorted(
        (orjson.loads((p / "meta.json").read_bytes()) for p in (tmp_path / "incidents").iterdir()),
        key=lambda m: m["counters_at_trigger"]["processed"],
    )
    first = metas[0]["counters_at_trigger"]
    assert first["processed"] == 3
    assert (first["schema_drift"], first["duplicate"], first["out_of_order"]) == (1, 1, 1)


def test_flight_recorder_off_still_counts_every_anomaly_but_writes_no_bundle(tmp_path):
    consumer, metrics, _ = make(tmp_path, FLIGHT_RECORDER=False)
    stream = [event(k) for k in range(1, 9)] + [event(5), event(9), event(6), event(10), event(11)]
    try:
        consumer.handle(batch(stream))
        assert consumer.finalize() is None
        assert consumer.writer.wait_idle(30)
    finally:
        consumer.writer.stop(30)
    assert consumer.counts["duplicate"] == 2
    assert sample(metrics, "mercurystream_anomalies_total", type="duplicate") == 2
    assert consumer.incidents_written == 0
    assert not (tmp_path / "incidents").exists() or not any((tmp_path / "incidents").iterdir())


def test_chart_waits_while_p2_is_busy_and_follows_when_it_is_not(tmp_path):
    busy = {"v": True}
    settings = P2Settings(
        INCIDENTS_DIR=tmp_path / "incidents", DRIFT_SAMPLE_FILE=tmp_path / "d.jsonl", FLIGHT_PRE_EVENTS=10
    )
    consumer = ForensicsConsumer(Bus(), settings, P2Metrics(), busy=lambda: busy["v"])
    consumer.open()
    try:
        consumer.handle(batch([event(1), event(2), event(2)]))
        consumer.finalize()
        assert consumer.writer.wait_idle(30)
        path = consumer.last_bundle_path
        assert poll(lambda: consumer.spare_cpu.share is not None)
        assert consumer.writer.charts_pending == 1 and not (path / "chart.png").exists()
        assert "Not drawn yet" in (path / "report.md").read_text()
        busy["v"] = False
        assert consumer.writer.wait_charts(120)
    finally:
        consumer.writer.stop(30)
    assert (path / "chart.png").stat().st_size > 1000
    assert "](chart.png)" in (path / "report.md").read_text()


def poll(pred, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def test_a_dump_writes_the_ring_as_a_manual_bundle(tmp_path):
    bus = Bus()
    consumer, metrics, _ = make(tmp_path, bus, FLIGHT_PRE_EVENTS=4)
    stream = [event(k) for k in range(1, 7)] + [event(2, pid="ETH-USD")]
    try:
        bus.publish(batch(stream))
        assert consumer.process_pending() == 7
        cap = consumer.dump("disk filled up", source="http")
        assert cap.id and cap.type == "manual"
        assert consumer.writer.wait_idle(30)
    finally:
        consumer.writer.stop(30)
    path = tmp_path / "incidents" / cap.id
    assert consumer.last_bundle_path == path
    meta = orjson.loads((path / "meta.json").read_bytes())
    assert meta["type"] == "manual" and meta["reason"] == "disk filled up"
    assert (meta["pre_events"], meta["post_events"], meta["trigger_line"], meta["complete"]) == (4, 0, 4, True)
    assert meta["pre_bound"] == "events" and meta["detail"]["source"] == "http"
    assert meta["affected_symbols"] == ["BTC-USD", "ETH-USD"]
    assert meta["counters_at_trigger"]["processed"] == 7
    assert meta["config"]["FLIGHT_MAX_AGE_S"] == 0.0
    assert (path / "events.jsonl").read_bytes().splitlines() == [orjson.dumps(e) for e in stream[3:]]
    report = (path / "report.md").read_text()
    assert "| **Type** | manual |" in report
    assert "| **Pre-window Bound** | events: the ring was full (FLIGHT_PRE_EVENTS=4) |" in report
    assert sample(metrics, "mercurystream_incidents_total", type="manual") == 1


def test_a_dump_is_refused_without_a_flight_recorder_or_events(tmp_path):
    from mercurystream.p2.flight_recorder import DumpRefused

    off, _, _ = make(tmp_path, FLIGHT_RECORDER=False)
    empty, _, _ = make(tmp_path)
    try:
        with pytest.raises(DumpRefused) as refused:
            off.dump("x")
        assert refused.value.reason == "disabled"
        with pytest.raises(DumpRefused) as refused:
            empty.dump("x")
        assert refused.value.reason == "empty"
    finally:
        off.writer.stop(5)
        empty.writer.stop(5)


def test_the_age_bound_uses_the_batch_arrival_and_is_reported(tmp_path):
    consumer, _, _ = make(tmp_path, FLIGHT_MAX_AGE_S=1.0, FLIGHT_POST_EVENTS=0, FLIGHT_COOLDOWN_S=0)
    first = [event(k) for k in range(1, 4)]
    try:
        consumer.handle(Batch.of_events(first, 1_000_000))
        late = [event(4), event(2)]
        consumer.handle(Batch.of_events(late, 2_000_001))
        assert consumer.writer.wait_idle(30)
    finally:
        consumer.writer.stop(30)
    meta = orjson.loads((consumer.last_bundle_path / "meta.json").read_bytes())
    assert meta["type"] == "duplicate" and meta["pre_events"] == 2 and meta["pre_bound"] == "age"
    report = (consumer.last_bundle_path / "report.md").read_text()
    assert "| **Pre-window Bound** | age: older events had left the ring (FLIGHT_MAX_AGE_S=1.0 s) |" in report


def test_a_drift_sample_of_a_huge_event_keeps_its_start_and_size(tmp_path):
    """P1 forwards a 900 KB product id as received; P2 counts it as drift and samples a bounded line."""
    from mercurystream.p1.pipeline import IngestPipeline
    from mercurystream.p2.batch import normalize
    from mercurystream.p2.forensics import DRIFT_SAMPLE_EVENT_BYTES

    consumer, metrics, _ = make(tmp_path)
    msg = {"type": "match", "product_id": "X" * 900_000, "price": "1.5", "size": "2", "trade_id": 1}
    msg["time"] = "2024-05-01T12:00:00.000000Z"
    payloads, invalid = IngestPipeline().process([msg], 1_714_564_800_000_000)
    assert invalid == 1
    b, _ = normalize(payloads, 1_714_564_800_000_500)
    try:
        consumer.handle(b)
        assert consumer.writer.wait_idle(30)
    finally:
        consumer.writer.stop(30)
    assert consumer.counts["schema_drift"] == 1
    line = (tmp_path / "drift.jsonl").read_bytes()
    assert len(line) < DRIFT_SAMPLE_EVENT_BYTES + 1024
    row = orjson.loads(line)
    assert {"key": "product_id", "expected": "str", "got": "str(900000)"} in row["mismatched"]
    assert row["event_bytes"] == len(b.lines[0]) and row["event_start"].startswith('{"type":"match"')
    assert sample(metrics, "mercurystream_drift_samples_total") == 1


def test_gap_notices_backfill_results_and_backfilled_trades_are_counted(tmp_path):
    consumer, metrics, _ = make(tmp_path, FLIGHT_RECORDER=False)
    control = {"product_id": "BTC-USD", "first_missing": 3, "last_missing": 4, "ingest_ts_ms": 1}
    consumer.handle(
        batch(
            [
                event(1),
                event(2),
                {"type": "gap", "source": "heartbeat", **control},
                {"type": "gap", "source": "something-new", **control, "first_missing": 9, "last_missing": 9},
                event(3, backfilled=True),
                {"type": "backfill", "source": "heartbeat", "recovered": 1, "unrecoverable": 1, **control},
            ]
        )
    )
    assert sample(metrics, "mercurystream_gap_notices_total", source="heartbeat") == 1
    assert sample(metrics, "mercurystream_gap_notices_total", source="other") == 1
    assert sample(metrics, "mercurystream_backfilled_total") == 1
    assert sample(metrics, "mercurystream_backfill_ids_total", outcome="recovered") == 1
    assert sample(metrics, "mercurystream_backfill_ids_total", outcome="unrecoverable") == 1
    assert sample(metrics, "mercurystream_anomalies_total", type="sequence_gap") == 3
    assert sample(metrics, "mercurystream_anomalies_total", type="schema_drift") == 0
    assert consumer.status_line().endswith("| gap_notices=2 backfilled=1 unrecoverable=1")
    consumer.writer.stop(5)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type":"match","product_id":"BTC-USD","price":NaN,"last_size":1,"time":"x","trade_id":1}',
        b'{"type":"match","product_id":"BTC-USD","price":' + b"9" * 401 + b',"trade_id":1}',
        b'{"type":"match","product_id":"\\ud800","price":1.5,"trade_id":1}',
    ],
)
def test_a_drift_sample_of_an_event_no_strict_parser_reads_is_still_one_json_line(tmp_path, raw):
    """P2's lenient parse accepts NaN, huge numbers and lone surrogate escapes; embedded whole, the
    sample was not JSON. (A surrogate encoded in the bytes, CESU-style, is no UTF-8: ``invalid_json``.)"""
    from mercurystream.p2.batch import normalize

    consumer, _, _ = make(tmp_path)
    b, errors = normalize([raw], 1_714_564_800_000_500)
    assert errors == [] and b.drift
    try:
        consumer.handle(b)
        assert consumer.writer.wait_idle(30)
    finally:
        consumer.writer.stop(30)
    row = orjson.loads((tmp_path / "drift.jsonl").read_bytes())
    assert row["event_bytes"] == len(b.lines[0]) and row["event_start"].startswith('{"type":"match"')
