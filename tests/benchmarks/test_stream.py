"""The benchmark stream: P1's bytes, valid frames, one contiguous and ordered stream across pool cycles."""

from __future__ import annotations

import orjson
import pytest

from benchmarks.stream import STAMPS_LEN, FrameStream, generate_pool, stamps
from mercurystream.shared.framing import FrameDecoder

NOW_US = 1_767_225_600_123_456


@pytest.fixture(scope="module")
def pool() -> list[bytes]:
    return generate_pool(3_000)


def decode(data: bytes) -> list[dict]:
    d = FrameDecoder()
    payloads = d.feed(data)
    assert d.buffered == 0
    return [orjson.loads(p) for p in payloads]


def test_stamps_have_a_fixed_width():
    assert len(stamps(NOW_US)) == len(stamps(NOW_US + 9_999_999)) == STAMPS_LEN
    with pytest.raises(ValueError):
        stamps(1)


def test_first_cycle_is_p1s_payload_with_the_chunk_stamp(pool):
    events = decode(FrameStream(pool).take(len(pool), NOW_US))
    expected = [orjson.loads(p) | {"ingest_ts_ms": NOW_US // 1000, "ingest_ts_us": NOW_US} for p in pool]
    assert events == expected
    assert {e["product_id"] for e in events} == {"BTC-USD", "ETH-USD", "SOL-USD"}


def test_cycles_continue_ids_and_time_without_a_gap(pool):
    stream = FrameStream(pool)
    events = []
    for n in (1, 999, 2_000, 4_500, 2_500):  # chunks that straddle cycle boundaries
        events += decode(stream.take(n, NOW_US))
    assert len(events) == stream.position == 10_000
    last: dict[str, dict] = {}
    for e in events:
        prev = last.get(e["product_id"])
        if prev is not None:
            assert e["trade_id"] == prev["trade_id"] + 1
            assert e["sequence"] > prev["sequence"]
            assert e["time"] >= prev["time"]
        last[e["product_id"]] = e
    assert events[-1]["time"].startswith("2026-01-04")


def test_recording_lines_are_what_p2_records(pool):
    [line] = FrameStream(pool).recording(1, NOW_US, NOW_US + 250)
    ev = orjson.loads(line)
    assert ev["recv_ts_us"] - ev["ingest_ts_us"] == 250
    assert line.endswith(b',"recv_ts_ms":%d,"recv_ts_us":%d}' % ((NOW_US + 250) // 1000, NOW_US + 250))


def test_rejects_a_pool_it_cannot_repeat_cleanly(pool):
    with pytest.raises(ValueError):
        FrameStream([])
    with pytest.raises(ValueError, match="contiguous"):
        FrameStream(pool[:5] + pool[6:])
