"""sequence_gap: match ids skipped and still missing a window later."""

from __future__ import annotations

import random

from mercurystream.p2.detectors import (
    SEQUENCE_GAP,
    Detectors,
    SequenceGapDetector,
    describe,
)
from mercurystream.p2.rule import run
from tests.p2.detectors.support import ev, process

# --- sequence gap -------------------------------------------------------------------------------


def gaps_of(window, ids, pid="P"):
    det = SequenceGapDetector(window)
    return det, [(k, ranges, n) for k, (ranges, n) in run(det, pid, (list(ids),), reference_only=True)]


def test_contiguous_ids_have_no_gaps():
    det, hits = gaps_of(3, range(100, 200))
    assert hits == [] and det.count == 0


def test_shuffles_inside_the_reorder_window_are_not_gaps():
    ids = list(range(1000, 3000))
    rng = random.Random(7)
    for start in range(0, len(ids), 10):
        chunk = ids[start : start + 10]
        rng.shuffle(chunk)
        ids[start : start + 10] = chunk
    det, hits = gaps_of(10, ids)
    assert hits == [] and det.count == 0
    assert det.pending("P") == []


def test_a_missing_id_is_confirmed_after_window_later_events_and_counted_once():
    # 4 is skipped at index 3 (id 5); the window is 3 later events: indices 4, 5, 6.
    det, hits = gaps_of(3, [1, 2, 3, 5, 6, 7, 8, 9, 4, 4])
    assert hits == [(6, [[4, 4]], 1)]
    assert det.count == 1


def test_arrival_as_the_last_event_of_the_window_is_in_time():
    det, hits = gaps_of(3, [1, 2, 3, 5, 6, 7, 4, 8])
    assert hits == [] and det.count == 0


def test_each_missing_id_counts_once_and_late_ones_split_the_range():
    det, hits = gaps_of(2, [10, 20, 15, 12, 21, 22, 23, 15, 30])
    # 11..19 skipped at index 1, due at index 3; 15 then 12 arrive in time.
    assert hits == [(3, [[11, 11], [13, 14], [16, 19]], 7)]
    assert det.count == 7
    det2, hits2 = gaps_of(0, [10, 13, 11, 12, 14])
    assert hits2 == [(1, [[11, 12]], 2)]
    assert det2.count == 2


def test_first_event_sets_the_baseline_and_lower_ids_are_ignored():
    det, hits = gaps_of(1, [100, 50, 99, 101, 102])
    assert hits == [] and det.count == 0


def test_a_huge_jump_is_one_range_not_a_billion_entries():
    det = SequenceGapDetector(2)
    for k, tid in enumerate([1, 10**9 + 1, 10**9 + 2]):
        confirmed = det.observe("P", tid)
        assert det.pending("P") == ([] if k == 0 else [(2, 10**9)])
        assert confirmed is None
    assert det.observe("P", 10**9 + 3) == ([[2, 10**9]], 10**9 - 1)
    assert det.count == 10**9 - 1
    assert det.pending("P") == []


def test_ranges_stay_bounded_by_the_window():
    det = SequenceGapDetector(5)
    tid = 0
    rng = random.Random(3)
    for _ in range(20000):
        tid += rng.choice((1, 1, 2, 3))
        det.observe("P", tid)
        assert len(det.pending("P")) <= 6


def test_ticker_events_are_never_gap_checked():
    det = Detectors(gap_reorder_window=0)
    out = process(det, [ev(1, typ="ticker"), ev(5, typ="ticker"), ev(50, typ="ticker"), ev(51), ev(60)])
    assert [a.type for a in out] == [SEQUENCE_GAP]
    assert out[0].index == 4 and out[0].count == 8


def test_gaps_are_per_product():
    det = Detectors(gap_reorder_window=1)
    out = process(det, [ev(1, "A"), ev(100, "B"), ev(2, "A"), ev(101, "B"), ev(3, "A"), ev(103, "B"), ev(104, "B")])
    assert [(a.type, a.index, a.product_id, a.count) for a in out] == [(SEQUENCE_GAP, 6, "B", 1)]
    assert out[0].detail["ranges"] == [[102, 102]]
    assert "102" in describe(out[0])


