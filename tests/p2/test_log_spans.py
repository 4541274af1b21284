"""Incident bundles name the stream sequences they cover when P2 reads the JetStream log."""

from __future__ import annotations

import orjson
import pytest

from mercurystream.p2.incident.report import nats_replay_command
from mercurystream.p2.log_spans import LogOrigin, LogSpans
from tests.p2.test_forensics import batch, event, make


def origin(seq: int, n: int = 1) -> LogOrigin:
    return LogOrigin("MERCURY_TRADES", seq, seq + n - 1, seq * 1_000_000_000, (seq + n - 1) * 1_000_000_000)


def test_lines_map_to_the_messages_that_held_them() -> None:
    spans = LogSpans(keep_lines=100)
    spans.add(0, 4, origin(10))
    spans.add(4, 3, origin(11, 2))
    spans.add(7, 5, origin(20))
    assert spans.covering(0, 11) == {
        "stream": "MERCURY_TRADES",
        "first_seq": 10,
        "last_seq": 20,
        "first_time": "1970-01-01T00:00:10.000000Z",
        "last_time": "1970-01-01T00:00:20.000000Z",
    }
    assert (spans.covering(5, 6)["first_seq"], spans.covering(5, 6)["last_seq"]) == (11, 12)
    assert spans.covering(3, 12) is None  # line 12 has not arrived


def test_only_the_lines_a_capture_can_reach_are_kept() -> None:
    spans = LogSpans(keep_lines=10)
    for k in range(100):
        spans.add(k * 3, 3, origin(k + 1))
    assert len(spans._spans) <= 5
    assert spans.covering(297, 299)["first_seq"] == 100
    assert spans.covering(250, 299) is None


def test_batches_without_an_origin_give_no_record() -> None:
    spans = LogSpans(keep_lines=10)
    spans.add(0, 5, None)
    spans.add(5, 5, origin(3))
    assert spans.covering(0, 9) is None
    assert spans.covering(5, 9)["first_seq"] == 3


def with_origin(events: list[dict], seq: int):
    b = batch(events)
    b.origin = origin(seq)
    return b


def test_a_bundle_from_the_log_records_its_sequences_and_the_replay_command(tmp_path) -> None:
    consumer, _, _ = make(tmp_path)
    # Two events per message, the k-th at stream sequence 100 + k; trade 9 arrives twice (line 10).
    stream = [event(k) for k in range(1, 10)] + [event(9)] + [event(k) for k in range(10, 16)]
    try:
        for k in range(0, len(stream), 2):
            consumer.handle(with_origin(stream[k : k + 2], 100 + k // 2))
        assert consumer.writer.wait_idle(30)
    finally:
        consumer.writer.stop(30)
    path = consumer.last_bundle_path
    meta = orjson.loads((path / "meta.json").read_bytes())
    assert meta["type"] == "duplicate"
    # Pre: 10 lines ending with the duplicate (line 10, message 104) start at line 1 (message 100);
    # post: 3 more lines, lines 11..13, the last in message 106.
    assert (meta["pre_events"], meta["post_events"]) == (10, 3)
    nats = meta["nats"]
    assert (nats["stream"], nats["first_seq"], nats["last_seq"]) == ("MERCURY_TRADES", 100, 106)
    assert nats["products"] == ["BTC-USD"]
    assert nats["first_time"].startswith("1970-01-01T00:01:40")
    report = (path / "report.md").read_text()
    assert "mercury-replay --from-nats" in report
    assert "--stream MERCURY_TRADES --start-seq 100 --end-seq 106 --products BTC-USD" in report


def test_a_bundle_from_tcp_has_no_nats_record(tmp_path) -> None:
    consumer, _, _ = make(tmp_path)
    stream = [event(k) for k in range(1, 9)] + [event(5), event(9), event(10), event(11)]
    try:
        consumer.handle(batch(stream))
        assert consumer.writer.wait_idle(30)
    finally:
        consumer.writer.stop(30)
    meta = orjson.loads((consumer.last_bundle_path / "meta.json").read_bytes())
    assert "nats" not in meta
    assert "--from-nats" not in (consumer.last_bundle_path / "report.md").read_text()


@pytest.mark.parametrize("bad", [None, {}, {"first_seq": "1", "last_seq": 2}, [], {"first_seq": 1}])
def test_no_command_without_sequences(bad: object) -> None:
    assert nats_replay_command(bad) is None


def test_the_command_quotes_what_it_must() -> None:
    cmd = nats_replay_command(
        {"url": "nats://h:4222", "stream": "S", "first_seq": 3, "last_seq": 9, "products": ["A B", "C"]}
    )
    assert cmd == (
        "mercury-replay --from-nats --nats-url nats://h:4222 --stream S --start-seq 3 --end-seq 9 "
        "--products 'A B,C' --rate 0 --port 9002"
    )
