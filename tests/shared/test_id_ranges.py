"""A late id inside a missing range (shared/id_ranges.py), held to a set-of-ids reference."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.shared.id_ranges import fill


def test_a_late_id_shrinks_splits_or_removes_its_range_and_keeps_the_payload() -> None:
    ranges = [[5, 5, "a"], [10, 14, "b", 7]]
    assert fill(ranges, 12) and ranges == [[5, 5, "a"], [10, 11, "b", 7], [13, 14, "b", 7]]
    assert fill(ranges, 10) and fill(ranges, 14) and fill(ranges, 5)
    assert ranges == [[11, 11, "b", 7], [13, 13, "b", 7]]
    assert not fill(ranges, 12) and not fill(ranges, 1) and not fill(ranges, 99)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 60), max_size=40))
def test_fill_agrees_with_a_set_of_missing_ids(arrivals: list[int]) -> None:
    ranges = [[3, 9, "x"], [20, 20, "y"], [30, 50, "z"]]
    missing = {i for r in ranges for i in range(r[0], r[1] + 1)}
    for tid in arrivals:
        assert fill(ranges, tid) == (tid in missing)
        missing.discard(tid)
        assert {i for r in ranges for i in range(r[0], r[1] + 1)} == missing
        assert all(a[1] < b[0] for a, b in pairwise(ranges))
