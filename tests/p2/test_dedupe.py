"""One dedupe for P2: verdicts decided once per batch at publish, ids in one store bounded in total."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mercurystream.p2.analytics.dedupe import TradeFilter
from mercurystream.p2.batch import Batch
from mercurystream.p2.dedupe import Dedupe
from mercurystream.p2.detectors import Detectors
from mercurystream.p2.recent_ids import RecentIds, RecentIdStore
from tests.p2.support import NOW_US, make_settings, sample, trade


def test_the_store_forgets_the_product_touched_longest_ago_past_its_total_and_counts_the_ids() -> None:
    store = RecentIdStore(max_ids=100)
    held = store.namespace("r")
    for p in ("A", "B", "C"):
        r = held[p] = RecentIds(1000)
        for tid in range(0, 80, 2):  # holes: the general form, 40 ids each
            r.add(tid)
        store.touched("r", [p])
    assert set(held) == {"B", "C"}
    assert store.evicted_ids == 40 and store.evicted_products == 1
    assert store.total <= 100
    held["B"].add(1000)
    store.touched("r", ["B"])  # B is now the most recent: C goes next
    held["D"] = RecentIds(1000)
    held["D"].add_run(list(range(10)))  # a run costs 1, whatever its length
    store.touched("r", ["D"])
    assert set(held) == {"B", "C", "D"} and held["D"].cost == 1
    for tid in range(20, 80, 2):
        held["D"].add(tid)  # now 31: over the total, C goes
    store.touched("r", ["D"])
    assert set(held) == {"B", "D"}
    assert store.total == held["B"].cost + held["D"].cost <= 100
    assert store.evicted_ids == 80


def test_one_product_over_the_total_stays_bounded_by_its_own_lru() -> None:
    store = RecentIdStore(max_ids=10)
    held = store.namespace("r")
    r = held["A"] = RecentIds(50)
    for tid in range(0, 400, 2):
        r.add(tid)
    store.touched("r", ["A"])
    assert set(held) == {"A"} and len(r) == 50


def stream(seed: int, n_batches: int) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n_batches):
        events = []
        for _ in range(rng.randint(1, 12)):
            ev = trade(rng.randint(0, 30), product=rng.choice("AB"), t=rng.random())
            if rng.random() < 0.15:
                ev["price"] = "bad"
            if rng.random() < 0.1:
                ev["backfilled"] = True
            events.append(ev)
        out.append(events)
    return out


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 10_000))
def test_verdicts_decided_once_at_publish_equal_each_rule_deciding_for_itself(seed: int) -> None:
    judge = Dedupe(lru_max=8, max_ids=1_000_000)
    own_detectors = Detectors(duplicate_lru_max=8)
    judged_detectors = Detectors(duplicate_lru_max=8)
    own_filter = TradeFilter(8)
    judged_filter = TradeFilter(8)
    for events in stream(seed, 30):
        b = Batch.of_events(events, NOW_US)
        judged = Batch.of_events(events, NOW_US)
        judge.judge(judged)
        assert judged.duplicates is not None and judged.repeats is not None
        assert [(a.type, a.index) for a in own_detectors.process(b)] == [
            (a.type, a.index) for a in judged_detectors.process(judged)
        ]
        assert own_filter.accept(b).positions == judged_filter.accept(judged).positions
        # a part keeps its events' verdicts
        cut = judged.tail(len(judged) // 2)
        assert cut.duplicates == [i - len(judged) // 2 for i in judged.duplicates if i >= len(judged) // 2]
    assert own_detectors.counts == judged_detectors.counts
    assert own_filter.skipped == judged_filter.skipped
    assert judged_filter._seen == {}  # the consumer's filter holds no ids: the store does


def test_p2_holds_one_bounded_store_and_counts_what_it_forgets() -> None:
    from mercurystream.p2.app import P2App

    app = P2App(make_settings(DEDUPE_IDS=5_000, INCIDENT_CHARTS=False))
    rng = random.Random(1)
    for _ in range(40):
        events = [trade(rng.randrange(1 << 40), product=f"P{rng.randrange(1000)}") for _ in range(500)]
        app.bus.publish(Batch.of_events(events, NOW_US))
        for c in app.consumers:
            c.process_pending()
    store = app.dedupe.store
    assert store.total <= 5_000
    assert store.evicted_ids > 0
    assert sample(app.metrics, "mercurystream_budget_evictions_total", bound="dedupe_ids") == store.evicted_ids
    for c in app.consumers:
        if hasattr(c, "trade_filter"):
            assert c.trade_filter._seen == {}
    forensics = next(c for c in app.consumers if c.name == "forensics")
    assert forensics.detectors.duplicate._state == {}