def test_contiguous_match_ids_take_the_kernel_and_a_gap_does_not():
    g = SequenceGapDetector(window=2)
    assert g.try_batch("P", ([5, 6, 7],), [])
    assert not g.try_batch("P", ([9, 10],), [])  # 8 is skipped: the reference decides
    assert run(g, "P", ([9, 10, 11],)) == [(2, ([[8, 8]], 1))]
    assert not g.try_batch("P", ([12, 12],), [])


# --- gap notices from P1 -------------------------------------------------------------------------


def notice(first, last, pid="BTC-USD", source="heartbeat", **kw):
    e = {
        "type": "gap",
        "venue": "coinbase",
        "feed": "exchange",
        "product_id": pid,
        "first_missing": first,
        "last_missing": last,
        "source": source,
        "ingest_ts_ms": 1_700_000_000_000,
        "ingest_ts_us": 1_700_000_000_000_000,
    }
    e.update(kw)
    return e


def test_a_notice_is_a_gap_at_once_even_with_no_later_trade():
    det = Detectors(gap_reorder_window=50)
    found = process(det, [ev(1), ev(2), notice(3, 5)])
    assert [(a.type, a.index, a.count) for a in found] == [(SEQUENCE_GAP, 2, 3)]
    assert found[0].detail["ranges"] == [[3, 5]] and found[0].detail["source"] == "heartbeat"
    assert "announced by P1 (heartbeat)" in describe(found[0])
    assert det.counts[SEQUENCE_GAP] == 3


def test_the_trade_that_reveals_an_announced_gap_makes_no_second_one():
    det = Detectors(gap_reorder_window=2)
    process(det, [ev(1), ev(2), notice(3, 5)])
    later = process(det, [ev(6), ev(7), ev(8), ev(9)])
    assert later == [] and det.counts[SEQUENCE_GAP] == 3


def test_a_notice_confirms_a_pending_range_once_and_a_window_confirmed_one_never_again():
    det = Detectors(gap_reorder_window=50)
    assert process(det, [ev(1), ev(5), ev(6)]) == []
    found = process(det, [notice(2, 4, source="trade_id")])
    assert [(a.index, a.count) for a in found] == [(0, 3)] and det.sequence_gap.pending("BTC-USD") == []
    det = Detectors(gap_reorder_window=1)
    process(det, [ev(1), ev(5), ev(6)])
    assert det.counts[SEQUENCE_GAP] == 3
    assert process(det, [notice(2, 4, source="trade_id")]) == [] and det.counts[SEQUENCE_GAP] == 3


def test_a_notice_in_the_middle_of_a_batch_is_taken_in_its_place():
    det = Detectors(gap_reorder_window=50)
    found = process(det, [ev(1), ev(2), notice(3, 4), ev(5), ev(6), ev(9)])
    assert [(a.index, a.count) for a in found] == [(2, 2)]
    assert det.sequence_gap.pending("BTC-USD") == [(7, 8)]


def test_backfilled_trades_are_no_duplicate_out_of_order_or_gap_anomaly():
    det = Detectors(gap_reorder_window=2)
    process(det, [ev(1), ev(2), notice(3, 4), ev(5), ev(6)])
    late = [ev(3, backfilled=True), ev(4, backfilled=True), ev(4, backfilled=True)]
    assert process(det, late) == []
    assert det.counts == {**det.counts, "duplicate": 0, "out_of_order": 0, SEQUENCE_GAP: 2}


def test_a_notice_with_no_baseline_counts_its_range_and_sets_it():
    det = SequenceGapDetector(5)
    assert det.notice("P", 10, 12) == ([[10, 12]], 3)
    assert det.observe("P", 13) is None and det.count == 3
