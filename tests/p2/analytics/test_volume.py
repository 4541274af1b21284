"""VolumeWindow: notional and trade count over a window of the stream's exchange time."""

from __future__ import annotations

import math
import random

import pytest

from mercurystream.p2.analytics import (
    TradeFilter,
    VolatilityWindow,
    VolumeWindow,
    VwapWindow,
)
from tests.p2.analytics.support import accepted_columns, feed, trade

# --- VolumeWindow --------------------------------------------------------------------------------


def test_volume_sums_notional_and_count():
    w = VolumeWindow(60)
    feed(w, [("BTC-USD", 100_000.0, 0.5, 0.0), ("BTC-USD", 100_100.0, 0.25, 10.0), ("ETH-USD", 3000.0, 2.0, 20.0)])
    assert w.volume("BTC-USD") == (pytest.approx(100_000 * 0.5 + 100_100 * 0.25), 2)
    assert w.volume("ETH-USD") == (6000.0, 1)
    assert w.volume("SOL-USD") == (0.0, 0)


def test_volume_quiet_product_decays_on_the_stream_clock():
    w = VolumeWindow(60)
    feed(w, [("BTC-USD", 100.0, 1.0, 0.0), ("BTC-USD", 200.0, 1.0, 5.0), ("ETH-USD", 10.0, 1.0, 30.0)])
    feed(w, [("ETH-USD", 10.0, 2.0, 60.0)])
    # edge is 0: the trade at exactly 0 is still inside
    assert w.snapshot()["BTC-USD"] == (300.0, 2)
    feed(w, [("ETH-USD", 10.0, 3.0, 61.0)])
    assert w.snapshot() == {"BTC-USD": (200.0, 1), "ETH-USD": (60.0, 3)}
    feed(w, [("ETH-USD", 10.0, 1.0, 121.0)])
    # edge 61: ETH keeps 61 and 121 (30 + 10 USD); BTC's last trade (5) is gone
    assert w.snapshot() == {"BTC-USD": (0.0, 0), "ETH-USD": (40.0, 2)}
    assert w.now == 121.0


def test_volume_late_trades():
    w = VolumeWindow(60)
    feed(w, [("X", 10.0, 1.0, 100.0), ("X", 10.0, 2.0, 50.0), ("X", 10.0, 4.0, 30.0)])
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
        feed(w, batch)
        snap = w.snapshot()
        for pid in ("A", "B", "C"):
            inside = [p * s for q, p, s, tt in trades if q == pid and tt >= t - 60]
            usd, n = snap.get(pid, (0.0, 0))
            assert n == len(inside)
            assert usd == pytest.approx(math.fsum(inside), rel=1e-11, abs=1e-6)


def test_windows_keep_their_memory_bounded_over_a_long_run():
    vwap, volume, vol = VwapWindow(10.0), VolumeWindow(10.0), VolatilityWindow(50)
    f = TradeFilter(lru_max=100)
    t = 0.0
    for b in range(400):
        events = [trade(tid=b * 100 + i, product="AB"[i % 2], t=(t := t + 0.01)) for i in range(100)]
        trades = [*zip(*accepted_columns(f, events), strict=True)]
        for window in (vwap, volume, vol):
            feed(window, trades)
    assert 1000 <= len(vwap) <= 1004  # 10 s at 100 trades/s (float times: an edge may fall either way)
    for st_ in vwap._states.values():
        assert len(st_.entries.times) < 2 * 4096 + 1000
    for st_ in vol._states.values():
        assert len(st_.returns) - st_.head == 49 and len(st_.returns) < 2 * 4096 + 100
    assert all(len(seen.order) < 2 * 4096 + 200 for seen in f._seen.values())


@pytest.mark.parametrize(
    ("product_id", "quote"),
    [
        ("BTC-USD", "USD"),
        ("BTC-EUR", "EUR"),
        ("ETH-USDC", "USDC"),
        ("BTC-PERP-INTX", "INTX"),
        ("BTCUSD", "unknown"),
        ("BTC-", "unknown"),
        ("BTC-usd", "unknown"),
        ("X-" + "A" * 40, "unknown"),
    ],
)
def test_the_quote_currency_is_the_id_s_last_part_or_unknown(product_id: str, quote: str) -> None:
    from mercurystream.p2.analytics.volume import quote_currency

    assert quote_currency(product_id) == quote
