import math
import random
import statistics
from datetime import UTC, datetime
from fractions import Fraction
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.p2.analytics import (
    SECONDS_PER_YEAR,
    RollingQuantile,
    TradeFilter,
    VolatilityWindow,
    VolumeWindow,
    VwapWindow,
)

BASE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()


def iso(offset_s: float) -> str:
    return datetime.fromtimestamp(BASE + offset_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def trade(tid=1, product="BTC-USD", price=100.0, size=1.0, t=0.0, **extra):
    ev = {"type": "match", "product_id": product, "price": price, "last_size": size, "time": iso(t), "trade_id": tid}
    ev.update(extra)
    return ev


# --- TradeFilter ---------------------------------------------------------------------------------


def test_filter_accepts_valid_trade_as_tuple():
    f = TradeFilter(lru_max=10)
    out = f.filter([trade(tid=5, price=98234.5, size=0.25, t=1.5)])
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
    assert f.filter([bad]) == []
    assert f.skipped[reason] == 1
    assert sum(f.skipped.values()) == 1
    assert f.last_rejected[reason] is bad


def test_filter_accepts_int_price_and_zero_size():
    f = TradeFilter(lru_max=10)
    assert [t[1:3] for t in f.filter([trade(tid=1, price=100, size=0), trade(tid=2, price=5, size=3)])] == [
        (100, 0),
        (5, 3),
    ]


def test_filter_duplicates_per_product():
    f = TradeFilter(lru_max=10)
    out = f.filter([trade(tid=1), trade(tid=1), trade(tid=1, product="ETH-USD"), trade(tid=2)])
    assert [p for p, *_ in out] == ["BTC-USD", "ETH-USD", "BTC-USD"]
    assert f.skipped["duplicate"] == 1
    # across batches too
    assert f.filter([trade(tid=2), trade(tid=3)])[0][0] == "BTC-USD"
    assert f.skipped["duplicate"] == 2
    assert f.accepted == 4


def test_filter_lru_forgets_oldest_ids_only():
    f = TradeFilter(lru_max=3)
    assert len(f.filter([trade(tid=i) for i in (1, 2, 3, 4)])) == 4
    # 1 has left the last three distinct ids; 2, 3, 4 are still remembered
    assert len(f.filter([trade(tid=1)])) == 1
    assert f.filter([trade(tid=4), trade(tid=3)]) == []
    assert f.skipped["duplicate"] == 2


def test_filter_invalid_copy_does_not_hide_valid_one():
    f = TradeFilter(lru_max=10)
    out = f.filter([trade(tid=7, price="bad"), trade(tid=7, price=101.0), trade(tid=7, price=101.0)])
    assert [t[1] for t in out] == [101.0]
    assert f.skipped["invalid_price"] == 1
    assert f.skipped["duplicate"] == 1


def test_filter_caps_products():
    f = TradeFilter(lru_max=10, max_products=2)
    out = f.filter([trade(product="A"), trade(product="B"), trade(product="C"), trade(tid=2, product="A")])
    assert [t[0] for t in out] == ["A", "B", "A"]
    assert f.skipped["too_many_products"] == 1


# --- VwapWindow ----------------------------------------------------------------------------------


def test_vwap_hand_computed_with_eviction():
    w = VwapWindow(window_s=15)
    w.add_many([("BTC-USD", 100.0, 1.0, 0.0), ("BTC-USD", 110.0, 3.0, 10.0)])
    assert w.vwap("BTC-USD") == pytest.approx((100 * 1 + 110 * 3) / 4)
    # at t=20 the edge is 5: the trade at 0 leaves, 10 and 20 remain
    touched = w.add_many([("BTC-USD", 90.0, 2.0, 20.0)])
    assert touched == {"BTC-USD"}
    assert w.vwap("BTC-USD") == pytest.approx((110 * 3 + 90 * 2) / 5)
    # the edge itself (t=25-15=10) is still inside
    w.add("BTC-USD", 95.0, 1.0, 25.0)
    assert w.vwap("BTC-USD") == pytest.approx((110 * 3 + 90 * 2 + 95) / 6)
    w.add("BTC-USD", 80.0, 0.5, 100.0)
    assert w.vwap("BTC-USD") == pytest.approx(80.0)
    assert len(w) == 1


def test_vwap_products_are_independent():
    w = VwapWindow(window_s=60)
    w.add_many([("BTC-USD", 100.0, 1.0, 0.0), ("ETH-USD", 10.0, 2.0, 0.0), ("ETH-USD", 13.0, 1.0, 1000.0)])
    assert w.vwap("BTC-USD") == 100.0
    assert w.vwap("ETH-USD") == 13.0
    assert w.vwap("SOL-USD") is None
    assert list(w.snapshot()) == ["BTC-USD", "ETH-USD"]


def test_vwap_out_of_order():
    w = VwapWindow(window_s=10)
    w.add_many([("X", 100.0, 1.0, 100.0), ("X", 200.0, 1.0, 95.0), ("X", 300.0, 1.0, 89.0)])
    # 95 is late but inside the window and counts; 89 is older than the edge (90)
    assert w.vwap("X") == pytest.approx(150.0)
    assert w.skipped == {"outside_window": 1}


def test_vwap_zero_size_moves_nothing():
    w = VwapWindow(window_s=10)
    w.add("X", 50.0, 0.0, 0.0)
    assert w.vwap("X") is None
    w.add("X", 100.0, 2.0, 1.0)
    w.add("X", 1e6, 0.0, 2.0)
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
        w.add_many(batch)
        inside = [(p, s) for _, p, s, tt in trades if tt >= t - 30]
        expected = math.fsum(p * s for p, s in inside) / math.fsum(s for _, s in inside)
        assert w.vwap("BTC-USD") == pytest.approx(expected, rel=1e-12)


# --- RollingQuantile -----------------------------------------------------------------------------


def nearest_rank(values, q):
    ordered = sorted(values)
    k = math.ceil(Fraction(str(q)) * len(ordered)) - 1
    return ordered[max(k, 0)]


QS = (0.0, 0.01, 0.07, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0)


def test_quantile_empty_and_bounds():
    rq = RollingQuantile(5)
    assert rq.quantile(0.5) is None
    assert len(rq) == 0
    with pytest.raises(ValueError):
        rq.quantile(1.5)
    with pytest.raises(ValueError):
        RollingQuantile(0)


def test_quantile_small_by_hand():
    rq = RollingQuantile(4)
    rq.add_many([5, 1, 9, 3])
    assert [rq.quantile(q) for q in (0, 0.25, 0.5, 0.75, 0.99, 1)] == [1, 1, 3, 5, 9, 9]
    rq.add(2)  # evicts 5
    assert len(rq) == 4
    assert [rq.quantile(q) for q in (0.5, 0.75, 1)] == [2, 3, 9]


@pytest.mark.parametrize("size", [1, 10, 100, 1000])
def test_quantile_exact_against_sorted_reference(size):
    rng = random.Random(size)
    rq = RollingQuantile(size)
    seen = []
    for step in range(300):
        mode = rng.random()
        if mode < 0.4:
            x = rng.gauss(0, 100)
            rq.add(x)
            seen.append(x)
        else:
            # small batches take the incremental path, big ones force a re-sort
            n = rng.choice([1, 3, size // 4 + 1])
            xs = [rng.choice([rng.random(), float(rng.randint(0, 5))]) for _ in range(n)]
            rq.add_many(xs)
            seen.extend(xs)
        if step % rng.choice([1, 3, 17]) == 0:
            window = seen[-size:]
            assert len(rq) == len(window)
            for q in QS:
                assert rq.quantile(q) == nearest_rank(window, q)


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 20),
    ops=st.lists(
        st.one_of(st.integers(-50, 50), st.lists(st.integers(-50, 50), max_size=30), st.just("q")), max_size=60
    ),
)
def test_quantile_property(size, ops):
    rq = RollingQuantile(size)
    seen = []
    for op in ops:
        if op == "q":
            if seen:
                assert rq.quantile(0.99) == nearest_rank(seen[-size:], 0.99)
                assert rq.quantile(0.5) == nearest_rank(seen[-size:], 0.5)
        elif isinstance(op, list):
            rq.add_many(op)
            seen.extend(op)
        else:
            rq.add(op)
            seen.append(op)
    if seen:
        assert rq.quantile(0.9) == nearest_rank(seen[-size:], 0.9)


# --- VolatilityWindow ----------------------------------------------------------------------------


def test_volatility_hand_computed():
    prices = [100.0, 101.0, 99.5, 100.2, 100.1]
    times = [0.0, 2.0, 3.0, 7.0, 8.0]
    w = VolatilityWindow(n=5)
    w.add_many([("BTC-USD", p, 1.0, t) for p, t in zip(prices, times, strict=True)])
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
        w.add("X", p, 1.0, t)
    # the last 3 trades: 99.5@3, 100.2@7, 100.1@8 -> two returns over 5 s
    r = [math.log(100.2 / 99.5), math.log(100.1 / 100.2)]
    expected = statistics.stdev(r) * math.sqrt(SECONDS_PER_YEAR / ((8.0 - 3.0) / 2))
    assert w.volatility("X") == pytest.approx(expected, rel=1e-12)


def test_volatility_none_until_two_returns_and_time_passes():
    w = VolatilityWindow(n=10)
    w.add("X", 100.0, 1.0, 0.0)
    w.add("X", 101.0, 1.0, 0.0)
    assert w.volatility("X") is None  # one return
    w.add("X", 100.5, 1.0, 0.0)
    assert w.volatility("X") is None  # mean_dt == 0
    w.add("X", 100.0, 1.0, 1.0)
    assert w.volatility("X") > 0
    assert w.volatility("Y") is None


def test_volatility_constant_price_is_zero_not_nan():
    w = VolatilityWindow(n=4)
    for i in range(50):
        w.add("X", 0.1 + 0.2, 1.0, float(i))
    assert w.volatility("X") == 0.0


def test_volatility_skips_out_of_order():
    w = VolatilityWindow(n=5)
    touched = w.add_many([("X", 100.0, 1, 10.0), ("X", 101.0, 1, 11.0), ("X", 500.0, 1, 9.0), ("X", 100.5, 1, 11.0)])
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
        w.add("BTC-USD", p, 1.0, t)
        if i % 97 == 0 and i >= n:
            ps, ts = prices[-n:], times[-n:]
            rets = [math.log(b / a) for a, b in pairwise(ps)]
            expected = statistics.stdev(rets) * math.sqrt(SECONDS_PER_YEAR / ((ts[-1] - ts[0]) / (n - 1)))
            assert w.volatility("BTC-USD") == pytest.approx(expected, rel=1e-9)


# --- VolumeWindow --------------------------------------------------------------------------------


def test_volume_sums_notional_and_count():
    w = VolumeWindow(60)
    w.add_many([("BTC-USD", 100_000.0, 0.5, 0.0), ("BTC-USD", 100_100.0, 0.25, 10.0), ("ETH-USD", 3000.0, 2.0, 20.0)])
    assert w.volume("BTC-USD") == (pytest.approx(100_000 * 0.5 + 100_100 * 0.25), 2)
    assert w.volume("ETH-USD") == (6000.0, 1)
    assert w.volume("SOL-USD") == (0.0, 0)


def test_volume_quiet_product_decays_on_the_stream_clock():
    w = VolumeWindow(60)
    w.add_many([("BTC-USD", 100.0, 1.0, 0.0), ("BTC-USD", 200.0, 1.0, 5.0), ("ETH-USD", 10.0, 1.0, 30.0)])
    w.add("ETH-USD", 10.0, 2.0, 60.0)
    # edge is 0: the trade at exactly 0 is still inside
    assert w.snapshot()["BTC-USD"] == (300.0, 2)
    w.add("ETH-USD", 10.0, 3.0, 61.0)
    assert w.snapshot() == {"BTC-USD": (200.0, 1), "ETH-USD": (60.0, 3)}
    w.add("ETH-USD", 10.0, 1.0, 121.0)
    # edge 61: ETH keeps 61 and 121 (30 + 10 USD); BTC's last trade (5) is gone
    assert w.snapshot() == {"BTC-USD": (0.0, 0), "ETH-USD": (40.0, 2)}
    assert w.now == 121.0


def test_volume_late_trades():
    w = VolumeWindow(60)
    w.add_many([("X", 10.0, 1.0, 100.0), ("X", 10.0, 2.0, 50.0), ("X", 10.0, 4.0, 30.0)])
    assert w.volume("X") == (30.0, 2)
    assert w.skipped == {"outside_window": 1}


def test_volume_matches_brute_force_over_long_run():
    rng = random.Random(11)
    w = VolumeWindow(60)
    trades = []
    t = 0.0
    for _ in range(300):
        batch = []
        for _ in range(rng.randint(1, 30)):
            t += rng.expovariate(2.0)
            batch.append((rng.choice(["A", "B", "C"]), rng.uniform(1, 1e5), rng.lognormvariate(-2, 2), t))
        trades.extend(batch)
        w.add_many(batch)
        snap = w.snapshot()
        for pid in ("A", "B", "C"):
            inside = [p * s for q, p, s, tt in trades if q == pid and tt >= t - 60]
            usd, n = snap.get(pid, (0.0, 0))
            assert n == len(inside)
            assert usd == pytest.approx(math.fsum(inside), rel=1e-11, abs=1e-6)
