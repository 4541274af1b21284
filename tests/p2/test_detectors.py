"""Detectors on hand-built streams, and against naive reference implementations of the definitions."""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mercurystream.p2.bus import Batch
from mercurystream.p2.config import P2Settings
from mercurystream.p2.detectors import (
    DUPLICATE,
    LATENCY_SPIKE,
    OUT_OF_ORDER,
    SCHEMA_DRIFT,
    SEQUENCE_GAP,
    Detectors,
    DriftDetector,
    DuplicateDetector,
    LatencySpikeDetector,
    OutOfOrderDetector,
    SequenceGapDetector,
    describe,
    nearest_rank,
    parse_time_us,
)
from mercurystream.shared.event import latency_ms

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def iso(us: int) -> str:
    return (T0 + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ev(tid: int, pid: str = "BTC-USD", typ: str = "match", t_us: int | None = None, lat_us: int = 500, **kw):
    t_us = tid * 1000 if t_us is None else t_us
    ingest = 1_700_000_000_000_000 + tid * 10
    e = {
        "type": typ,
        "product_id": pid,
        "price": 100.0,
        "last_size": 0.5,
        "time": iso(t_us),
        "trade_id": tid,
        "ingest_ts_ms": ingest // 1000,
        "ingest_ts_us": ingest,
        "recv_ts_ms": (ingest + lat_us) // 1000,
        "recv_ts_us": ingest + lat_us,
    }
    e.update(kw)
    return e


def types_of(anomalies):
    return [(a.type, a.index) for a in anomalies]


# --- schema drift -------------------------------------------------------------------------------


def test_valid_event_is_not_drift_and_int_price_is_a_number():
    d = DriftDetector()
    assert d.observe(ev(1), 0.0) is None
    assert d.observe(ev(1, price=100, last_size=1), 0.0) is None
    assert d.count == 0


@pytest.mark.parametrize(
    ("change", "missing", "mismatched"),
    [
        ({"price": "100.5"}, [], [("price", "number", "str")]),
        ({"price": True}, [], [("price", "number", "bool")]),
        ({"last_size": False}, [], [("last_size", "number", "bool")]),
        ({"trade_id": True}, [], [("trade_id", "int", "bool")]),
        ({"trade_id": 5.0}, [], [("trade_id", "int", "float")]),
        ({"ingest_ts_ms": None}, [], [("ingest_ts_ms", "int", "null")]),
        ({"time": 1714564800}, [], [("time", "str", "int")]),
        ({"product_id": ["BTC-USD"]}, [], [("product_id", "str", "array")]),
    ],
)
def test_wrong_types_are_drift(change, missing, mismatched):
    d = DriftDetector()
    detail = d.observe(ev(1, **change), 0.0)
    assert detail["missing"] == missing
    assert [(m["key"], m["expected"], m["got"]) for m in detail["mismatched"]] == mismatched
    assert d.count == 1


def test_missing_keys_are_drift_and_extra_keys_are_listed_not_drift():
    d = DriftDetector()
    assert d.observe(ev(1, maker_order_id="x", zz=1), 0.0) is None
    e = ev(1, maker_order_id="x", size="0.5")
    del e["last_size"]
    del e["ingest_ts_ms"]
    detail = d.observe(e, 0.0)
    assert detail["missing"] == ["last_size", "ingest_ts_ms"]
    assert detail["mismatched"] == []
    assert detail["unexpected"] == ["maker_order_id", "size"]
    assert d.count == 1


def test_drift_samples_are_paced_per_minute_but_the_count_is_exact():
    d = DriftDetector(samples_per_min=100)
    bad = ev(1, price="x")
    sampled = [d.observe(bad, 60.0 + i * 0.1)["sampled"] for i in range(150)]
    assert sampled == [True] * 100 + [False] * 50
    assert d.observe(bad, 125.0)["sampled"] is True
    assert (d.count, d.sampled, d.unsampled) == (151, 101, 50)
    none = DriftDetector(samples_per_min=0)
    assert none.observe(bad, 0.0)["sampled"] is False
    assert none.count == 1


def test_drifted_event_is_still_checked_by_the_other_detectors():
    det = Detectors(gap_reorder_window=0)
    first = ev(1)
    again = ev(1, price="bad")
    del again["ingest_ts_ms"]
    out = det.process([first, again, ev(3, last_size=True)])
    assert types_of(out) == [(SCHEMA_DRIFT, 1), (DUPLICATE, 1), (SCHEMA_DRIFT, 2), (SEQUENCE_GAP, 2)]
    assert det.counts == {
        SCHEMA_DRIFT: 2,
        DUPLICATE: 1,
        OUT_OF_ORDER: 0,
        SEQUENCE_GAP: 1,
        LATENCY_SPIKE: 0,
    }


def test_drifted_fields_are_not_used_by_other_detectors():
    det = Detectors()
    out = det.process([ev(1), ev(1, product_id=7), ev(1, trade_id="1"), ev(1, trade_id=True)])
    assert [a.type for a in out] == [SCHEMA_DRIFT] * 3
    assert out[0].product_id is None and out[1].product_id == "BTC-USD"


def test_non_string_product_id_never_reaches_per_product_state():
    det = Detectors()
    out = det.process([ev(1, product_id={"a": 1}), ev(2, product_id=None, time=5)])
    assert [a.type for a in out] == [SCHEMA_DRIFT, SCHEMA_DRIFT]


# --- duplicate ----------------------------------------------------------------------------------


def test_duplicates_are_per_product():
    d = DuplicateDetector()
    assert not d.observe("BTC-USD", 1)
    assert not d.observe("ETH-USD", 1)
    assert d.observe("BTC-USD", 1)
    assert d.observe("BTC-USD", 1)
    assert d.count == 2


def test_duplicate_memory_is_the_last_distinct_ids_by_recency():
    d = DuplicateDetector(max_ids=3)
    for tid in (1, 2, 3):
        assert not d.observe("P", tid)
    assert d.observe("P", 1)  # seen again: 1 is now the most recent
    assert not d.observe("P", 4)  # forgets 2, the one seen longest ago
    assert d.observe("P", 1)
    assert not d.observe("P", 2)  # 2 was forgotten: new again (forgets 3)
    assert not d.observe("P", 3)
    assert d.observe("P", 2)
    assert d.count == 3


def test_duplicate_beyond_the_lru_is_not_counted():
    det = Detectors(duplicate_lru_max=5)
    # Remembered after 1..7: 3..7. Then 1 is forgotten (new), 3 is forgotten (new), 7 is remembered.
    stream = [ev(i) for i in range(1, 8)] + [ev(1), ev(3), ev(7)]
    out = det.process(stream)
    assert [(a.type, a.index) for a in out if a.type == DUPLICATE] == [(DUPLICATE, 9)]
    assert det.counts[DUPLICATE] == 1


# --- out of order -------------------------------------------------------------------------------


def test_out_of_order_is_strictly_earlier_per_product():
    d = OutOfOrderDetector()
    assert d.observe("A", iso(10)) is None
    assert d.observe("A", iso(10)) is None  # equal is in order
    assert d.observe("B", iso(5)) is None  # another product
    assert d.observe("A", iso(9)) == iso(10)
    assert d.observe("A", iso(9)) == iso(10)  # the latest does not move back
    assert d.observe("A", iso(11)) is None
    assert d.observe("A", iso(10)) == iso(11)
    assert d.count == 3


def test_out_of_order_parses_other_forms_exactly():
    d = OutOfOrderDetector()
    assert d.observe("A", "2024-05-01T12:00:00.000002Z") is None
    assert d.observe("A", "2024-05-01T12:00:00.000001+00:00") == "2024-05-01T12:00:00.000002Z"
    assert d.observe("A", "2024-05-01T12:00:00.000002+00:00") is None  # same instant
    assert d.observe("A", "2024-05-01T14:00:00+02:00") == "2024-05-01T12:00:00.000002Z"
    assert d.observe("A", "2024-05-01T12:00:01") is None  # naive is UTC, later
    assert d.observe("A", "2024-05-01T12:00:00.500000Z") == "2024-05-01T12:00:01"
    assert d.observe("A", "2024-05-01T12:00:01.000001Z") is None
    assert d.observe("A", "2024-05-01T12:00:01.000000Z") == "2024-05-01T12:00:01.000001Z"
    assert d.count == 4


def test_unparseable_times_are_counted_and_skipped():
    d = OutOfOrderDetector()
    assert d.observe("A", "yesterday") is None
    assert d.observe("A", iso(10)) is None
    assert d.observe("A", "2024-05-01T1a:00:00.000000Z") is None
    assert d.observe("A", iso(9)) == iso(10)
    assert d.unparsed == 2
    assert parse_time_us("2024-13-01T00:00:00Z") is None


# --- sequence gap -------------------------------------------------------------------------------


def gaps_of(window, ids, pid="P"):
    det = SequenceGapDetector(window)
    hits = det.observe_many([(k, pid, tid) for k, tid in enumerate(ids)])
    return det, [(i, ranges, n) for i, _, ranges, n in hits]


def test_contiguous_ids_have_no_gaps():
    det, hits = gaps_of(3, range(100, 200))
    assert hits == [] and det.count == 0


def test_shuffles_inside_the_reorder_window_are_not_gaps():
    ids = list(range(1000, 3000))
    rng = random.Random(7)
    for start in range(0, len(ids), 10):
        chunk = ids[start : start + 10]
        rng.shuffle(chunk)
        ids[start : start + 10] = chunk
    det, hits = gaps_of(10, ids)
    assert hits == [] and det.count == 0
    assert det.pending("P") == []


def test_a_missing_id_is_confirmed_after_window_later_events_and_counted_once():
    # 4 is skipped at index 3 (id 5); the window is 3 later events: indices 4, 5, 6.
    det, hits = gaps_of(3, [1, 2, 3, 5, 6, 7, 8, 9, 4, 4])
    assert hits == [(6, [[4, 4]], 1)]
    assert det.count == 1


def test_arrival_as_the_last_event_of_the_window_is_in_time():
    det, hits = gaps_of(3, [1, 2, 3, 5, 6, 7, 4, 8])
    assert hits == [] and det.count == 0


def test_each_missing_id_counts_once_and_late_ones_split_the_range():
    det, hits = gaps_of(2, [10, 20, 15, 12, 21, 22, 23, 15, 30])
    # 11..19 skipped at index 1, due at index 3; 15 then 12 arrive in time.
    assert hits == [(3, [[11, 11], [13, 14], [16, 19]], 7)]
    assert det.count == 7
    det2, hits2 = gaps_of(0, [10, 13, 11, 12, 14])
    assert hits2 == [(1, [[11, 12]], 2)]
    assert det2.count == 2


def test_first_event_sets_the_baseline_and_lower_ids_are_ignored():
    det, hits = gaps_of(1, [100, 50, 99, 101, 102])
    assert hits == [] and det.count == 0


def test_a_huge_jump_is_one_range_not_a_billion_entries():
    det = SequenceGapDetector(2)
    for k, tid in enumerate([1, 10**9 + 1, 10**9 + 2]):
        confirmed = det.observe("P", tid)
        assert det.pending("P") == ([] if k == 0 else [(2, 10**9)])
        assert confirmed is None
    assert det.observe("P", 10**9 + 3) == [[2, 10**9]]
    assert det.count == 10**9 - 1
    assert det.pending("P") == []


def test_ranges_stay_bounded_by_the_window():
    det = SequenceGapDetector(5)
    tid = 0
    rng = random.Random(3)
    for _ in range(20000):
        tid += rng.choice((1, 1, 2, 3))
        det.observe("P", tid)
        assert len(det.pending("P")) <= 6


def test_ticker_events_are_never_gap_checked():
    det = Detectors(gap_reorder_window=0)
    out = det.process([ev(1, typ="ticker"), ev(5, typ="ticker"), ev(50, typ="ticker"), ev(51), ev(60)])
    assert [a.type for a in out] == [SEQUENCE_GAP]
    assert out[0].index == 4 and out[0].count == 8


def test_gaps_are_per_product():
    det = Detectors(gap_reorder_window=1)
    out = det.process([ev(1, "A"), ev(100, "B"), ev(2, "A"), ev(101, "B"), ev(3, "A"), ev(103, "B"), ev(104, "B")])
    assert [(a.type, a.index, a.product_id, a.count) for a in out] == [(SEQUENCE_GAP, 6, "B", 1)]
    assert out[0].detail["ranges"] == [[102, 102]]
    assert "102" in describe(out[0])


# --- latency spike ------------------------------------------------------------------------------


def test_nearest_rank():
    assert [nearest_rank(n) for n in (1, 2, 99, 100, 101, 3000)] == [1, 2, 99, 99, 100, 2970]


def test_p99_boundary_is_nearest_rank():
    d = LatencySpikeDetector(threshold_ms=100, buffer_size=100, eval_every=100, consecutive=1)
    assert d.observe_many([1.0] * 99 + [500.0]) == []  # rank 99 of 100 is 1.0
    assert d.observe_many([1.0] * 98 + [500.0, 500.0])[0][0] == 99  # two above: rank 99 is 500
    d2 = LatencySpikeDetector(threshold_ms=100, buffer_size=100, eval_every=100, consecutive=1)
    assert d2.observe_many([1.0] * 98 + [100.0, 100.0]) == []  # equal to the threshold is not above


def test_spike_needs_consecutive_evaluations_and_the_run_restarts():
    d = LatencySpikeDetector(threshold_ms=100, buffer_size=10, eval_every=10, consecutive=2)
    high = [200.0] * 10
    low = [1.0] * 10
    assert d.observe_many(high) == []  # run 1
    assert d.observe_many(low) == []  # broken
    assert d.observe_many(high) == []  # run 1
    spikes = d.observe_many(high)  # run 2: spike
    assert [p for p, _ in spikes] == [9]
    assert d.observe_many(high) == []  # restarted: run 1
    assert len(d.observe_many(high)) == 1
    assert d.count == 2 and d.evaluations == 6


def test_spike_evidence_has_p99_before_and_during_the_run():
    d = LatencySpikeDetector(threshold_ms=100, buffer_size=20, eval_every=10, consecutive=2)
    d.observe_many([float(v) for v in range(1, 21)])
    spike = d.observe_many([300.0 + v for v in range(20)])[0][1]
    assert spike.summary == {"threshold_ms": 100.0, "window": 20, "sample": 40, "evaluation": 4}
    d.observe_many([1.0] * 50)  # the detector moves on; the spike's evidence does not
    detail = spike.detail()
    assert detail["p99_before_ms"] == 20.0
    assert detail["run_p99_ms"] == [309.0, 319.0]
    assert detail["p99_ms"] == 319.0
    assert detail["worst_ms"] == [319.0, 318.0, 317.0, 316.0, 315.0]
    assert detail["threshold_ms"] == 100.0 and detail["window"] == 20


def test_spike_evidence_early_in_the_stream_has_no_before():
    d = LatencySpikeDetector(threshold_ms=1, buffer_size=3000, eval_every=5, consecutive=2)
    detail = d.observe_many([5.0] * 10)[0][1].detail()
    assert detail["p99_before_ms"] is None and detail["run_p99_ms"] == [5.0, 5.0]


def test_detectors_latency_uses_the_shared_definition_and_event_index():
    det = Detectors(latency_threshold_ms=1.0, latency_buffer_size=4, latency_eval_every=2, latency_consecutive=1)
    no_lat = ev(1)
    for k in ("recv_ts_us", "recv_ts_ms"):
        del no_lat[k]
    ms_only = ev(3, lat_us=5000)
    del ms_only["ingest_ts_us"]
    stream = [no_lat, ev(2, lat_us=2000), ms_only]
    out = det.process(stream)
    assert latency_ms(no_lat) is None and latency_ms(ms_only) == 5.0
    assert [(a.type, a.index) for a in out] == [(LATENCY_SPIKE, 2)]
    assert "p99_ms" not in out[0].detail
    assert out[0].resolve()["p99_ms"] == 5.0 and out[0].evidence is None


# --- facade and reference implementations -------------------------------------------------------


def test_from_settings_and_event_order_of_anomalies():
    s = P2Settings(GAP_REORDER_WINDOW=0, LATENCY_EVAL_EVERY=1, LATENCY_SPIKE_CONSECUTIVE=1, LATENCY_BUFFER_SIZE=1)
    det = Detectors.from_settings(s)
    out = det.process([ev(1), ev(3, lat_us=500_000), ev(2), ev(3)])
    assert types_of(out) == [
        (SEQUENCE_GAP, 1),
        (LATENCY_SPIKE, 1),
        (OUT_OF_ORDER, 2),
        (DUPLICATE, 3),
    ]


def reference_counts(events, lru, window, thr, size, every, consec):
    counts = dict.fromkeys((SCHEMA_DRIFT, DUPLICATE, OUT_OF_ORDER, SEQUENCE_GAP, LATENCY_SPIKE), 0)
    history: dict[str, list[int]] = {}
    latest: dict[str, int] = {}
    gap: dict[str, dict] = {}
    samples: list[float] = []
    run = 0
    kinds = {
        "type": (str,),
        "product_id": (str,),
        "price": (int, float),
        "last_size": (int, float),
        "time": (str,),
        "trade_id": (int,),
        "ingest_ts_ms": (int,),
    }
    for e in events:
        if any(k not in e or type(e[k]) not in t for k, t in kinds.items()):
            counts[SCHEMA_DRIFT] += 1
        pid, tid, tm = e.get("product_id"), e.get("trade_id"), e.get("time")
        if type(pid) is str and type(tid) is int:
            past = history.setdefault(pid, [])
            if tid in last_distinct(past, lru):
                counts[DUPLICATE] += 1
            past.append(tid)
        if type(pid) is str and type(tm) is str:
            us = parse_time_us(tm)
            if us is not None:
                if pid in latest and us < latest[pid]:
                    counts[OUT_OF_ORDER] += 1
                latest[pid] = max(latest.get(pid, us), us)
        if type(pid) is str and type(tid) is int and e.get("type") == "match":
            g = gap.get(pid)
            if g is None:
                gap[pid] = {"high": tid, "n": 1, "missing": {}}
            else:
                g["n"] += 1
                if tid > g["high"]:
                    for x in range(g["high"] + 1, tid):
                        g["missing"][x] = g["n"] + window
                    g["high"] = tid
                else:
                    g["missing"].pop(tid, None)
                due = [x for x, d in g["missing"].items() if d <= g["n"]]
                for x in due:
                    del g["missing"][x]
                counts[SEQUENCE_GAP] += len(due)
        lat = latency_ms(e)
        if lat is not None:
            samples.append(lat)
            if len(samples) % every == 0:
                win = sorted(samples[-size:])
                if win[nearest_rank(len(win)) - 1] > thr:
                    run += 1
                    if run >= consec:
                        counts[LATENCY_SPIKE] += 1
                        run = 0
                else:
                    run = 0
    return counts


def last_distinct(history: list[int], n: int) -> set[int]:
    """The last ``n`` distinct values of ``history``, walking back from its end."""
    out: set[int] = set()
    for x in reversed(history):
        if len(out) == n:
            break
        out.add(x)
    return out


@st.composite
def streams(draw):
    n = draw(st.integers(1, 250))
    rng = random.Random(draw(st.integers(0, 2**32)))
    next_id = {"A": 1000, "B": 5000}
    out = []
    for _ in range(n):
        pid = rng.choice(("A", "B"))
        r = rng.random()
        if r < 0.1 and out:
            e = dict(rng.choice(out))  # duplicate or replay of an old event
        else:
            step = rng.choice((1, 1, 1, 1, 2, 3, 40))
            next_id[pid] += step
            tid = next_id[pid] + (rng.choice((-2, -1, 0, 0, 0, 0)) if rng.random() < 0.2 else 0)
            e = ev(tid, pid, typ=rng.choice(("match",) * 6 + ("ticker",)), lat_us=rng.choice((300, 500, 150_000)))
            if rng.random() < 0.1:
                e["time"] = e["time"].replace("Z", "+00:00")
            if rng.random() < 0.05:
                e["time"] = e["time"][:19]
        r = rng.random()
        if r < 0.05:
            e["price"] = rng.choice(("1", True, None))
        elif r < 0.08:
            e.pop(rng.choice(("type", "time", "trade_id", "ingest_ts_ms", "last_size")), None)  # a replay may lack it
        elif r < 0.1:
            e["trade_id"] = rng.choice((True, 1.0, "7"))
        elif r < 0.12:
            e["time"] = rng.choice(("garbage", 17))
        out.append(e)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=streams(),
    lru=st.integers(1, 30),
    window=st.integers(0, 6),
    batch=st.integers(1, 40),
    every=st.integers(1, 7),
    size=st.integers(1, 25),
    consec=st.integers(1, 3),
)
def test_counts_match_the_reference_definitions(events, lru, window, batch, every, size, consec):
    det = Detectors(
        duplicate_lru_max=lru,
        gap_reorder_window=window,
        latency_threshold_ms=100.0,
        latency_buffer_size=size,
        latency_eval_every=every,
        latency_consecutive=consec,
    )
    seen = []
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        out = det.process(chunk)
        assert [a.index for a in out] == sorted(a.index for a in out)
        assert all(0 <= a.index < len(chunk) for a in out)
        seen.extend(out)
    expected = reference_counts(events, lru, window, 100.0, size, every, consec)
    assert det.counts == expected
    for t, n in expected.items():
        assert sum(a.count for a in seen if a.type == t) == n


