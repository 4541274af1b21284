from __future__ import annotations

import copy
import dataclasses
import itertools
import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.replay.inject import DRIFT_KINDS, InjectOptions, Injector, PayloadEncoder
from mercurystream.shared.framing import FrameDecoder

NOW_US = 1_735_000_000_123_456


def make_event(i: int) -> dict:
    return {
        "type": "match",
        "product_id": "BTC-USD",
        "price": 87000.5 + i,
        "last_size": 0.25,
        "time": f"2025-12-24T17:30:{i % 60:02d}.000000Z",
        "trade_id": 1000 + i,
        "side": "buy",
        "ingest_ts_ms": 1_735_000_000_000 + i,
        "ingest_ts_us": 1_735_000_000_000_000 + i * 1000,
        "recv_ts_ms": 1_735_000_000_002 + i,
        "recv_ts_us": 1_735_000_000_002_000 + i * 1000,
    }


def lines(n: int) -> list[bytes]:
    return [orjson.dumps(make_event(i)) for i in range(n)]


def trade_ids(items) -> list:
    return [(orjson.loads(it) if isinstance(it, bytes) else it).get("trade_id") for it in items]


def is_drift(ev: dict) -> bool:
    """P2's schema-drift definition (issue 3)."""

    def num(v):
        return type(v) in (int, float)

    checks = {
        "type": lambda v: type(v) is str,
        "product_id": lambda v: type(v) is str,
        "price": num,
        "last_size": num,
        "time": lambda v: type(v) is str,
        "trade_id": lambda v: type(v) is int,
        "ingest_ts_ms": lambda v: type(v) is int,
    }
    return any(k not in ev or not ok(ev[k]) for k, ok in checks.items())


def decode(buf: bytes) -> list[bytes]:
    return FrameDecoder().feed(buf)


ALL = InjectOptions(shuffle_window=7, duplicate_rate=0.1, drift_rate=0.1, gap_rate=0.1, seed=42)


def test_same_seed_same_output_and_different_seed_differs() -> None:
    src = lines(2000)
    a = Injector(ALL).run(src)
    b = Injector(ALL).run(src)
    c = Injector(dataclasses.replace(ALL, seed=43)).run(src)
    assert a == b
    assert a != c


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=12))
def test_output_does_not_depend_on_batching(cuts: list[int]) -> None:
    src = lines(600)
    whole = Injector(ALL).run(src)
    inj = Injector(ALL)
    out: list = []
    bounds = [0, *sorted(cuts), len(src)]
    for lo, hi in itertools.pairwise(bounds):
        out += inj.feed(src[lo:hi])
    out += inj.flush()
    assert out == whole


def test_no_options_is_identity() -> None:
    src = lines(50)
    inj = Injector(InjectOptions())
    assert inj.run(src) == src
    assert inj.counts == {"gap": 0, "drift": 0, "duplicate": 0, "shuffle": 0}


def test_gap_drops_about_the_rate_and_keeps_order() -> None:
    src = lines(10000)
    inj = Injector(InjectOptions(gap_rate=0.1, seed=1))
    out = inj.run(src)
    assert 850 <= inj.counts["gap"] <= 1150
    assert len(out) == len(src) - inj.counts["gap"]
    ids = trade_ids(out)
    assert ids == sorted(ids)
    assert Injector(InjectOptions(gap_rate=1.0)).run(src) == []


