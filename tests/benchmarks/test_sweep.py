"""The rate search converges on the limit from either side and stops where it should."""

from __future__ import annotations

import pytest

from benchmarks.sweep import RateSweep


def search(limit: float, **kw) -> RateSweep:
    s = RateSweep(**kw)
    while (rate := s.next_rate) is not None:
        s.record(rate, rate <= limit)
    return s


@pytest.mark.parametrize("start", [10_000, 60_000, 500_000, 900_000])
def test_brackets_then_bisects_to_the_precision(start):
    s = search(237_000, start=start, precision=0.05)
    assert s.best is not None and s.worst is not None
    assert s.best <= 237_000 < s.worst
    assert (s.worst - s.best) <= 0.05 * s.best
    assert len(s.steps) <= 12


def test_warm_start_needs_few_steps():
    assert len(search(237_000, start=230_000, factor=1.1).steps) <= 4


def test_nothing_passes_gives_no_best():
    s = search(0, start=5_000, min_rate=1_000)
    assert s.best is None and s.worst == 1_000


def test_capped_when_everything_passes():
    s = search(10**9, start=1_000_000, max_rate=2_000_000)
    assert s.best == 2_000_000 and s.capped


def test_noise_that_inverts_the_bracket_ends_the_search():
    s = RateSweep(start=100_000)
    s.record(100_000, False)
    s.record(90_000, True)
    s.record(95_000, False)
    s.record(120_000, True)  # a lucky pass above a fail
    assert s.next_rate is None and s.best == 120_000


def test_one_step_budget():
    s = search(1e9, start=5_000, max_steps=1)
    assert s.steps == [(5_000, True)] and s.next_rate is None
