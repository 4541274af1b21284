"""out_of_order: strictly earlier than the product's latest time."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from mercurystream.p2.batch import normalize
from mercurystream.p2.detectors import (
    Detectors,
    OutOfOrderDetector,
)
from mercurystream.p2.rule import run
from mercurystream.shared.timeparse import parse_time_us
from tests.p2.detectors.support import iso

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


def test_fixed_times_in_order_take_the_kernel():
    d = OutOfOrderDetector()
    assert d.try_batch("P", ([iso(1), iso(1), iso(5)],), [])
    assert not d.try_batch("P", ([iso(4), iso(6)],), [])  # late, then new: event by event
    assert run(d, "P", ([iso(4)],)) == [(0, iso(5))]
    hits: list = []
    assert d.try_batch("P", ([iso(2), iso(4)],), hits)  # all late: every one a hit, the latest stays
    assert hits == [(0, iso(5)), (1, iso(5))] and d.count == 3
    assert run(d, "P", ([iso(6)],)) == []
    d.observe("Q", "2024-05-01T12:00:00+00:00")
    assert not d.try_batch("Q", ([iso(9)],), [])  # the latest is not in the fixed form


def test_a_far_future_time_does_not_become_the_product_s_latest():
    """A time past MAX_FUTURE_SKEW_S is invalid_time: later real trades are not out of order."""
    from mercurystream.p2.batch import Batch
    from mercurystream.p2.detectors import Detectors
    from tests.p2.detectors.support import ev

    det = Detectors()
    real = [ev(1, t_us=0), ev(3, t_us=2000)]
    future = ev(2, time="9999-12-31T23:59:59.999999Z")
    for events in ([real[0], future], [real[1]]):
        recv_us = parse_time_us(events[0]["time"])
        det.process(Batch.of_events(events, recv_us))
    assert det.out_of_order.count == 0


# --- a time the schema calls invalid moves no clock ------------------------------------------------

NOW_US = 1_700_000_000_000_000


def _payload(tid: int, time: str, **kw) -> bytes:
    e = {
        "type": "match",
        "product_id": "BTC-USD",
        "price": 1.0,
        "last_size": 1.0,
        "time": time,
        "trade_id": tid,
        "ingest_ts_ms": NOW_US // 1000,
        "ingest_ts_us": NOW_US,
        **kw,
    }
    return orjson.dumps(e)


def _good(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.parametrize(
    "bad, extra",
    [
        ("2099-01-01T00:00:00,000000Z", {}),  # a comma: fromisoformat reads it, is_time does not
        ("2099-01-01T00:00:00.Z", {}),  # an empty fraction
        ("2099-13-01T00:00:00.000000Z", {}),  # the fixed form with a calendar error
        ("2099-01-01T00:00:61.000000Z", {}),  # second 61
        ("2099-01-01T00:00:00.000000Z", {}),  # a valid time too far ahead
        ("2099-01-01T00:00:00.000000Z", {"price": 0.0}),  # invalid for its price, and too far ahead
        ("2099-01-01T00:00:00,000000Z", {"price": -1.0}),  # invalid for its price, and no time
    ],
)
def test_an_invalid_time_never_becomes_the_latest(bad: str, extra: dict) -> None:
    """The reviewer's case: one such event made the next 100 good ones all count out of order."""
    det = Detectors()
    det.process(normalize([_payload(1, _good(NOW_US - 1_000_000))], NOW_US)[0])
    poisoned = normalize([_payload(2, bad, **extra)], NOW_US)[0]
    assert poisoned.trades().off_clock == [0]
    det.process(poisoned)
    good = normalize([_payload(3 + k, _good(NOW_US + k)) for k in range(100)], NOW_US)[0]
    det.process(good)
    assert det.counts["out_of_order"] == 0
    assert det.out_of_order.observe("BTC-USD", _good(NOW_US - 2_000_000)) == _good(NOW_US + 99)


def test_an_invalid_time_among_good_ones_in_a_clean_batch_is_skipped_alone() -> None:
    det = Detectors()
    times = [_good(NOW_US + k) for k in range(10)]
    times[4] = "2099-13-01T00:00:00.000000Z"
    batch = normalize([_payload(k, t) for k, t in enumerate(times)], NOW_US)[0]
    assert batch.clean and batch.trades().off_clock == [4]
    det.process(batch)
    assert det.counts["out_of_order"] == 0
    assert det.out_of_order.observe("BTC-USD", _good(NOW_US + 8)) == _good(NOW_US + 9)


def test_the_reference_counts_what_is_time_refuses_as_unparsed() -> None:
    d = OutOfOrderDetector()
    assert d.observe("A", iso(10)) is None
    for bad in ("2099-01-01T00:00:00,000000Z", "2099-01-01T00:00:00.Z", "2099-01-01T00:00:00.000000 Z"):
        assert d.observe("A", bad) is None
    assert d.unparsed == 3
    assert d.observe("A", iso(9)) == iso(10)  # the latest is still the last good time
