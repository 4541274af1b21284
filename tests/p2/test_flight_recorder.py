"""Flight recorder arithmetic: pre/post counts, trigger line, cooldown, suppression, finalize, the age
bound and on-demand dumps."""

from __future__ import annotations

import re

import pytest

from mercurystream.p2.detectors import DUPLICATE, LATENCY_SPIKE, SEQUENCE_GAP, Anomaly
from mercurystream.p2.flight_recorder import (
    MANUAL,
    PRE_BOUND_AGE,
    PRE_BOUND_EVENTS,
    PRE_BOUND_NONE,
    REFUSED_COOLDOWN,
    REFUSED_EMPTY,
    SUPPRESSED_LISTED,
    DumpRefused,
    FlightRecorder,
    iso_utc,
    new_incident_id,
)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def lines(a: int, b: int) -> list[bytes]:
    return [b'{"n":%d}' % k for k in range(a, b)]


def trig(index: int, type: str = DUPLICATE, pid: str | None = "BTC-USD") -> Anomaly:
    return Anomaly(type, index, 1, pid, {"trade_id": index})


def recorder(pre=5, post=3, cooldown=60.0, clock=None, max_age_s=0.0, wall=None):
    clock = clock or Clock()
    ids = iter(f"id{k}" for k in range(100))
    return FlightRecorder(
        pre,
        post,
        cooldown,
        clock=clock,
        wall_clock=wall or (lambda: 1_714_564_800.0),
        new_id=lambda w: next(ids),
        max_age_s=max_age_s,
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
    assert res.suppressed == [SEQUENCE_GAP, LATENCY_SPIKE]
    assert [(s["type"], s["line"], s["product_id"]) for s in cap.suppressed] == [
        (SEQUENCE_GAP, 5, "BTC-USD"),
        (LATENCY_SPIKE, 7, None),
    ]
    assert cap.lines()[7 - 1] == b'{"n":8}'
    assert cap.suppressed[0]["at"] == iso_utc(1_714_564_800.0)
    assert fr.suppressed == 2


def test_a_capture_lists_its_first_suppressed_triggers_and_counts_the_rest():
    """An overload fires a trigger per batch through a post part: the list is bounded, the count is not."""
    fr = recorder(pre=5, post=10_000, cooldown=0)
    n = SUPPRESSED_LISTED + 250
    res = fr.feed(lines(0, n + 2), [trig(1), *(trig(2 + i, SEQUENCE_GAP, f"P{i % 7}-USD") for i in range(n))])
    cap = res.started[0]
    assert len(cap.suppressed) == SUPPRESSED_LISTED and cap.suppressed_unlisted == 250
    assert fr.suppressed == n and len(res.suppressed) == n
    assert cap.suppressed_products == {f"P{i}-USD" for i in range(7)}


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
    with pytest.raises(ValueError):
        FlightRecorder(1, 1, 1, max_age_s=-1)


def test_incident_id_format():
    assert re.fullmatch(r"20240501_120000_[0-9a-f]{8}", new_incident_id(1_714_564_800.0))


# ---------------------------------------------------------------- the age bound

S = 1_000_000
"""One second in the arrival stamps (µs)."""


def test_without_an_age_bound_old_lines_stay_and_the_count_bound_is_named():
    fr = recorder(pre=5, post=0, cooldown=0)
    assert fr.feed(lines(0, 3), [trig(2)], arrival_us=0).started[0].pre_bound == PRE_BOUND_NONE
    cap = fr.feed(lines(3, 7), [trig(3)], arrival_us=10_000 * S).started[0]
    assert cap.pre == lines(2, 7) and cap.pre_bound == PRE_BOUND_EVENTS


def test_lines_older_than_max_age_leave_the_ring():
    fr = recorder(pre=100, post=0, cooldown=0, max_age_s=10)
    fr.feed(lines(0, 3), arrival_us=100 * S)
    fr.feed(lines(3, 5), arrival_us=105 * S)
    cap = fr.feed(lines(5, 7), [trig(1)], arrival_us=110 * S).started[0]
    assert cap.pre == lines(0, 7) and cap.pre_bound == PRE_BOUND_NONE  # exactly max_age old stays
    cap = fr.feed(lines(7, 8), [trig(0)], arrival_us=110 * S + 1).started[0]
    assert cap.pre == lines(3, 8) and cap.pre_bound == PRE_BOUND_AGE
    assert fr.ring_len == 5


def test_the_bound_that_cut_last_is_the_one_named():
    fr = recorder(pre=4, post=0, cooldown=0, max_age_s=10)
    fr.feed(lines(0, 6), arrival_us=0)  # the count bound cuts 0..1
    assert fr.pre_bound == PRE_BOUND_EVENTS
    fr.feed(lines(6, 7), arrival_us=11 * S)  # age takes 2..5
    assert fr.pre_bound == PRE_BOUND_AGE and fr.ring_len == 1
    cap = fr.feed(lines(7, 11), [trig(3)], arrival_us=12 * S).started[0]
    assert cap.pre == lines(7, 11) and cap.pre_bound == PRE_BOUND_EVENTS


def test_age_and_count_stay_consistent_across_many_batches():
    fr = recorder(pre=7, post=0, cooldown=0, max_age_s=3, wall=lambda: 39.0)
    model: list[tuple[int, bytes]] = []
    n = 0
    for t in range(40):
        size = (t * 5) % 4 + (t % 3)
        batch = lines(n, n + size)
        n += size
        fr.feed(batch, arrival_us=t * S)
        model = [(at, line) for at, line in model if at >= (t - 3) * S] + [(t * S, line) for line in batch]
        model = model[-7:]
        assert fr.ring_len == len(model)
    cap = fr.dump("check")
    assert cap.pre == [line for _, line in model]


def test_without_an_arrival_stamp_the_wall_clock_ages_the_ring():
    wall = Clock(1000.0)
    fr = recorder(pre=10, post=0, cooldown=0, max_age_s=5, wall=wall)
    fr.feed(lines(0, 3))
    wall.t = 1006.0
    fr.feed(lines(3, 4))
    assert fr.ring_len == 1 and fr.pre_bound == PRE_BOUND_AGE


# ---------------------------------------------------------------- dumps


def test_a_dump_is_the_ring_as_it_is_now_complete_with_no_post_part():
    fr = recorder(pre=5, post=3)
    fr.feed(lines(0, 8))
    cap = fr.dump("operator", source="http")
    assert cap.type == MANUAL and cap.complete and cap.reason == "operator"
    assert cap.pre == lines(3, 8) and cap.post == [] and cap.post_target == 0
    assert cap.trigger_line == 5 and cap.lines()[cap.trigger_line - 1] == b'{"n":7}'
    assert cap.pre_bound == PRE_BOUND_EVENTS
    assert cap.anomaly.detail == {"source": "http", "respect_cooldown": False}
    assert cap.triggered_at == 1_714_564_800.0
    assert fr.dumped == 1 and fr.started == 0


def test_a_dump_during_a_capture_leaves_the_capture_alone():
    fr = recorder(pre=3, post=4, cooldown=0)
    started = fr.feed(lines(0, 5), [trig(2)]).started[0]
    dumped = fr.dump("now")
    assert dumped.pre == lines(2, 5)
    assert fr.active is started and started.post == lines(3, 5)
    done = fr.feed(lines(5, 7)).completed
    assert done == [started] and started.lines() == lines(0, 7)


def test_the_cooldown_binds_a_dump_only_when_asked():
    clock = Clock(0.0)
    fr = recorder(pre=3, post=1, cooldown=60.0, clock=clock)
    fr.feed(lines(0, 2), [trig(0)])  # a capture is active: post 1 is line 1, so it completes
    fr.feed(lines(2, 3), [trig(0)])  # suppressed by the cooldown
    clock.t = 30.0
    assert fr.dump("ignore the cooldown").pre == lines(0, 3)
    with pytest.raises(DumpRefused) as refused:
        fr.dump("polite", respect_cooldown=True)
    assert refused.value.reason == REFUSED_COOLDOWN and "FLIGHT_COOLDOWN_S=60" in str(refused.value)
    clock.t = 89.9  # 59.9 s after the last dump
    with pytest.raises(DumpRefused):
        fr.dump("polite", respect_cooldown=True)
    clock.t = 90.0
    assert fr.dump("polite", respect_cooldown=True).anomaly.detail["respect_cooldown"] is True


def test_a_polite_dump_is_refused_while_a_capture_is_active_even_with_no_cooldown():
    fr = recorder(pre=3, post=5, cooldown=0)
    fr.feed(lines(0, 3), [trig(2)])
    with pytest.raises(DumpRefused, match="capture is in progress"):
        fr.dump("polite", respect_cooldown=True)


def test_a_dump_does_not_start_the_detectors_cooldown():
    clock = Clock(0.0)
    fr = recorder(pre=3, post=0, cooldown=60.0, clock=clock)
    fr.feed(lines(0, 2))
    fr.dump("first")
    assert fr.feed(lines(2, 3), [trig(0)]).started


def test_an_empty_ring_is_not_dumped():
    fr = recorder()
    with pytest.raises(DumpRefused) as refused:
        fr.dump("nothing yet")
    assert refused.value.reason == REFUSED_EMPTY
    wall = Clock(1000.0)
    aged = recorder(max_age_s=5, wall=wall)
    aged.feed(lines(0, 3), arrival_us=1000 * S)
    wall.t = 1005.0
    assert aged.dump("still fresh").pre == lines(0, 3)
    wall.t = 1005.5
    with pytest.raises(DumpRefused, match="within the last 5 s"):
        aged.dump("stale")
    assert aged.ring_len == 0 and aged.pre_bound == PRE_BOUND_AGE


# --- the byte bound --------------------------------------------------------------------------------


def big(a: int, b: int, size: int = 1000) -> list[bytes]:
    return [b'{"n":%d,"pad":"%s"}' % (k, b"x" * size) for k in range(a, b)]


def test_the_ring_is_bounded_in_bytes_the_oldest_first_and_counted() -> None:
    fr = FlightRecorder(pre_events=1000, post_events=3, cooldown_s=0.0, max_bytes=10_000)
    for k in range(0, 60, 3):
        fr.feed(big(k, k + 3))
        assert fr.ring_bytes <= 10_000
    assert fr.ring_len == 10_000 // len(big(0, 1)[0])
    assert fr.evicted_bytes_bound == 60 - fr.ring_len
    assert fr.pre_bound == "bytes"
    cap = fr.feed(big(60, 61), [trig(0)]).started[0]
    assert cap.pre[-1] == big(60, 61)[0]
    assert sum(map(len, cap.pre)) <= 10_000
    assert cap.pre_bound == "bytes"


def test_a_line_larger_than_the_byte_bound_stays_alone() -> None:
    fr = FlightRecorder(pre_events=100, post_events=0, cooldown_s=0.0, max_bytes=500)
    fr.feed(lines(0, 5))
    fr.feed(big(5, 6))
    assert fr.ring_len == 1
    assert fr.evicted_bytes_bound == 5
    assert fr.dump("x").pre == big(5, 6)


def test_the_event_bound_still_cuts_first_and_says_so() -> None:
    fr = FlightRecorder(pre_events=4, post_events=0, cooldown_s=0.0, max_bytes=1 << 20)
    fr.feed(lines(0, 3))
    assert fr.pre_bound == PRE_BOUND_NONE
    fr.feed(lines(3, 6))
    assert fr.pre_bound == PRE_BOUND_EVENTS
    assert fr.ring_bytes == sum(map(len, lines(2, 6)))
    fr.feed(lines(6, 20))
    assert fr.dump("x").pre == lines(16, 20)
    assert fr.ring_bytes == sum(map(len, lines(16, 20)))
    assert fr.evicted_bytes_bound == 0


def test_a_capture_post_part_stops_at_the_byte_bound() -> None:
    fr = FlightRecorder(pre_events=10, post_events=1000, cooldown_s=0.0, max_bytes=5_000)
    res = fr.feed(big(0, 1), [trig(0)])
    cap = res.started[0]
    assert not res.completed
    done = []
    for k in range(1, 40):
        done += fr.feed(big(k, k + 1)).completed
    assert done == [cap]
    assert cap.complete
    assert 0 < sum(map(len, cap.post)) <= 5_000
    assert fr.post_cut_bytes == 1


def test_the_age_bound_keeps_the_byte_count() -> None:
    clock = Clock(0.0)
    fr = FlightRecorder(pre_events=100, post_events=0, cooldown_s=0.0, max_age_s=1.0, wall_clock=clock)
    fr.feed(lines(0, 5), arrival_us=0)
    fr.feed(lines(5, 8), arrival_us=2_000_000)
    assert fr.ring_bytes == sum(map(len, lines(5, 8)))
