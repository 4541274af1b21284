"""Events for the detector tests: trades a millisecond of exchange time apart per id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

RECV_US = 1_700_000_000_000_000 + 150_000
"""Latencies from 150 ms down to below zero as trade ids grow: above and below the threshold."""
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


def process(det, events, now_s: float = 0.0):
    """The detectors over parsed events, normalized as P2 normalizes a read: the anomalies, whose
    counts by type must be what the findings say they add to the counters."""
    from mercurystream.p2.batch import Batch

    findings = det.process(Batch.of_events(events), now_s)
    anomalies = findings.anomalies()
    counted: dict[str, int] = {}
    for a in anomalies:
        counted[a.type] = counted.get(a.type, 0) + a.count
    assert findings.per_type == counted
    return anomalies
