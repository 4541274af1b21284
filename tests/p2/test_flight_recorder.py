"""Flight recorder arithmetic: pre/post counts, trigger line, cooldown, suppression, finalize."""

from __future__ import annotations

import re

import pytest

from mercurystream.p2.detectors import DUPLICATE, LATENCY_SPIKE, SEQUENCE_GAP, Anomaly
from mercurystream.p2.flight_recorder import FlightRecorder, iso_utc, new_incident_id


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def lines(a: int, b: int) -> list[bytes]:
    return [b'{"n":%d}' % k for k in range(a, b)]


def trig(index: int, type: str = DUPLICATE, pid: str | None = "BTC-USD") -> Anomaly:
    return Anomaly(type, index, 1, pid, {"trade_id": index})


def recorder(pre=5, post=3, cooldown=60.0, clock=None):
    clock = clock or Clock()
    ids = iter(f"id{k}" for k in range(100))
    return FlightRecorder(
        pre, post, cooldown, clock=clock, wall_clock=lambda: 1_714_564_800.0, new_id=lambda w: next(ids)
    )


def test_trigger_is_the_last_pre_event_and_post_follows():
    fr = recorder(pre=5, post=3)
    res = fr.feed(lines(0, 10), [trig(7)])
    assert len(res.started) == 1 and res.completed == []
    cap = res.started[0]
    assert cap.pre == lines(3, 8)
    assert (cap.pre_count, cap.trigger_line) == (5, 5)
    assert cap.lines()[cap.trigger_line - 1] == b'{"n":7}'
    assert cap.post == lines(8, 10)
    res = fr.feed(lines(10, 20))
    assert res.completed == [cap] and cap.complete
    assert cap.post == lines(8, 11)
    assert cap.lines() == lines(3, 11)
    assert fr.active is None


def test_fewer_events_than_pre_gives_a_short_pre():
    fr = recorder(pre=5, post=2)
    cap = fr.feed(lines(0, 2), [trig(1)]).started[0]
    assert cap.pre == lines(0, 2) and cap.trigger_line == 2


def test_capture_completes_across_many_small_batches():
    fr = recorder(pre=3, post=4)
    fr.feed(lines(0, 1), [trig(0)])
    done = []
    for k in range(1, 9):
        done += fr.feed(lines(k, k + 1)).completed
    assert len(done) == 1
    assert done[0].lines() == lines(0, 5) and done[0].trigger_line == 1


def test_zero_post_events_completes_at_the_trigger():
    fr = recorder(pre=4, post=0, cooldown=0)
    res = fr.feed(lines(0, 6), [trig(2), trig(5)])
    assert [c.lines() for c in res.completed] == [lines(0, 3), lines(2, 6)]
    assert res.started == res.completed and res.suppressed == []


def test_triggers_during_a_capture_are_suppressed_and_listed_with_their_line():
    fr = recorder(pre=5, post=5, cooldown=0)
    res = fr.feed(lines(0, 10), [trig(6), trig(6, SEQUENCE_GAP), trig(8, LATENCY_SPIKE, None)])
    cap = res.started[0]
    assert [a.type for a in res.suppressed] == [SEQUENCE_GAP, LATENCY_SPIKE]
    assert [(s["type"], s["line"], s["product_id"]) for s in cap.suppressed] == [
        (SEQUENCE_GAP, 5, "BTC-USD"),
        (LATENCY_SPIKE, 7, None),
    ]
    assert cap.lines()[7 - 1] == b'{"n":8}'
    assert cap.suppressed[0]["at"] == iso_utc(1_714_564_800.0)
    assert fr.suppressed == 2


def test_cooldown_counts_but_does_not_list_when_no_capture_is_active():
    clock = Clock(1000.0)
    fr = recorder(pre=3, post=1, cooldown=60.0, clock=clock)
    first = fr.feed(lines(0, 5), [trig(1)])
    assert len(first.completed) == 1  # post of 1 is index 2
    clock.t = 1059.999
    res = fr.feed(lines(5, 8), [trig(0)])
    assert res.started == [] and len(res.suppressed) == 1
    assert first.completed[0].suppressed == []
    clock.t = 1060.0
    res = fr.feed(lines(8, 10), [trig(1)])
    assert len(res.started) == 1
    assert res.started[0].pre == lines(7, 10)
    assert (fr.started, fr.suppressed) == (2, 1)


def test_cooldown_runs_from_the_last_accepted_trigger_not_from_suppressed_ones():
    clock = Clock(0.0)
    fr = recorder(pre=2, post=0, cooldown=10.0, clock=clock)
    fr.feed(lines(0, 1), [trig(0)])
    for t in (5.0, 9.0):
        clock.t = t
        assert fr.feed(lines(1, 2), [trig(0)]).suppressed
    clock.t = 10.0
    assert fr.feed(lines(2, 3), [trig(0)]).started


def test_ring_is_always_on_during_a_capture():
    fr = recorder(pre=4, post=2, cooldown=0)
    fr.feed(lines(0, 3), [trig(0)])
    res = fr.feed(lines(3, 6), [trig(2)])
    assert res.started[0].pre == lines(2, 6)


def test_a_trigger_on_the_last_post_event_can_start_the_next_capture():
    fr = recorder(pre=3, post=2, cooldown=0)
    res = fr.feed(lines(0, 5), [trig(1), trig(3)])
    assert [c.lines() for c in res.completed] == [lines(0, 4)]
    assert [c.trigger_line for c in res.started] == [2, 3]
    assert fr.active is res.started[1]


def test_finalize_returns_the_active_capture_incomplete():
    fr = recorder(pre=3, post=10)
    assert fr.finalize() is None
    fr.feed(lines(0, 5), [trig(4)])
    fr.feed(lines(5, 7))
    cap = fr.finalize()
    assert cap is not None and not cap.complete
    assert (cap.pre_count, cap.post_count, cap.post_target) == (3, 2, 10)
    assert fr.active is None and fr.finalize() is None


def test_triggers_must_be_sorted_and_inside_the_batch():
    fr = recorder()
    with pytest.raises(ValueError):
        fr.feed(lines(0, 3), [trig(3)])
    with pytest.raises(ValueError):
        recorder().feed(lines(0, 5), [trig(3), trig(1)])


def test_invalid_sizes_are_rejected():
    with pytest.raises(ValueError):
        FlightRecorder(0, 1, 1)
    with pytest.raises(ValueError):
        FlightRecorder(1, -1, 1)


def test_incident_id_format():
    assert re.fullmatch(r"20240501_120000_[0-9a-f]{8}", new_incident_id(1_714_564_800.0))
