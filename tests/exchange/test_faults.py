from collections import Counter

import orjson
import pytest

from mercurystream.exchange.faults import (
    KINDS,
    MALFORMED_VARIANTS,
    FaultInjector,
    FaultRates,
    malform,
)
from mercurystream.exchange.market import HEARTBEAT, MATCH, Market
from mercurystream.shared.models import normalize_trade

START_US = 1_714_567_890_000_000


@pytest.fixture(scope="module")
def trades():
    m = Market(rate=1000.0, seed=3, start_us=START_US)
    m.tickers = False
    msgs = m.advance(100_000_000)
    assert len(msgs) > 90_000
    return msgs


def ids(msgs):
    return [orjson.loads(m[2])["trade_id"] for m in msgs]


def test_no_faults_is_a_no_op(trades):
    inj = FaultInjector()
    assert not inj.active
    assert inj.apply(trades) is trades
    assert inj.injected == dict.fromkeys(KINDS, 0)


def test_rates_are_honoured(trades):
    rates = FaultRates(duplicate=0.02, gap=0.03, reorder=0.01, malformed=0.01)
    inj = FaultInjector(rates, seed=1)
    out = []
    for i in range(0, len(trades), 100):
        out += inj.apply(trades[i : i + 100])
    out += inj.flush()
    n = len(trades)
    for kind in KINDS:
        expected = getattr(rates, kind) * n
        assert abs(inj.injected[kind] - expected) < 0.15 * expected, kind
    assert len(out) == n + inj.injected["duplicate"] - inj.injected["gap"]
    assert sum(inj.malformed.values()) == inj.injected["malformed"]
    assert all(inj.malformed[v] > 0 for v in MALFORMED_VARIANTS)


def test_same_seed_same_faults_different_seed_different(trades):
    rates = FaultRates(duplicate=0.05, gap=0.05, reorder=0.05, malformed=0.05)
    a = FaultInjector(rates, seed=9).apply(trades[:5000])
    b = FaultInjector(rates, seed=9).apply(trades[:5000])
    c = FaultInjector(rates, seed=10).apply(trades[:5000])
    assert a == b
    assert a != c


def test_on_demand_duplicates_are_exact(trades):
    inj = FaultInjector(seed=1)
    inj.inject("duplicate", 3)
    assert inj.active
    out = inj.apply(trades[:10])
    assert ids(out) == [i for t in ids(trades[:3]) for i in (t, t)] + ids(trades[3:10])
    assert inj.injected["duplicate"] == 3
    assert not inj.active
    assert inj.apply(trades[10:20]) == trades[10:20]
    assert inj.injected["duplicate"] == 3


def test_on_demand_gap_skips_heartbeats(trades):
    hb = (2, HEARTBEAT, b'{"type":"heartbeat"}')
    inj = FaultInjector(seed=1)
    inj.inject("gap", 2)
    out = inj.apply([hb, *trades[:5]])
    assert out == [hb, *trades[2:5]]
    assert inj.injected["gap"] == 2


def test_on_demand_reorder_moves_a_message_behind_later_ones_of_its_product(trades):
    inj = FaultInjector(seed=4, reorder_window=3)
    inj.inject("reorder", 1)
    out = []
    for m in trades[:200]:
        out += inj.apply([m])
    assert inj.held == 0
    assert sorted(ids(out)) == sorted(ids(trades[:200]))
    moved = trades[0]
    key = moved[0]
    same_product = [m for m in out if m[0] == key]
    pos = same_product.index(moved)
    assert 1 <= pos <= 3
    assert all(ids([m])[0] > ids([moved])[0] for m in same_product[:pos])
    assert inj.injected["reorder"] == 1


def test_flush_releases_what_is_held(trades):
    inj = FaultInjector(seed=1, reorder_window=5)
    inj.inject("reorder", 1)
    assert inj.apply(trades[:1]) == []
    assert inj.held == 1
    assert inj.flush() == trades[:1]
    assert not inj.active


@pytest.mark.parametrize("variant", MALFORMED_VARIANTS)
def test_each_malformed_variant_fails_validation(trades, variant):
    msg = next(m for m in trades if m[1] == MATCH)
    key, kind, text = malform(msg, variant)
    assert (key, kind) == msg[:2]
    assert text != msg[2]
    if variant == "invalid_json":
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(text)
        return
    _, reason = normalize_trade(orjson.loads(text))
    assert reason is not None


def test_on_demand_malformed_counts_variants(trades):
    inj = FaultInjector(seed=2)
    inj.inject("malformed", 40)
    out = inj.apply(trades[:100])
    assert len(out) == 100
    assert inj.injected["malformed"] == 40 == sum(inj.malformed.values())
    broken = Counter(m[2] != t[2] for m, t in zip(out, trades[:100], strict=True))
    assert broken[True] == 40


def test_validation():
    with pytest.raises(ValueError):
        FaultRates(duplicate=-0.1)
    with pytest.raises(ValueError):
        FaultRates(gap=1.5)
    with pytest.raises(ValueError):
        FaultRates(duplicate=0.6, gap=0.6)
    with pytest.raises(ValueError):
        FaultInjector().inject("explode", 1)
    with pytest.raises(ValueError):
        FaultInjector().inject("gap", -1)
    with pytest.raises(ValueError):
        FaultInjector(reorder_window=0)