def test_drift_breaks_the_schema_in_rotating_kinds_without_touching_the_input() -> None:
    events = [make_event(i) for i in range(3000)]
    before = copy.deepcopy(events)
    inj = Injector(InjectOptions(drift_rate=0.2, seed=3))
    out = inj.run(events)
    assert events == before
    drifted = [ev for ev in out if is_drift(ev)]
    assert len(drifted) == inj.counts["drift"]
    assert 500 <= len(drifted) <= 700
    n = inj.counts["drift"]
    for name, _ in DRIFT_KINDS:
        assert inj.drift_kinds[name] in (n // len(DRIFT_KINDS), n // len(DRIFT_KINDS) + 1)
    # Drifted events stay in place; the rest are the very same objects.
    assert [ev["time"] for ev in out if not is_drift(ev)] == [
        ev["time"] for ev, o in zip(events, out, strict=True) if not is_drift(o)
    ]


def test_every_drift_kind_is_drift_even_on_bytes_items() -> None:
    src = lines(len(DRIFT_KINDS) * 6)
    out = Injector(InjectOptions(drift_rate=1.0)).run(src)
    assert all(isinstance(ev, dict) and is_drift(ev) for ev in out)
    missing = [k for ev in out for k in ("type", "product_id", "price", "last_size", "time", "trade_id") if k not in ev]
    assert sorted(missing) == sorted(["type", "product_id", "price", "last_size", "time", "trade_id"])


def test_duplicate_sends_adjacent_copies() -> None:
    src = lines(5000)
    inj = Injector(InjectOptions(duplicate_rate=0.05, seed=9))
    out = inj.run(src)
    assert len(out) == len(src) + inj.counts["duplicate"]
    assert 180 <= inj.counts["duplicate"] <= 320
    pairs = sum(1 for a, b in itertools.pairwise(out) if a == b)
    assert pairs == inj.counts["duplicate"]
    assert list(dict.fromkeys(out)) == src


def test_shuffle_moves_events_only_within_their_window() -> None:
    src = lines(103)
    inj = Injector(InjectOptions(shuffle_window=10, seed=5))
    out = inj.run(src)
    assert len(out) == len(src)
    for start in range(0, 103, 10):
        assert sorted(out[start : start + 10]) == sorted(src[start : start + 10])
    assert out != src
    assert inj.counts["shuffle"] == sum(1 for a, b in zip(out, src, strict=True) if a != b)
    # The last, short window is shuffled too (at flush).
    assert inj.feed(src[:3]) == []
    assert sorted(inj.flush()) == sorted(src[:3])


def test_stages_draw_independently() -> None:
    src = lines(3000)
    gap_only = Injector(InjectOptions(gap_rate=0.2, seed=8)).run(src)
    more = Injector(InjectOptions(gap_rate=0.2, duplicate_rate=0.2, shuffle_window=5, seed=8)).run(src)
    assert sorted(set(trade_ids(more))) == trade_ids(gap_only)
    drifted = Injector(InjectOptions(gap_rate=0.2, drift_rate=0.5, seed=8)).run(src)
    assert len(drifted) == len(gap_only)
    assert [x for x in drifted if isinstance(x, bytes)] == [x for x, d in zip(gap_only, drifted, strict=True) if d == x]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"gap_rate": -0.1},
        {"drift_rate": 1.5},
        {"duplicate_rate": float("nan")},
        {"shuffle_window": -1},
        {"latency_ms": -5},
    ],
)
def test_invalid_options_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        InjectOptions(**kwargs)


STAMPS = re.compile(rb',"ingest_ts_ms":(\d+),"ingest_ts_us":(\d+)\}$')


def test_keep_timestamps_sends_lines_unchanged() -> None:
    src = lines(20)
    assert decode(PayloadEncoder(keep_timestamps=True).encode(list(src), NOW_US)) == src


def test_restamp_strips_recv_and_stamps_the_send_time() -> None:
    src = lines(20)
    frames = decode(PayloadEncoder(keep_timestamps=False).encode(list(src), NOW_US))
    for raw, frame in zip(src, frames, strict=True):
        ev = orjson.loads(frame)
        assert "recv_ts_ms" not in ev and "recv_ts_us" not in ev
        assert ev["ingest_ts_us"] == NOW_US and ev["ingest_ts_ms"] == NOW_US // 1000
        expected = {k: v for k, v in orjson.loads(raw).items() if not k.startswith(("ingest_ts", "recv_ts"))}
        assert {k: v for k, v in ev.items() if not k.startswith("ingest_ts")} == expected
        assert STAMPS.search(frame)


def test_restamp_fast_path_and_dict_path_agree() -> None:
    src = lines(20)
    from_bytes = PayloadEncoder(False).encode(list(src), NOW_US)
    from_dicts = PayloadEncoder(False).encode([orjson.loads(x) for x in src], NOW_US)
    assert from_bytes == from_dicts


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"{}", {}),
        (b'{"a":1}', {"a": 1}),
        (b'{"ingest_ts_ms":5,"a":1,"recv_ts_us":3}', {"a": 1}),
        (b'{ "a": 1, "ingest_ts_ms": 5 }', {"a": 1}),
        (b'{"a":{"b":1,"ingest_ts_ms":5}}', {"a": {"b": 1, "ingest_ts_ms": 5}}),
        (b'{"a":"x,\\"ingest_ts_ms\\":1}","ingest_ts_ms":2}', {"a": 'x,"ingest_ts_ms":1}'}),
    ],
)
def test_restamp_any_object(line: bytes, expected: dict) -> None:
    (frame,) = decode(PayloadEncoder(False).encode([line], NOW_US))
    ev = orjson.loads(frame)
    assert ev.pop("ingest_ts_ms") == NOW_US // 1000
    assert ev.pop("ingest_ts_us") == NOW_US
    assert ev == expected


def test_latency_ages_the_send_stamp() -> None:
    enc = PayloadEncoder(False, latency_ms=250)
    frames = decode(enc.encode(lines(3), NOW_US))
    assert {orjson.loads(f)["ingest_ts_us"] for f in frames} == {NOW_US - 250_000}
    assert enc.aged == 3


