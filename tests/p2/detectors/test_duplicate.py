"""duplicate: per product, an id among the last distinct ids, by recency."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.p2.detectors import (
    DUPLICATE,
    Detectors,
    DuplicateDetector,
)
from mercurystream.p2.rule import run
from tests.p2.detectors.support import ev, process
from tests.p2.support import ReferenceLru

# --- duplicate ----------------------------------------------------------------------------------


def test_duplicates_are_per_product():
    d = DuplicateDetector()
    assert not d.observe("BTC-USD", 1)
    assert not d.observe("ETH-USD", 1)
    assert d.observe("BTC-USD", 1)
    assert d.observe("BTC-USD", 1)
    assert d.count == 2


def test_duplicate_memory_is_the_last_distinct_ids_by_recency():
    d = DuplicateDetector(max_ids=3)
    for tid in (1, 2, 3):
        assert not d.observe("P", tid)
    assert d.observe("P", 1)  # seen again: 1 is now the most recent
    assert not d.observe("P", 4)  # forgets 2, the one seen longest ago
    assert d.observe("P", 1)
    assert not d.observe("P", 2)  # 2 was forgotten: new again (forgets 3)
    assert not d.observe("P", 3)
    assert d.observe("P", 2)
    assert d.count == 3


def test_duplicate_beyond_the_lru_is_not_counted():
    det = Detectors(duplicate_lru_max=5)
    # Remembered after 1..7: 3..7. Then 1 is forgotten (new), 3 is forgotten (new), 7 is remembered.
    stream = [ev(i) for i in range(1, 8)] + [ev(1), ev(3), ev(7)]
    out = process(det, stream)
    assert [(a.type, a.index) for a in out if a.type == DUPLICATE] == [(DUPLICATE, 9)]
    assert det.counts[DUPLICATE] == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 40), max_size=30) | st.lists(st.integers(0, 10_000), max_size=200), max_size=8),
    st.integers(1, 12),
)
def test_duplicate_memory_is_the_lru_by_recency(batches, max_ids):
    d = DuplicateDetector(max_ids)
    ref = ReferenceLru(max_ids)
    for tids in batches:
        ordered = sorted(set(tids))
        for chunk in (tids, ordered):
            hits = run(d, "P", (chunk,)) if chunk else []
            assert [i for i, _ in hits] == [i for i, t in enumerate(chunk) if ref.observe(t)]
    recent = d._state.get("P")
    if recent is not None:
        assert recent.remembered() == list(ref.ids)
        assert len(recent) == len(ref.ids)
        assert len(recent.order) - recent.head <= 2 * len(recent) + 4096 + 1


def test_a_flood_of_one_repeated_id_keeps_the_sightings_list_bounded():
    d = DuplicateDetector(max_ids=10)
    run(d, "P", (list(range(10)),))
    for _ in range(20):
        assert len(run(d, "P", ([3] * 1000,))) == 1000
    recent = d._state["P"]
    assert not recent.is_run
    assert len(recent.order) - recent.head <= 2 * 10 + 4096 + 1
    assert not d.observe("P", 11)  # forgets 0, the id seen longest ago
    assert not d.observe("P", 0)
    assert d.observe("P", 3)
