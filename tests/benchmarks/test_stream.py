"""The benchmark stream: P1's bytes, valid frames, one contiguous and ordered stream across pool cycles."""

from __future__ import annotations

import orjson
import pytest

from benchmarks.stream import STAMPS_LEN, FrameStream, StormStream, generate_pool, stamps
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


@pytest.mark.parametrize(
    ("shape", "keys"),
    [
        ("p1", {"ingest_ts_ms", "ingest_ts_us"}),
        ("seed", {"ingest_ts_ms"}),
        ("replayed", {"ingest_ts_ms", "ingest_ts_us", "recv_ts_ms", "recv_ts_us", "note"}),
    ],
)
def test_shapes_end_with_their_keys_and_keep_frames_whole(pool, shape, keys):
    stream = FrameStream(pool, shape)
    events = decode(stream.take(500, NOW_US) + stream.take(500, NOW_US + 9_999_999))
    trade_keys = set(orjson.loads(pool[0])) - {"ingest_ts_ms", "ingest_ts_us"}
    assert len(events) == 1_000
    assert all(set(e) == trade_keys | keys for e in events)
    if shape == "replayed":
        assert events[0]["recv_ts_us"] - events[0]["ingest_ts_us"] == 250 and events[0]["recv_ts_us"] < NOW_US


def test_a_stream_started_further_on_continues_ids_and_times(pool):
    whole = FrameStream(pool)
    first = decode(whole.take(4_000, NOW_US))
    later = FrameStream(pool, "seed")
    later.position = 4_000
    events = first + decode(later.take(4_000, NOW_US))
    last: dict[str, dict] = {}
    for e in events:
        prev = last.get(e["product_id"])
        if prev is not None:
            assert e["trade_id"] == prev["trade_id"] + 1 and e["time"] >= prev["time"]
        last[e["product_id"]] = e


def test_stable_start_skips_cycles_where_ids_gain_a_digit(pool):
    stream = FrameStream(pool)
    start = stream.stable_start(50)
    assert start % len(stream) == 0
    k = start // len(stream)
    widths = stream._id_widths(k)
    assert widths is not None and all(stream._id_widths(c) == widths for c in range(k, k + 51))
    stream.position = start + len(stream) - 10  # across a cycle boundary, frames stay whole and contiguous
    events = decode(stream.take(20, NOW_US))
    btc = [e["trade_id"] for e in events if e["product_id"] == "BTC-USD"]
    assert btc == list(range(btc[0], btc[0] + len(btc)))


def test_storm_frames_are_all_duplicates_and_all_out_of_order(pool):
    primed = decode(FrameStream(pool).take(1_000, NOW_US))
    seen = {(e["product_id"], e["trade_id"]) for e in primed}
    latest: dict[str, str] = {}
    for e in primed:
        latest[e["product_id"]] = max(latest.get(e["product_id"], ""), e["time"])
    storm = StormStream(pool, 1_000, seed=3)
    events = decode(storm.take(2_500, NOW_US))  # two and a half passes
    assert len(events) == 2_500
    assert all((e["product_id"], e["trade_id"]) in seen and e["time"] < latest[e["product_id"]] for e in events)
    first_pass = [(e["product_id"], e["trade_id"]) for e in events[: len(storm)]]
    assert len(set(first_pass)) == len(storm) and first_pass != sorted(first_pass)
    with pytest.raises(ValueError):
        StormStream(pool, len(pool) + 1)
