"""One harness for every batch kernel: over any batches, a rule with its kernel equals it by reference alone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mercurystream.p2.analytics import TradeFilter, VolatilityWindow, VolumeWindow, VwapWindow
from mercurystream.p2.detectors import DuplicateDetector, LatencySpikeDetector, OutOfOrderDetector, SequenceGapDetector
from mercurystream.p2.rule import run

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
KEYS = ("A", "B")


def _iso(us: int, fixed: bool) -> str:
    t = T0 + timedelta(microseconds=us)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if fixed else t.isoformat()


@st.composite
def ids(draw) -> list[int]:
    """Mostly a run continuing where the last left off (the kernels' case), sometimes anything, or a
    few ids of a small range (often all remembered already: a resent stretch)."""
    n = draw(st.integers(1, 30))
    if not draw(st.integers(0, 4)):
        return draw(st.lists(st.integers(0, 6), min_size=1, max_size=5))
    if draw(st.integers(0, 3)):
        start = draw(st.integers(0, 60))
        step = draw(st.sampled_from([1, 1, 1, 2]))
        return list(range(start, start + n * step, step))
    return draw(st.lists(st.integers(0, 80), min_size=n, max_size=n))


@st.composite
def rising(draw, width: int = 1000) -> list[int]:
    """Nondecreasing offsets, now and then one that goes back."""
    n = draw(st.integers(1, 30))
    out, t = [], draw(st.integers(0, 5000))
    for _ in range(n):
        t += draw(st.sampled_from([0, 1, 7, width, -3 * width] if draw(st.booleans()) else [0, 1, 7, width]))
        out.append(max(t, 0))
    return out


@st.composite
def times(draw) -> list[str]:
    fixed = draw(st.integers(0, 5)) > 0
    return [_iso(us, fixed) for us in draw(rising())]


@st.composite
def latencies(draw) -> list[float]:
    pool = draw(st.sampled_from([[1.0, 50.0], [1.0, 50.0, 150.0, 400.0], [150.0, 400.0]]))
    return draw(st.lists(st.sampled_from(pool), min_size=1, max_size=40))


@st.composite
def trades(draw, with_size: bool = True) -> tuple[list[float], ...]:
    offsets = draw(rising(width=2_000_000))
    n = len(offsets)
    prices = draw(st.lists(st.sampled_from([99.5, 100.0, 100.25, 101.0]), min_size=n, max_size=n))
    tm = [1.7e9 + us / 1e6 for us in offsets]
    if not with_size:
        return prices, tm
    sizes = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=n, max_size=n))
    return prices, sizes, tm


@st.composite
def stream_trades(draw) -> tuple[list[Any], ...]:
    prices, sizes, tm = draw(trades())
    pids = draw(st.lists(st.sampled_from(KEYS), min_size=len(prices), max_size=len(prices)))
    return pids, prices, sizes, tm


@dataclass
class Case:
    """A rule: how to make one, what its batches look like, and what of its state must agree."""

    make: Any
    columns: Any
    state: Any
    keyed: bool = True


def _approx(snapshot: dict) -> dict:
    return {k: (None if v is None else pytest.approx(v, rel=1e-9, abs=1e-9)) for k, v in snapshot.items()}


def _vol_state(r: VolatilityWindow) -> dict:
    """The returns exactly, their running sums up to summation order (the annualized figure amplifies
    a rounding residue of a near-zero variance by up to 10^10, so it is compared through its inputs)."""
    return {
        k: (
            list(st_.returns[st_.head :]),
            pytest.approx(st_.s1, abs=1e-12),
            pytest.approx(st_.s2, abs=1e-12),
            st_.last_price,
            list(st_.times),
        )
        for k, st_ in r._states.items()
    }


CASES = {
    "duplicate": Case(
        lambda: DuplicateDetector(5),
        st.tuples(ids()),
        lambda r: (r.count, r.untracked, {k: s.remembered() for k, s in r._state.items()}),
    ),
    "out_of_order": Case(
        OutOfOrderDetector,
        st.tuples(times()),
        lambda r: (r.count, r.unparsed, {k: s[:2] for k, s in r._state.items()}),
    ),
    "sequence_gap": Case(
        lambda: SequenceGapDetector(3),
        st.tuples(ids()),
        lambda r: (r.count, {k: (s.high, s.n, r.pending(k)) for k, s in r._state.items()}),
    ),
    "latency_spike": Case(
        lambda: LatencySpikeDetector(100.0, 7, 3, 2),
        st.tuples(latencies()),
        lambda r: (r.count, r.samples, r.since, r.evaluations, r.run, r.above, list(r._window), list(r._evicted)),
        keyed=False,
    ),
    "trade_filter": Case(
        lambda: TradeFilter(5, max_products=1),
        st.tuples(ids()),
        lambda r: {k: s.remembered() for k, s in r._seen.items()},
    ),
    "vwap": Case(
        lambda: VwapWindow(3.0),
        trades(),
        lambda r: (_approx(r.snapshot()), r.skipped, len(r)),
    ),
    "volatility": Case(
        lambda: VolatilityWindow(4),
        trades(with_size=False),
        lambda r: (_vol_state(r), r.skipped),
    ),
    "volume": Case(
        lambda: VolumeWindow(3.0),
        stream_trades(),
        lambda r: ({k: (pytest.approx(v[0], rel=1e-9, abs=1e-9), v[1]) for k, v in r.snapshot().items()}, r.skipped),
        keyed=False,
    ),
}


def _hit_view(hit: Any) -> Any:
    summary = getattr(hit, "summary", None)
    return hit if summary is None else (summary, hit.history)


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_kernel_is_the_reference(name: str, data: st.DataObject) -> None:
    case = CASES[name]
    with_kernel, by_reference = case.make(), case.make()
    batches = data.draw(st.lists(st.tuples(st.sampled_from(KEYS), case.columns), min_size=1, max_size=8))
    for key, columns in batches:
        k = key if case.keyed else None
        got = run(with_kernel, k, columns)
        expected = run(by_reference, k, columns, reference_only=True)
        assert [(pos, _hit_view(h)) for pos, h in got] == [(pos, _hit_view(h)) for pos, h in expected]
        assert case.state(with_kernel) == case.state(by_reference)


def test_every_rule_with_a_kernel_is_in_the_harness() -> None:
    rules = {DuplicateDetector, OutOfOrderDetector, SequenceGapDetector, LatencySpikeDetector}
    rules |= {TradeFilter, VwapWindow, VolatilityWindow, VolumeWindow}
    assert {type(case.make()) for case in CASES.values()} == rules
    assert all(callable(getattr(rule, "try_batch", None)) for rule in rules)