# --- the column paths (process_batch) against process ----------------------------------------------


@st.composite
def clean_streams(draw):
    """Mostly what P1 sends (contiguous ids, increasing times, low latency) with rare faults, so the
    column paths run most of the time and fall back now and then."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    n = draw(st.integers(1, 300))
    next_id = {"A": 1000, "B": 5000, "C": 9000}
    t_us = 0
    out = []
    for _ in range(n):
        pid = rng.choice("AAB" + "C" * rng.randint(0, 1))
        t_us += rng.choice((0, 1, 7, 1000))
        fault = rng.random()
        next_id[pid] += 1
        tid = next_id[pid]
        when = t_us
        lat = 300
        typ = "match"
        if fault < 0.01:
            tid -= 1  # a repeat
        elif fault < 0.02:
            next_id[pid] += 3  # a gap
        elif fault < 0.03:
            when -= 5000  # late
        elif fault < 0.035:
            lat = 250_000
        elif fault < 0.04:
            typ = "ticker"
        e = ev(tid, pid, typ=typ, t_us=max(when, 0), lat_us=lat)
        if fault > 0.995:
            e["price"] = None
        out.append(e)
    return out


def server_batch(chunk: list[dict], mode: str) -> Batch:
    """``receiver``: as the server builds it (events without receive stamps, latencies beside them);
    ``aligned``: stamped events with every latency given when all have one; ``absent``: none given."""
    lats = [latency_ms(e) for e in chunk]
    if mode == "receiver":
        events = [{k: v for k, v in e.items() if k not in ("recv_ts_ms", "recv_ts_us")} for e in chunk]
        at = [i for i, lat in enumerate(lats) if lat is not None]
        given = [lats[i] for i in at]
        return Batch(events, [b"{}"] * len(chunk), 0, latencies_ms=given, latency_at=at)
    ok = mode == "aligned" and None not in lats
    return Batch(chunk, [b"{}"] * len(chunk), 0, latencies_ms=lats if ok else None)


def anomaly_view(anomalies):
    return [(a.type, a.index, a.count, a.product_id, a.resolve()) for a in anomalies]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=clean_streams() | streams(),
    lru=st.integers(1, 30),
    window=st.integers(0, 6),
    batch=st.integers(1, 60),
    every=st.integers(1, 7),
    size=st.integers(1, 25),
    consec=st.integers(1, 3),
    mode=st.sampled_from(["receiver", "aligned", "absent"]),
)
def test_process_batch_is_process(events, lru, window, batch, every, size, consec, mode):
    params = dict(
        duplicate_lru_max=lru,
        gap_reorder_window=window,
        latency_threshold_ms=100.0,
        latency_buffer_size=size,
        latency_eval_every=every,
        latency_consecutive=consec,
    )
    fast, slow = Detectors(**params), Detectors(**params)
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        got = fast.process_batch(server_batch(chunk, mode), 0.0)
        assert anomaly_view(got) == anomaly_view(slow.process(chunk, 0.0))
        assert fast.counts == slow.counts
        for g in ("A", "B", "C"):
            assert fast.sequence_gap.pending(g) == slow.sequence_gap.pending(g)
    assert fast.counts == reference_counts(events, lru, window, 100.0, size, every, consec)
    assert fast.latency.samples == slow.latency.samples
    assert fast.latency.evaluations == slow.latency.evaluations
    assert list(fast.latency._window) == list(slow.latency._window)
    assert list(fast.latency._evicted) == list(slow.latency._evicted)


def test_process_batch_of_an_untyped_batch_is_process():
    det = Detectors()
    out = det.process_batch(Batch([ev(1), ev(2, price="x"), ev(2)], [b"{}"] * 3, 0))
    assert types_of(out) == [(SCHEMA_DRIFT, 1), (DUPLICATE, 2)]


class ReferenceLru:
    """The duplicate memory as an OrderedDict, as first written."""

    def __init__(self, max_ids: int) -> None:
        self.max_ids = max_ids
        self.ids: OrderedDict[int, None] = OrderedDict()

    def observe(self, tid: int) -> bool:
        if tid in self.ids:
            self.ids.move_to_end(tid)
            return True
        self.ids[tid] = None
        if len(self.ids) > self.max_ids:
            self.ids.popitem(last=False)
        return False


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 40), max_size=30) | st.lists(st.integers(0, 10_000), max_size=200), max_size=8),
    st.integers(1, 12),
)
def test_duplicate_memory_is_the_lru_by_recency(batches, max_ids):
    d = DuplicateDetector(max_ids)
    ref = ReferenceLru(max_ids)
    for tids in batches:
        ordered = sorted(set(tids))
        for chunk in (tids, ordered):
            if chunk is ordered and d.observe_new("P", chunk):
                assert not any([ref.observe(t) for t in chunk])
                continue
            hits = d.observe_many([(i, "P", t) for i, t in enumerate(chunk)])
            assert [i for i, _, _ in hits] == [i for i, t in enumerate(chunk) if ref.observe(t)]
    recent = d._state.get("P")
    if recent is not None:
        assert recent.remembered() == list(ref.ids)
        assert len(recent) == len(ref.ids)
        assert len(recent.order) - recent.head <= 2 * len(recent) + 4096 + 1


def test_a_flood_of_one_repeated_id_keeps_the_sightings_list_bounded():
    d = DuplicateDetector(max_ids=10)
    d.observe_many([(i, "P", i) for i in range(10)])
    for _ in range(20):
        assert len(d.observe_many([(0, "P", 3)] * 1000)) == 1000
    recent = d._state["P"]
    assert not recent.is_run
    assert len(recent.order) - recent.head <= 2 * 10 + 4096 + 1
    assert not d.observe("P", 11)  # forgets 0, the id seen longest ago
    assert not d.observe("P", 0)
    assert d.observe("P", 3)


class ReferenceSpikes:
    """The latency detector one sample at a time, as first written."""

    def __init__(self, thr: float, size: int, every: int, consec: int) -> None:
        self.thr, self.size, self.every, self.consec = thr, size, every, consec
        self.window: deque[float] = deque()
        self.evicted: deque[float] = deque(maxlen=every * consec)
        self.above = self.samples = self.evaluations = self.run = self.count = 0

    def observe_many(self, values):
        out = []
        for pos, v in enumerate(values):
            if len(self.window) == self.size:
                old = self.window.popleft()
                self.above -= old > self.thr
                self.evicted.append(old)
            self.window.append(v)
            self.above += v > self.thr
            self.samples += 1
            if self.samples % self.every == 0:
                n = len(self.window)
                self.evaluations += 1
                if self.above >= n - nearest_rank(n) + 1:
                    self.run += 1
                    if self.run >= self.consec:
                        self.run = 0
                        self.count += 1
                        summary = {"window": n, "sample": self.samples, "evaluation": self.evaluations}
                        out.append((pos, summary, [*self.evicted, *self.window]))
                else:
                    self.run = 0
        return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from([1.0, 50.0, 99.0, 100.0, 150.0, 400.0]), max_size=40), max_size=10),
    st.integers(1, 20),
    st.integers(1, 7),
    st.integers(1, 3),
)
def test_latency_batches_are_taken_as_one_sample_at_a_time(batches, size, every, consec):
    _check_latency_batches(batches, size, every, consec)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from([150.0, 400.0]), min_size=1, max_size=40) | st.lists(st.just(1.0), max_size=3),
        max_size=10,
    ),
    st.integers(1, 20),
    st.integers(1, 7),
    st.integers(1, 3),
)
def test_latency_batches_in_an_overload_are_taken_as_one_sample_at_a_time(batches, size, every, consec):
    """Batches all above the threshold, with a window all above or not, take the overload shortcut."""
    _check_latency_batches(batches, size, every, consec)


def _check_latency_batches(batches, size, every, consec):
    fast = LatencySpikeDetector(100.0, size, every, consec)
    ref = ReferenceSpikes(100.0, size, every, consec)
    quiet = LatencySpikeDetector(100.0, size, every, consec)
    for values in batches:
        got = fast.observe_many(values)
        expected = ref.observe_many(values)
        if not quiet.observe_quiet(values):
            assert [pos for pos, _ in quiet.observe_many(values)] == [pos for pos, _ in got]
        else:
            assert got == []
        assert list(quiet._window) == list(fast._window) and list(quiet._evicted) == list(fast._evicted)
        assert (quiet.samples, quiet.evaluations, quiet.run, quiet.above) == (
            fast.samples,
            fast.evaluations,
            fast.run,
            fast.above,
        )
        assert [pos for pos, _ in got] == [pos for pos, _, _ in expected]
        for (_, spike), (_, summary, history) in zip(got, expected, strict=True):
            assert {k: spike.summary[k] for k in summary} == summary
            assert spike.history == history
        assert (fast.count, fast.samples, fast.evaluations, fast.run, fast.above) == (
            ref.count,
            ref.samples,
            ref.evaluations,
            ref.run,
            ref.above,
        )
        assert list(fast._window) == list(ref.window) and list(fast._evicted) == list(ref.evicted)


def test_contiguous_match_ids_take_the_column_path_and_a_gap_does_not():
    g = SequenceGapDetector(window=2)
    assert g.observe_contiguous("P", [5, 6, 7])
    assert not g.observe_contiguous("P", [9, 10])  # 8 is skipped: per-item path
    assert g.observe_many([(0, "P", 9), (1, "P", 10), (2, "P", 11)]) == [(2, "P", [[8, 8]], 1)]
    assert not g.observe_contiguous("P", [12, 12])


def test_fixed_times_in_order_take_the_column_path():
    d = OutOfOrderDetector()
    assert d.observe_fixed("P", [iso(1), iso(1), iso(5)])
    assert not d.observe_fixed("P", [iso(4)])
    assert d.observe_many([(0, "P", iso(4))]) == [(0, "P", iso(4), iso(5))]
    d.observe("Q", "2024-05-01T12:00:00+00:00")
    assert not d.observe_fixed("Q", [iso(9)])  # the latest is not in the fixed form
