"""RecentIds: the LRU of one product's distinct trade ids, in its run form and its general form."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.p2.recent_ids import RecentIds
from tests.p2.support import ReferenceLru


def test_recent_ids_of_a_run_are_two_numbers_and_come_back_to_that_after_an_irregularity():
    r = RecentIds(max_ids=5)
    r.add_run([10, 11, 12])
    r.add(13)
    r.add_run(list(range(14, 1000)))
    assert r.is_run and r.remembered() == [995, 996, 997, 998, 999] and r.order == []
    assert 995 in r and 994 not in r and 1000 not in r
    r.add(1002)  # a hole: the general form
    assert not r.is_run and r.remembered() == [996, 997, 998, 999, 1002]
    r.seen_again(997)
    assert r.remembered() == [996, 998, 999, 1002, 997]
    r.add_run([1003, 1004, 1005, 1006])
    assert not r.is_run  # 997's repeat is still remembered out of order
    r.add_run([1007, 1008, 1009, 1010, 1011])
    assert r.is_run and r.remembered() == [1007, 1008, 1009, 1010, 1011]
    assert r.high == 1011


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 60), st.integers(1, 6), st.booleans()), max_size=60),
    st.integers(1, 8),
)
def test_recent_ids_is_the_lru_in_either_form(ops, max_ids):
    """Single sightings (new or repeated) and runs above the highest id, with or without holes."""
    r = RecentIds(max_ids)
    ref = ReferenceLru(max_ids)
    for is_run, tid, n, holes in ops:
        if is_run:
            start = tid if r.high == -math.inf else max(int(r.high) + 1, tid)
            tids = list(range(start, start + 2 * n, 2 if holes else 1))[:n]
            r.add_run(tids)
            for t in tids:
                assert not ref.observe(t)
        elif tid in r:
            assert ref.observe(tid)
            r.seen_again(tid)
        else:
            assert not ref.observe(tid)
            r.add(tid)
        assert r.remembered() == list(ref.ids)
        assert all((t in r) == (t in ref.ids) for t in range(0, 140))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 40), max_size=40),
    st.lists(st.lists(st.integers(0, 60), min_size=1, max_size=12), max_size=6),
    st.integers(1, 8),
)
def test_seeing_many_again_is_seeing_each_again(first, later, max_ids):
    """``contains_all`` is ``in`` for each; ``seen_again_many`` leaves the LRU as ``seen_again`` one by one."""
    many, each = RecentIds(max_ids), RecentIds(max_ids)
    for r in (many, each):
        for tid in first:
            r.seen_again(tid) if tid in r else r.add(tid)
    for tids in later:
        assert many.contains_all(tids) == all(t in many for t in tids)
        if many.contains_all(tids):
            many.seen_again_many(tids)
            for t in tids:
                each.seen_again(t)
        else:
            for r in (many, each):
                for t in tids:
                    r.seen_again(t) if t in r else r.add(t)
        assert many.remembered() == each.remembered()


def test_increasing_ids_with_holes_take_the_ascending_form_8_bytes_an_id():
    """Products sharing one id counter (every 20th id is this product's): no set, no list of ints."""
    r = RecentIds(max_ids=1000)
    for start in range(0, 200_000, 2000):
        r.add_run(list(range(start, start + 2000, 20)))
    assert not r.is_run and r.ids is None and r.asc is not None
    assert len(r) == 1000 and r.cost == 1001
    assert r.remembered() == list(range(200_000 - 20_000, 200_000, 20))
    assert 199_980 in r and 199_981 not in r and 179_980 not in r and 180_000 in r
    assert r.contains_all([180_000, 199_980]) and not r.contains_all([180_000, 180_001])
    assert len(r.asc) < 2 * 4096 + 1000  # the forgotten head is dropped
    r.add_run(list(range(200_000, 201_000)))
    assert r.is_run and r.remembered() == list(range(200_000, 201_000))
