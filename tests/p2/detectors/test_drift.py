"""schema_drift: the schema's drift rule on real events, and the detector's pacing of samples."""

from __future__ import annotations

import pytest

from mercurystream.p2.detectors import (
    DUPLICATE,
    LATENCY_SPIKE,
    OUT_OF_ORDER,
    SCHEMA_DRIFT,
    SEQUENCE_GAP,
    Detectors,
    DriftDetector,
)
from mercurystream.shared.schema import drift_of
from tests.p2.detectors.support import ev, process, types_of

# --- schema drift -------------------------------------------------------------------------------


def drift(d: DriftDetector, event: dict, now_s: float):
    """The schema's drift rule on one event, counted and paced by ``d``."""
    detail = drift_of(event)
    return None if detail is None else d.observe(detail, now_s)


def test_valid_event_is_not_drift_and_int_price_is_a_number():
    d = DriftDetector()
    assert drift(d, ev(1), 0.0) is None
    assert drift(d, ev(1, price=100, last_size=1), 0.0) is None
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
    detail = drift(d, ev(1, **change), 0.0)
    assert detail["missing"] == missing
    assert [(m["key"], m["expected"], m["got"]) for m in detail["mismatched"]] == mismatched
    assert d.count == 1


def test_missing_keys_are_drift_and_extra_keys_are_listed_not_drift():
    d = DriftDetector()
    assert drift(d, ev(1, maker_order_id="x", zz=1), 0.0) is None
    e = ev(1, maker_order_id="x", size="0.5")
    del e["last_size"]
    del e["ingest_ts_ms"]
    detail = drift(d, e, 0.0)
    assert detail["missing"] == ["last_size", "ingest_ts_ms"]
    assert detail["mismatched"] == []
    assert detail["unexpected"] == ["maker_order_id", "size"]
    assert d.count == 1


def test_drift_samples_are_paced_per_minute_but_the_count_is_exact():
    d = DriftDetector(samples_per_min=100)
    bad = ev(1, price="x")
    sampled = [drift(d, bad, 60.0 + i * 0.1)["sampled"] for i in range(150)]
    assert sampled == [True] * 100 + [False] * 50
    assert drift(d, bad, 125.0)["sampled"] is True
    assert (d.count, d.sampled, d.unsampled) == (151, 101, 50)
    none = DriftDetector(samples_per_min=0)
    assert drift(none, bad, 0.0)["sampled"] is False
    assert none.count == 1


def test_drifted_event_is_still_checked_by_the_other_detectors():
    det = Detectors(gap_reorder_window=0)
    first = ev(1)
    again = ev(1, price="bad")
    del again["ingest_ts_ms"]
    out = process(det, [first, again, ev(3, last_size=True)])
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
    out = process(det, [ev(1), ev(1, product_id=7), ev(1, trade_id="1"), ev(1, trade_id=True)])
    assert [a.type for a in out] == [SCHEMA_DRIFT] * 3
    assert out[0].product_id is None and out[1].product_id == "BTC-USD"


def test_non_string_product_id_never_reaches_per_product_state():
    det = Detectors()
    out = process(det, [ev(1, product_id={"a": 1}), ev(2, product_id=None, time=5)])
    assert [a.type for a in out] == [SCHEMA_DRIFT, SCHEMA_DRIFT]
