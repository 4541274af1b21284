"""TradeFilter: each valid trade counted once per consumer, everything else under a named reason."""

from __future__ import annotations

import math

import pytest

from mercurystream.p2.analytics import (
    TradeFilter,
)
from mercurystream.p2.analytics.dedupe import SAMPLE_BYTES
from mercurystream.p2.batch import Batch
from tests.p2.analytics.support import BASE, accepted, trade

# --- TradeFilter ---------------------------------------------------------------------------------


def test_filter_accepts_valid_trade_as_tuple():
    f = TradeFilter(lru_max=10)
    out = accepted(f, [trade(tid=5, price=98234.5, size=0.25, t=1.5)])
    assert out == [("BTC-USD", 98234.5, 0.25, pytest.approx(BASE + 1.5, abs=1e-6))]
    assert f.accepted == 1
    assert sum(f.skipped.values()) == 0


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"product_id": None}, "missing_product"),
        ({"product_id": ""}, "missing_product"),
        ({"product_id": 7}, "missing_product"),
        ({"trade_id": None}, "missing_trade_id"),
        ({"trade_id": "12"}, "missing_trade_id"),
        ({"trade_id": 12.0}, "missing_trade_id"),
        ({"trade_id": True}, "missing_trade_id"),
        ({"price": None}, "invalid_price"),
        ({"price": "100.5"}, "invalid_price"),
        ({"price": True}, "invalid_price"),
        ({"price": math.nan}, "invalid_price"),
        ({"price": math.inf}, "invalid_price"),
        ({"price": 0.0}, "invalid_price"),
        ({"price": -1}, "invalid_price"),
        ({"price": 10**400}, "invalid_price"),
        ({"last_size": None}, "invalid_size"),
        ({"last_size": "0.5"}, "invalid_size"),
        ({"last_size": False}, "invalid_size"),
        ({"last_size": math.nan}, "invalid_size"),
        ({"last_size": -math.inf}, "invalid_size"),
        ({"last_size": -0.1}, "invalid_size"),
        ({"time": None}, "invalid_time"),
        ({"time": "yesterday"}, "invalid_time"),
        ({"time": 1714564800}, "invalid_time"),
    ],
)
def test_filter_rejects_with_named_reason(changes, reason):
    f = TradeFilter(lru_max=10)
    bad = trade(tid=1)
    bad.update(changes)
    assert accepted(f, [bad]) == []
    assert f.skipped[reason] == 1
    assert sum(f.skipped.values()) == 1
    assert f.last_rejected[reason] == Batch.of_events([bad]).lines[0][:SAMPLE_BYTES]


def test_filter_accepts_int_price_and_zero_size():
    f = TradeFilter(lru_max=10)
    assert [t[1:3] for t in accepted(f, [trade(tid=1, price=100, size=0), trade(tid=2, price=5, size=3)])] == [
        (100, 0),
        (5, 3),
    ]


def test_filter_duplicates_per_product():
    f = TradeFilter(lru_max=10)
    out = accepted(f, [trade(tid=1), trade(tid=1), trade(tid=1, product="ETH-USD"), trade(tid=2)])
    assert [p for p, *_ in out] == ["BTC-USD", "ETH-USD", "BTC-USD"]
    assert f.skipped["duplicate"] == 1
    # across batches too
    assert accepted(f, [trade(tid=2), trade(tid=3)])[0][0] == "BTC-USD"
    assert f.skipped["duplicate"] == 2
    assert f.accepted == 4


def test_filter_lru_forgets_oldest_ids_only():
    f = TradeFilter(lru_max=3)
    assert len(accepted(f, [trade(tid=i) for i in (1, 2, 3, 4)])) == 4
    # 1 has left the last three distinct ids; 2, 3, 4 are still remembered
    assert len(accepted(f, [trade(tid=1)])) == 1
    assert accepted(f, [trade(tid=4), trade(tid=3)]) == []
    assert f.skipped["duplicate"] == 2


def test_filter_invalid_copy_does_not_hide_valid_one():
    f = TradeFilter(lru_max=10)
    out = accepted(f, [trade(tid=7, price="bad"), trade(tid=7, price=101.0), trade(tid=7, price=101.0)])
    assert [t[1] for t in out] == [101.0]
    assert f.skipped["invalid_price"] == 1
    assert f.skipped["duplicate"] == 1


def test_filter_caps_products():
    f = TradeFilter(lru_max=10, max_products=2)
    out = accepted(f, [trade(product="A"), trade(product="B"), trade(product="C"), trade(tid=2, product="A")])
    assert [t[0] for t in out] == ["A", "B", "A"]
    assert f.skipped["too_many_products"] == 1
