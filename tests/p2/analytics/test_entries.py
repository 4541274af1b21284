"""Entries: the windows' columns, and the budget that caps how many they hold across products."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.p2.analytics import VolumeWindow, VwapWindow
from mercurystream.p2.analytics.entries import COMPACT_MIN, Entries, over_budget
from tests.p2.analytics.support import feed


class _State:
    def __init__(self, n: int) -> None:
        self.entries = [0] * n


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 500), min_size=1, max_size=30), st.integers(1, 5000))
def test_over_budget_brings_the_total_within_the_bound_taking_from_the_largest_first(sizes, cap) -> None:
    states = {f"P{i}": _State(n) for i, n in enumerate(sizes)}
    held = sum(sizes)
    cuts = over_budget(states, held, cap)
    if held <= cap:
        assert cuts == {}
        return
    assert all(0 < k <= len(states[pid].entries) for pid, k in cuts.items())
    left = {pid: len(s.entries) - cuts.get(pid, 0) for pid, s in states.items()}
    assert sum(left.values()) <= cap - cap // 16
    cut_to = [left[pid] for pid in cuts]
    assert max(cut_to) - min(cut_to) <= 1  # the trimmed meet at one level
    assert all(left[pid] <= max(cut_to) for pid in states if pid not in cuts)  # only smaller ones untouched


def test_a_busy_product_shortens_its_own_vwap_window_before_a_quiet_one_loses_anything() -> None:
    w = VwapWindow(window_s=1e9, max_entries=1000)
    feed(w, [("QUIET", 10.0, 1.0, 0.0)] * 50)
    rng = random.Random(1)
    busy = [("BUSY", rng.uniform(90, 110), 1.0, float(t)) for t in range(5000)]
    for i in range(0, 5000, 100):
        feed(w, busy[i : i + 100])
        w.trim()
    assert w.held <= 1000 and w.held == len(w)
    assert w.vwap("QUIET") == 10.0
    kept = w.held - 50
    newest = busy[-kept:]
    assert w.vwap("BUSY") == pytest.approx(sum(p for _, p, _, _ in newest) / kept)
    assert w.trimmed == 5000 - kept


def test_the_volume_window_trims_the_same_way_and_its_counts_say_what_it_holds() -> None:
    w = VolumeWindow(window_s=1e9, max_entries=100)
    feed(w, [("A", 2.0, 1.0, float(t)) for t in range(80)] + [("B", 1.0, 1.0, 0.5)] * 40)
    w.evict()
    w.trim()
    assert w.held == sum(n for _, n in w.figures().values()) <= 100
    (notional_a, n_a), (notional_b, n_b) = w.volume("A"), w.volume("B")
    assert n_b == 40 and notional_b == pytest.approx(40.0)
    assert notional_a == pytest.approx(2.0 * n_a) and w.trimmed == 80 - n_a


def test_entries_compact_a_small_column_too() -> None:
    e = Entries(1)
    for t in range(4 * COMPACT_MIN):
        e.append(float(t), (1.0,))
    e.drop(3 * COMPACT_MIN)
    assert e.head == 0 and len(e.times) == len(e) == COMPACT_MIN
