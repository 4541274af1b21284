"""The detectors' driver: every rule over a batch, in event order, against naive reference definitions."""

from __future__ import annotations

import random

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mercurystream.p2.batch import Batch, normalize
from mercurystream.p2.config import P2Settings
from mercurystream.p2.detectors import (
    DUPLICATE,
    LATENCY_SPIKE,
    OUT_OF_ORDER,
    SCHEMA_DRIFT,
    SEQUENCE_GAP,
    Detectors,
    nearest_rank,
)
from mercurystream.shared.event import latency_ms
from mercurystream.shared.timeparse import parse_time_us
from tests.p2.detectors.support import RECV_US, ev, process, types_of

# --- facade and reference implementations -------------------------------------------------------


def test_from_settings_and_event_order_of_anomalies():
    s = P2Settings(GAP_REORDER_WINDOW=0, LATENCY_EVAL_EVERY=1, LATENCY_SPIKE_CONSECUTIVE=1, LATENCY_BUFFER_SIZE=1)
    det = Detectors.from_settings(s)
    out = process(det, [ev(1), ev(3, lat_us=500_000), ev(2), ev(3)])
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
    run = episode = 0
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
            if lat > thr and all(x <= thr for x in samples[-size:]):
                episode, run = len(samples), 0  # a late sample into a calm window starts an episode
            samples.append(lat)
            if (len(samples) - episode) % every == 0:
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
        out = process(det, chunk)
        assert [a.index for a in out] == sorted(a.index for a in out)
        assert all(0 <= a.index < len(chunk) for a in out)
        seen.extend(out)
    expected = reference_counts(events, lru, window, 100.0, size, every, consec)
    assert det.counts == expected
    for t, n in expected.items():
        assert sum(a.count for a in seen if a.type == t) == n


# --- the kernels against the references, over whole batches ----------------------------------------------


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


def socket_batch(chunk: list[dict]) -> Batch:
    """The chunk as P2's socket normalizes it: the payloads P1 would send, stamped on receipt."""
    payloads = [orjson.dumps({k: v for k, v in e.items() if k not in ("recv_ts_ms", "recv_ts_us")}) for e in chunk]
    batch, errors = normalize(payloads, RECV_US)
    assert not errors
    return batch


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
    socket=st.booleans(),
)
def test_the_kernels_change_nothing(events, lru, window, batch, every, size, consec, socket):
    params = dict(
        duplicate_lru_max=lru,
        gap_reorder_window=window,
        latency_threshold_ms=100.0,
        latency_buffer_size=size,
        latency_eval_every=every,
        latency_consecutive=consec,
    )
    fast, slow = Detectors(**params), Detectors(**params, kernels=False)
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        b = socket_batch(chunk) if socket else Batch.of_events(chunk)
        got = fast.process(b, 0.0)
        assert anomaly_view(got) == anomaly_view(slow.process(b, 0.0))
        assert fast.counts == slow.counts
        for g in ("A", "B", "C"):
            assert fast.sequence_gap.pending(g) == slow.sequence_gap.pending(g)
    if not socket:
        assert fast.counts == reference_counts(events, lru, window, 100.0, size, every, consec)
    assert fast.latency.samples == slow.latency.samples
    assert fast.latency.evaluations == slow.latency.evaluations
    assert list(fast.latency._window) == list(slow.latency._window)
    assert list(fast.latency._evicted) == list(slow.latency._evicted)


def test_a_batch_with_drift_is_checked_event_by_event():
    det = Detectors()
    out = process(det, [ev(1), ev(2, price="x"), ev(2)])
    assert types_of(out) == [(SCHEMA_DRIFT, 1), (DUPLICATE, 2)]
