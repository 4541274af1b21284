"""VwapWindow: the volume-weighted average price over a window of each product's exchange time."""

from __future__ import annotations

import math
import random

import pytest

from mercurystream.p2.analytics import (
    VwapWindow,
)
from tests.p2.analytics.support import feed

# --- VwapWindow ----------------------------------------------------------------------------------


def test_vwap_hand_computed_with_eviction():
    w = VwapWindow(window_s=15)
    feed(w, [("BTC-USD", 100.0, 1.0, 0.0), ("BTC-USD", 110.0, 3.0, 10.0)])
    assert w.vwap("BTC-USD") == pytest.approx((100 * 1 + 110 * 3) / 4)
    # at t=20 the edge is 5: the trade at 0 leaves, 10 and 20 remain
    touched = feed(w, [("BTC-USD", 90.0, 2.0, 20.0)])
    assert touched == {"BTC-USD"}
    assert w.vwap("BTC-USD") == pytest.approx((110 * 3 + 90 * 2) / 5)
    # the edge itself (t=25-15=10) is still inside
    feed(w, [("BTC-USD", 95.0, 1.0, 25.0)])
    assert w.vwap("BTC-USD") == pytest.approx((110 * 3 + 90 * 2 + 95) / 6)
    feed(w, [("BTC-USD", 80.0, 0.5, 100.0)])
    assert w.vwap("BTC-USD") == pytest.approx(80.0)
    assert len(w) == 1


def test_vwap_products_are_independent():
    w = VwapWindow(window_s=60)
    feed(w, [("BTC-USD", 100.0, 1.0, 0.0), ("ETH-USD", 10.0, 2.0, 0.0), ("ETH-USD", 13.0, 1.0, 1000.0)])
    assert w.vwap("BTC-USD") == 100.0
    assert w.vwap("ETH-USD") == 13.0
    assert w.vwap("SOL-USD") is None
    assert list(w.snapshot()) == ["BTC-USD", "ETH-USD"]


def test_vwap_out_of_order():
    w = VwapWindow(window_s=10)
    feed(w, [("X", 100.0, 1.0, 100.0), ("X", 200.0, 1.0, 95.0), ("X", 300.0, 1.0, 89.0)])
    # 95 is late but inside the window and counts; 89 is older than the edge (90)
    assert w.vwap("X") == pytest.approx(150.0)
    assert w.skipped == {"outside_window": 1}


def test_vwap_zero_size_moves_nothing():
    w = VwapWindow(window_s=10)
    feed(w, [("X", 50.0, 0.0, 0.0)])
    assert w.vwap("X") is None
    feed(w, [("X", 100.0, 2.0, 1.0)])
    feed(w, [("X", 1e6, 0.0, 2.0)])
    assert w.vwap("X") == 100.0


def test_vwap_matches_brute_force_over_long_run():
    rng = random.Random(7)
    w = VwapWindow(window_s=30)
    trades = []
    t = 0.0
    for _ in range(200):
        batch = []
        for _ in range(rng.randint(1, 40)):
            t += rng.expovariate(5.0)
            batch.append(("BTC-USD", rng.uniform(90_000, 110_000), rng.lognormvariate(-3, 2), t))
        trades.extend(batch)
        feed(w, batch)
        inside = [(p, s) for _, p, s, tt in trades if tt >= t - 30]
        expected = math.fsum(p * s for p, s in inside) / math.fsum(s for _, s in inside)
        assert w.vwap("BTC-USD") == pytest.approx(expected, rel=1e-12)


def test_vwap_stays_near_exact_when_a_burst_of_huge_trades_leaves_the_window():
    """The running sums go several windowfuls between exact recomputes (``RECOMPUTE_EVERY``): a burst
    ten orders of magnitude larger than what follows must not leave its rounding behind."""
    rng = random.Random(11)
    w = VwapWindow(window_s=10)
    trades = []
    t = 0.0
    for step in range(400):
        burst = 100 <= step < 120
        batch = []
        for _ in range(rng.randint(1, 60)):
            t += rng.expovariate(20.0 if burst else 2.0)
            size = rng.uniform(1e4, 1e6) if burst else rng.uniform(1e-6, 1e-4)
            batch.append(("BTC-USD", rng.uniform(90_000, 110_000), size, t))
        trades.extend(batch)
        feed(w, batch)
        inside = [(p, s) for _, p, s, tt in trades if tt >= t - 10]
        expected = math.fsum(p * s for p, s in inside) / math.fsum(s for _, s in inside)
        assert w.vwap("BTC-USD") == pytest.approx(expected, rel=1e-9), step