def test_latency_ages_recorded_stamps_and_keeps_recv() -> None:
    src = [*lines(3), b'{"type":"match"}']
    enc = PayloadEncoder(True, latency_ms=250)
    frames = decode(enc.encode(list(src), NOW_US))
    for raw, frame in zip(src[:3], frames, strict=False):
        before, after = orjson.loads(raw), orjson.loads(frame)
        assert after["ingest_ts_ms"] == before["ingest_ts_ms"] - 250
        assert after["ingest_ts_us"] == before["ingest_ts_us"] - 250_000
        assert after["recv_ts_us"] == before["recv_ts_us"]
    assert frames[3] == src[3]
    assert enc.aged == 3


MS, US = 1_735_000_000_001, 1_735_000_000_001_234
"""Stamps of a recording: 13 and 16 digits."""


def tail(*members: tuple[str, int]) -> bytes:
    return b"".join(b',"%b":%d' % (key.encode(), value) for key, value in members) + b"}"


TAIL_FORMS = {
    "p2": lambda n: tail(("ingest_ts_ms", MS + n), ("ingest_ts_us", US + n), ("recv_ts_ms", MS), ("recv_ts_us", US)),
    "p1": lambda n: tail(("ingest_ts_ms", MS + n), ("ingest_ts_us", US + n)),
    "negative": lambda n: tail(("ingest_ts_ms", -n), ("ingest_ts_us", US)),
    "narrow": lambda n: tail(("ingest_ts_ms", n), ("ingest_ts_us", n * 1000)),
    "three": lambda n: tail(("ingest_ts_ms", MS), ("ingest_ts_us", US), ("recv_ts_ms", MS + n)),
    "digit_in_key": lambda n: tail(("ingest_ts_ms", MS), ("ingest_ts_u5", US + n)),
    "digit_in_key_same_width": lambda n: tail(("ingest_ts_ms", MS), ("ingest_ts_u5", US // 10 + n)),
    "widths_moved": lambda n: tail(("ingest_ts_ms", MS * 10 + n), ("ingest_ts_us", US // 10)),
    "other_key": lambda n: tail(("ingest_ts_ms", MS), ("x", US + n)),
    "extra_key": lambda n: tail(("ingest_ts_ms", MS), ("ingest_ts_us", US), ("extra", n)),
    "no_stamps": lambda n: b"}",
    "ms_only": lambda n: tail(("ingest_ts_ms", MS + n)),
}
SEND_STAMPS = b',"ingest_ts_ms":%d,"ingest_ts_us":%d}' % (NOW_US // 1000, NOW_US)


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.tuples(st.sampled_from(sorted(TAIL_FORMS)), st.integers(0, 999)), min_size=1, max_size=12))
def test_batch_restamp_equals_restamping_each_line(shape: list[tuple[str, int]]) -> None:
    """Whichever path a batch takes, its frames are those of the per-line path, byte for byte."""
    batch = [b'{"trade_id":%d,"price":1.5' % n + TAIL_FORMS[form](n) for form, n in shape]
    assert all(type(orjson.loads(x)) is dict for x in batch)
    assert PayloadEncoder(False).encode(list(batch), NOW_US) == PayloadEncoder(False)._restamp_each(
        list(batch), SEND_STAMPS
    )


@pytest.mark.parametrize("form", ["p2", "p1"])
def test_lines_of_one_stamp_form_are_restamped_as_a_batch(form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bodies = [b'{"trade_id":%d,"side":"buy"' % n for n in range(50)]
    src = [body + TAIL_FORMS[form](n) for n, body in enumerate(bodies)]

    def per_line(*args: object) -> bytes:
        raise AssertionError("the per-line path was taken")

    monkeypatch.setattr(PayloadEncoder, "_restamp_each", staticmethod(per_line))
    assert decode(PayloadEncoder(False).encode(src, NOW_US)) == [body + SEND_STAMPS for body in bodies]


def test_as_is_frames_bytes_and_dicts_alike() -> None:
    src = lines(5)
    mixed = [src[0], orjson.loads(src[1]), *src[2:]]
    assert PayloadEncoder(True).encode(list(src), NOW_US) == PayloadEncoder(True).encode(mixed, NOW_US)
    assert decode(PayloadEncoder(True).encode(list(src), NOW_US)) == src
    assert PayloadEncoder(True).encode([], NOW_US) == b""


# ---------------------------------------------------------------- the frame limit


def padded(n: int, size: int, form: str = "p2") -> bytes:
    """A line of exactly ``size`` bytes with the stamps of ``form``."""
    head, end = b'{"trade_id":%d,"pad":"' % n, b'"' + TAIL_FORMS[form](n)
    return head + b"x" * (size - len(head) - len(end)) + end


@pytest.mark.parametrize("form", ["ms_only", "narrow", "no_stamps"])
def test_a_line_that_restamping_takes_over_the_frame_limit_is_not_sent(form: str) -> None:
    """A line under the limit as read grows when restamped; sent, P2 would close the connection on it.

    ``ms_only`` takes the batch path (one fixed form), the others the per-line one."""
    limit = 1000
    big = padded(1, limit - 10, form)
    src = [padded(0, 200, form), big, padded(2, 200, form)]
    enc = PayloadEncoder(False, latency_ms=5, max_frame_bytes=limit)
    frames = decode(enc.encode(list(src), NOW_US))
    assert [orjson.loads(f)["trade_id"] for f in frames] == [0, 2]
    assert max(map(len, frames)) <= limit
    assert enc.oversize == 1 and enc.aged == 2


def test_a_frame_exactly_at_the_limit_is_sent() -> None:
    line = padded(0, 300, "no_stamps")
    size = len(decode(PayloadEncoder(False).encode([line], NOW_US))[0])
    enc = PayloadEncoder(False, max_frame_bytes=size)
    assert decode(enc.encode([line], NOW_US))[0].startswith(line[:-1]) and enc.oversize == 0


def test_kept_and_aged_payloads_over_the_limit_are_not_sent() -> None:
    """A drifted dict re-serialized, or a recorded stamp aged, can grow as well: every path checks."""
    line = padded(0, 500, "p2")
    as_is = PayloadEncoder(True, max_frame_bytes=499)
    assert as_is.encode([line, orjson.loads(line)], NOW_US) == b"" and as_is.oversize == 2
    aged = PayloadEncoder(True, latency_ms=1, max_frame_bytes=499)
    assert aged.encode([line], NOW_US) == b"" and aged.oversize == 1 and aged.aged == 0


# ---------------------------------------------------------------- lines only P2's lenient parse reads


def test_a_lenient_line_is_restamped_with_its_values_bytes_kept() -> None:
    """Cut at its stamps, or the send stamps spliced in as P2 splices its own: no value is re-spelt."""
    body = b'{"trade_id":1,"price":NaN,"big":1e400,"s":"\\ud800"'
    recorded = body + TAIL_FORMS["p2"](0)
    enc = PayloadEncoder(False)
    assert decode(enc.encode([recorded, body + b"}", b"{ }"], NOW_US)) == [
        body + SEND_STAMPS,
        body + SEND_STAMPS,
        b"{" + SEND_STAMPS[1:],
    ]
    assert enc.unrewritten == 0


def test_a_lenient_line_with_stamps_inside_is_rewritten_by_pythons_json() -> None:
    import json

    line = b'{"ingest_ts_ms":5,"price":NaN,"s":"\\ud800","recv_ts_us":3,"big":1e400,"n":123456789012345678901234}'
    (frame,) = decode(PayloadEncoder(False).encode([line], NOW_US))
    ev = json.loads(frame)
    assert frame.startswith(b'{"price":NaN,"s":"\\ud800","big":Infinity,"n":123456789012345678901234,')
    assert (ev["ingest_ts_ms"], ev["ingest_ts_us"], "recv_ts_us" in ev) == (NOW_US // 1000, NOW_US, False)


def test_a_lenient_line_is_aged_by_pythons_json_and_keeps_its_receive_stamps() -> None:
    import json

    line = b'{"price":NaN' + TAIL_FORMS["p2"](0)
    enc = PayloadEncoder(True, latency_ms=250)
    (frame,) = decode(enc.encode([line, b'{"price":NaN}'], NOW_US))[:1]
    ev = json.loads(frame)
    assert ev["ingest_ts_ms"] == MS - 250 and ev["recv_ts_us"] == US and frame.startswith(b'{"price":NaN,')
    assert decode(enc.encode([b'{"price":NaN}'], NOW_US)) == [b'{"price":NaN}'] and enc.aged == 1


def test_drift_on_a_lenient_line_gives_bytes_p2_reads_as_drift() -> None:
    from mercurystream.shared.wire import parse_payload

    src = [b'{"type":"match","trade_id":%d,"price":NaN,"s":"\\ud800"}' % i for i in range(len(DRIFT_KINDS))]
    inj = Injector(InjectOptions(drift_rate=1.0))
    out = inj.run(src)
    assert all(type(x) is bytes for x in out) and inj.counts["drift"] == len(src)
    events = [parse_payload(x) for x in out]
    assert all(type(e) is dict and e.get("s") == "\ud800" for e in events)
    assert any(e.get("trade_id") is True for e in events)
