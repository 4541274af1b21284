import math
import random
import statistics
from collections import deque
from datetime import UTC, datetime
from fractions import Fraction
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.p2.analytics import (
    SECONDS_PER_YEAR,
    CheckedTrades,
    RollingQuantile,
    TradeFilter,
    VolatilityWindow,
    VolumeWindow,
    VwapWindow,
)
from mercurystream.p2.bus import Batch

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
            # batches of one, a few and a quarter of the window, mixed with single samples; the
            # small ones go into the quantile's own lists, the others are kept as given
            n = rng.choice([1, 3, size // 4 + 1])
            if mode < 0.7:
                xs = [rng.choice([rng.random(), float(rng.randint(0, 5))]) for _ in range(n)]
                rq.add_many(xs)
                seen.extend(xs)
            else:
                now = rng.randint(10**6, 2 * 10**6)
                stamps = [now - rng.randint(0, 5000) for _ in range(n)]
                rq.add_differences(now, stamps)
                seen.extend(now - v for v in stamps)
        if step % rng.choice([1, 3, 17]) == 0:
            window = seen[-size:]
            assert len(rq) == len(window)
            for q in QS:
                assert rq.quantile(q) == nearest_rank(window, q)


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 20),
    ops=st.lists(
        st.one_of(
            st.integers(-50, 50),
            st.lists(st.integers(-50, 50), max_size=30),
            st.tuples(st.integers(-50, 50), st.lists(st.integers(-50, 50), max_size=30)),
            st.just("q"),
        ),
        max_size=60,
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
        elif isinstance(op, tuple):
            minuend, values = op
            rq.add_differences(minuend, values)
            seen.extend(minuend - v for v in values)
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


# --- the column paths against the per-trade reference -----------------------------------------------
#
# Every step has a column path (C-level loops over a batch) and a per-trade path. The references
# below are the per-trade definitions written out plainly (as the windows were before the column
# paths): the column paths must give the same counts and the same figures up to float summation
# order, whatever the batch holds.


def _time_str(offset_s: float) -> str:
    return iso(round(offset_s, 6))


bad_values = st.sampled_from(
    [
        ("product_id", ""),
        ("product_id", None),
        ("trade_id", "7"),
        ("trade_id", True),
        ("price", 0.0),
        ("price", math.nan),
        ("price", 10**400),
        ("last_size", -1.0),
        ("last_size", math.inf),
        ("time", "not a time"),
        ("time", "2024-05-01T12:00:61.000000Z"),
        ("time", "2024-05-01T12:00:01Z"),
        ("type", None),
        ("ingest_ts_ms", None),
    ]
)


@st.composite
def event_batches(draw, max_batches: int = 6, max_len: int = 12):
    """Batches of events on up to three products: mostly increasing ids and times, with repeats,
    late and very late trades, zero sizes and, now and then, a malformed field. Prices and sizes
    are of one scale, so running sums are comparable with exact ones at a tight tolerance."""
    batches = []
    tid = {"A": 100, "B": 500, "C": 900}
    t = 0.0
    for _ in range(draw(st.integers(1, max_batches))):
        batch = []
        for _ in range(draw(st.integers(0, max_len))):
            pid = draw(st.sampled_from("AAB" + ("C" if draw(st.booleans()) else "")))
            step = draw(st.sampled_from([1, 1, 1, 1, 2, 0, -1, -3]))
            tid[pid] += step
            dt = draw(st.sampled_from([0.0, 0.001, 0.25, 1.0, 7.5, -0.5, -40.0, -400.0]))
            t = max(t + dt, 0.0) if dt >= 0 else t
            when = t + dt if dt < 0 else t
            ev = trade(
                tid=tid[pid],
                product=pid,
                price=draw(st.sampled_from([100.0, 101.5, 99.25, 97])),
                size=draw(st.sampled_from([0.5, 2.0, 0.0, 3])),
                t=max(when, 0.0),
                ingest_ts_ms=1,
            )
            if draw(st.integers(0, 9)) == 0:
                key, value = draw(bad_values)
                ev[key] = value
            batch.append(ev)
        batches.append(batch)
    return batches


@settings(max_examples=150, deadline=None)
@given(event_batches(max_batches=1, max_len=20))
def test_checked_trades_column_path_is_the_per_event_check(batches):
    (events,) = batches
    fast = CheckedTrades.of(Batch(events, [], 0))
    ref = CheckedTrades.check(events)
    assert fast.trades.tuples() == ref.trades.tuples()
    assert list(fast.ids) == list(ref.ids)
    assert [(i, r, id(e)) for i, r, e in fast.rejects] == [(i, r, id(e)) for i, r, e in ref.rejects]
    for k in range(len(events) + 1):
        a, b = fast.tail(k), ref.tail(k)
        assert a.trades.tuples() == b.trades.tuples() == CheckedTrades.check(events[k:]).trades.tuples()
        assert [(i, r) for i, r, _ in a.rejects] == [(i, r) for i, r, _ in b.rejects]
        for position in range(len(a.trades)):
            assert a.event_of(position) is b.event_of(position)


class ReferenceFilter:
    """The dedupe as first written: a set and a deque per product, one trade at a time."""

    def __init__(self, lru_max: int, max_products: int) -> None:
        self.lru_max = lru_max
        self.max_products = max_products
        self.seen: dict[str, tuple[set, deque]] = {}
        self.skipped: dict[str, int] = {}

    def filter(self, events):
        out = []
        for _, reason, _ in CheckedTrades.check(events).rejects:
            self.skipped[reason] = self.skipped.get(reason, 0) + 1
        checked = CheckedTrades.check(events)
        for trade_, tid in zip(checked.trades.tuples(), checked.ids, strict=True):
            pid = trade_[0]
            if pid not in self.seen:
                if len(self.seen) >= self.max_products:
                    self.skipped["too_many_products"] = self.skipped.get("too_many_products", 0) + 1
                    continue
                self.seen[pid] = (set(), deque())
            ids, order = self.seen[pid]
            if tid in ids:
                self.skipped["duplicate"] = self.skipped.get("duplicate", 0) + 1
                continue
            ids.add(tid)
            order.append(tid)
            if len(order) > self.lru_max:
                ids.discard(order.popleft())
            out.append(trade_)
        return out


@settings(max_examples=150, deadline=None)
@given(event_batches(), st.sampled_from([1, 3, 50]), st.sampled_from([1, 2, 1024]))
def test_trade_filter_accept_is_the_per_trade_dedupe(batches, lru_max, max_products):
    f = TradeFilter(lru_max, max_products)
    ref = ReferenceFilter(lru_max, max_products)
    for events in batches:
        got = f.accept(CheckedTrades.of(Batch(events, [], 0))).tuples()
        assert got == ref.filter(events)
        assert {k: v for k, v in f.skipped.items() if v} == ref.skipped


def test_trade_filter_last_rejected_names_the_event_behind_a_duplicate():
    f = TradeFilter(lru_max=10)
    first = [trade(tid=1), trade(tid=2, price="x")]
    f.filter(first)
    again = trade(tid=1)
    f.filter([trade(tid=5, price=None), again])
    assert f.last_rejected["duplicate"] is again
    assert f.last_rejected["invalid_price"]["trade_id"] == 5


class ReferenceVwap:
    """The VWAP window as first written: a deque of (time, price*size, size) per product."""

    def __init__(self, window_s):
        self.window_s = window_s
        self.states = {}
        self.outside = 0

    def add_many(self, trades):
        touched = set()
        for pid, px, sz, t in trades:
            st_ = self.states.setdefault(pid, {"entries": deque(), "latest": -math.inf})
            if t > st_["latest"]:
                st_["latest"] = t
            elif t < st_["latest"] - self.window_s:
                self.outside += 1
                continue
            touched.add(pid)
            if sz:
                st_["entries"].append((t, px * sz, sz))
        for pid in touched:
            st_ = self.states[pid]
            entries = st_["entries"]
            while entries and entries[0][0] < st_["latest"] - self.window_s:
                entries.popleft()
        return touched

    def vwap(self, pid):
        entries = self.states.get(pid, {}).get("entries")
        if not entries:
            return None
        return math.fsum(e[1] for e in entries) / math.fsum(e[2] for e in entries)


class ReferenceVolume:
    def __init__(self, window_s):
        self.window_s = window_s
        self.now = -math.inf
        self.entries = {}
        self.outside = 0

    def add_many(self, trades):
        for pid, px, sz, t in trades:
            if t > self.now:
                self.now = t
            elif t < self.now - self.window_s:
                self.outside += 1
                continue
            self.entries.setdefault(pid, deque()).append((t, px * sz))
        for entries in self.entries.values():
            while entries and entries[0][0] < self.now - self.window_s:
                entries.popleft()

    def volume(self, pid):
        entries = self.entries.get(pid)
        return (math.fsum(e[1] for e in entries), len(entries)) if entries else (0.0, 0)


def _accepted_batches(batches):
    f = TradeFilter(lru_max=1000)
    return [f.accept(CheckedTrades.of(Batch(events, [], 0))) for events in batches]


@settings(max_examples=200, deadline=None)
@given(event_batches(), st.sampled_from([0.5, 5.0, 30.0]))
def test_vwap_column_path_matches_the_reference(batches, window_s):
    fast, slow, ref = VwapWindow(window_s), VwapWindow(window_s), ReferenceVwap(window_s)
    for cols in _accepted_batches(batches):
        touched = fast.add_trades(cols)
        assert touched == slow.add_many(cols.tuples()) == ref.add_many(cols.tuples())
        assert fast.skipped == slow.skipped == {"outside_window": ref.outside}
        assert len(fast) == len(slow) == sum(len(s["entries"]) for s in ref.states.values())
        for pid in ("A", "B", "C"):
            expected = ref.vwap(pid)
            for w in (fast, slow):
                assert w.vwap(pid) == (None if expected is None else pytest.approx(expected, rel=1e-9))


@settings(max_examples=200, deadline=None)
@given(event_batches(), st.sampled_from([0.5, 5.0, 60.0]))
def test_volume_column_path_matches_the_reference(batches, window_s):
    fast, slow, ref = VolumeWindow(window_s), VolumeWindow(window_s), ReferenceVolume(window_s)
    for cols in _accepted_batches(batches):
        fast.add_trades(cols)
        slow.add_many(cols.tuples())
        ref.add_many(cols.tuples())
        assert fast.now == slow.now == ref.now
        assert fast.skipped == slow.skipped == {"outside_window": ref.outside}
        for pid in ("A", "B", "C"):
            usd, n = ref.volume(pid)
            for w in (fast, slow):
                got_usd, got_n = w.volume(pid)
                assert got_n == n
                assert got_usd == pytest.approx(usd, rel=1e-9, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(event_batches(), st.sampled_from([3, 4, 10]))
def test_volatility_column_path_matches_the_per_trade_path(batches, n):
    fast, slow = VolatilityWindow(n), VolatilityWindow(n)
    kept: dict[str, list[tuple[float, float]]] = {}
    for cols in _accepted_batches(batches):
        assert fast.add_trades(cols) == slow.add_many(cols.tuples())
        assert fast.skipped == slow.skipped
        for pid, px, _, t in cols.tuples():
            trades_ = kept.setdefault(pid, [])
            if not trades_ or t >= trades_[-1][1]:
                trades_.append((px, t))
        for pid in ("A", "B", "C"):
            last = kept.get(pid, [])[-n:]
            rets = [math.log(b[0] / a[0]) for a, b in pairwise(last)]
            expected = None
            if len(rets) >= 2 and (last[-1][1] - last[0][1]) / len(rets) > 0:
                var = max(statistics.variance(rets), 0.0)
                expected = math.sqrt(var * SECONDS_PER_YEAR / ((last[-1][1] - last[0][1]) / len(rets)))
            for w in (fast, slow):
                got = w.volatility(pid)
                if expected is None:
                    assert got is None
                else:
                    assert got == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_windows_keep_their_memory_bounded_over_a_long_run():
    vwap, volume, vol = VwapWindow(10.0), VolumeWindow(10.0), VolatilityWindow(50)
    f = TradeFilter(lru_max=100)
    t = 0.0
    for b in range(400):
        events = [trade(tid=b * 100 + i, product="AB"[i % 2], t=(t := t + 0.01)) for i in range(100)]
        cols = f.accept(CheckedTrades.of(Batch(events, [], 0)))
        vwap.add_trades(cols)
        volume.add_trades(cols)
        vol.add_trades(cols)
    assert 1000 <= len(vwap) <= 1004  # 10 s at 100 trades/s (float times: an edge may fall either way)
    for st_ in vwap._states.values():
        assert len(st_.entries.times) < 2 * 4096 + 1000
    for st_ in vol._states.values():
        assert len(st_.returns) - st_.head == 49 and len(st_.returns) < 2 * 4096 + 100
    assert all(len(seen.order) < 2 * 4096 + 200 for seen in f._seen.values())
