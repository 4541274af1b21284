"""VolatilityWindow: annualized volatility of the last n trades' log returns."""

from __future__ import annotations

import math
import random
import statistics
from itertools import pairwise

import pytest

from mercurystream.p2.analytics import (
    SECONDS_PER_YEAR,
    VolatilityWindow,
)
from tests.p2.analytics.support import feed

# --- VolatilityWindow ----------------------------------------------------------------------------


def test_volatility_hand_computed():
    prices = [100.0, 101.0, 99.5, 100.2, 100.1]
    times = [0.0, 2.0, 3.0, 7.0, 8.0]
    w = VolatilityWindow(n=5)
    feed(w, [("BTC-USD", p, 1.0, t) for p, t in zip(prices, times, strict=True)])
    returns = [math.log(b / a) for a, b in pairwise(prices)]
    mean_dt = (8.0 - 0.0) / 4
    expected = statistics.stdev(returns) * math.sqrt(SECONDS_PER_YEAR / mean_dt)
    assert w.volatility("BTC-USD") == pytest.approx(expected, rel=1e-12)
    assert SECONDS_PER_YEAR == 31_536_000


def test_volatility_rolls_over_last_n_trades():
    prices = [100.0, 101.0, 99.5, 100.2, 100.1]
    times = [0.0, 2.0, 3.0, 7.0, 8.0]
    w = VolatilityWindow(n=3)
    for p, t in zip(prices, times, strict=True):
        feed(w, [("X", p, 1.0, t)])
    # the last 3 trades: 99.5@3, 100.2@7, 100.1@8 -> two returns over 5 s
    r = [math.log(100.2 / 99.5), math.log(100.1 / 100.2)]
    expected = statistics.stdev(r) * math.sqrt(SECONDS_PER_YEAR / ((8.0 - 3.0) / 2))
    assert w.volatility("X") == pytest.approx(expected, rel=1e-12)


def test_volatility_none_until_two_returns_and_time_passes():
    w = VolatilityWindow(n=10)
    feed(w, [("X", 100.0, 1.0, 0.0)])
    feed(w, [("X", 101.0, 1.0, 0.0)])
    assert w.volatility("X") is None  # one return
    feed(w, [("X", 100.5, 1.0, 0.0)])
    assert w.volatility("X") is None  # mean_dt == 0
    feed(w, [("X", 100.0, 1.0, 1.0)])
    assert w.volatility("X") > 0
    assert w.volatility("Y") is None


def test_volatility_constant_price_is_zero_not_nan():
    w = VolatilityWindow(n=4)
    for i in range(50):
        feed(w, [("X", 0.1 + 0.2, 1.0, float(i))])
    assert w.volatility("X") == 0.0


def test_volatility_skips_out_of_order():
    w = VolatilityWindow(n=5)
    touched = feed(w, [("X", 100.0, 1, 10.0), ("X", 101.0, 1, 11.0), ("X", 500.0, 1, 9.0), ("X", 100.5, 1, 11.0)])
    assert touched == {"X"}
    assert w.skipped == {"out_of_order": 1}
    r = [math.log(101 / 100), math.log(100.5 / 101)]
    assert w.volatility("X") == pytest.approx(statistics.stdev(r) * math.sqrt(SECONDS_PER_YEAR / 0.5))


def test_volatility_matches_reference_over_long_run():
    rng = random.Random(3)
    n = 20
    w = VolatilityWindow(n)
    prices, times = [], []
    p, t = 100_000.0, 0.0
    for i in range(3000):
        p *= math.exp(rng.gauss(0, 1e-4))
        t += rng.expovariate(10)
        prices.append(p)
        times.append(t)
        feed(w, [("BTC-USD", p, 1.0, t)])
        if i % 97 == 0 and i >= n:
            ps, ts = prices[-n:], times[-n:]
            rets = [math.log(b / a) for a, b in pairwise(ps)]
            expected = statistics.stdev(rets) * math.sqrt(SECONDS_PER_YEAR / ((ts[-1] - ts[0]) / (n - 1)))
            assert w.volatility("BTC-USD") == pytest.approx(expected, rel=1e-9)


def test_extreme_prices_give_finite_returns_both_ways():
    """1e-308 then 1e308: the ratio overflows and its inverse underflows to 0, whose log raised."""
    from mercurystream.p2.rule import run

    prices = [1e-308, 1e308, 1e-308, 5e-324, 1.7e308, 100.0]
    times = [float(t) for t in range(len(prices))]
    kernel, reference = VolatilityWindow(10), VolatilityWindow(10)
    run(kernel, "X", (prices, times))
    run(reference, "X", (prices, times), reference_only=True)
    assert math.isfinite(kernel.volatility("X"))
    assert kernel.volatility("X") == reference.volatility("X")
