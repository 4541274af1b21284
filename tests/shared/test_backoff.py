from __future__ import annotations

import pytest

from mercurystream.shared.backoff import Backoff


def test_ceiling_doubles_up_to_the_cap_and_jitter_scales_it():
    b = Backoff(cap_s=3.0, base_s=0.5, rng=lambda: 1.0)
    assert [b.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    half = Backoff(cap_s=3.0, base_s=0.5, rng=lambda: 0.5)
    assert [half.next_delay() for _ in range(3)] == [0.25, 0.5, 1.0]


def test_full_jitter_stays_within_the_ceiling():
    b = Backoff(cap_s=2.0, base_s=0.1)
    for _ in range(200):
        ceiling = b.ceiling()
        assert 0.0 <= b.next_delay() <= ceiling <= 2.0


def test_reset_starts_over_and_many_attempts_stay_finite():
    b = Backoff(cap_s=10.0, base_s=1.0, rng=lambda: 1.0)
    for _ in range(5000):
        b.next_delay()
    assert b.next_delay() == 10.0
    b.reset()
    assert b.next_delay() == 1.0


def test_base_above_cap_is_clamped():
    assert Backoff(cap_s=0.1, base_s=0.5, rng=lambda: 1.0).next_delay() == 0.1


@pytest.mark.parametrize(("cap", "base"), [(0, 1), (1, 0), (-1, 1)])
def test_non_positive_bounds_are_rejected(cap, base):
    with pytest.raises(ValueError):
        Backoff(cap_s=cap, base_s=base)
