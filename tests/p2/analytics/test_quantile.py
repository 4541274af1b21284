"""RollingQuantile: exact nearest-rank quantiles of the last samples."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.p2.analytics import (
    RollingQuantile,
)

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
