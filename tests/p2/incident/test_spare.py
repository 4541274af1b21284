"""The spare-CPU gate that decides when an incident chart may be drawn."""

from __future__ import annotations

import time

import pytest

from mercurystream.p2.incident.spare import SpareCpu


class Clocks:
    def __init__(self) -> None:
        self.t = 100.0
        self.cpu = 5.0

    def run(self, seconds: float, share: float) -> None:
        self.t += seconds
        self.cpu += seconds * share


def gate(c: Clocks, **kw) -> SpareCpu:
    return SpareCpu(cpu_clock=lambda: c.cpu, clock=lambda: c.t, **kw)


def test_first_call_only_samples():
    c = Clocks()
    g = gate(c)
    assert not g.spare() and g.share is None


def test_idle_p2_is_spare_and_busy_p2_is_not():
    c = Clocks()
    g = gate(c)
    g.spare()
    c.run(1.0, 0.1)
    assert g.spare() and g.share == pytest.approx(0.1)
    c.run(1.0, 0.9)
    assert not g.spare() and g.share == pytest.approx(0.9)


def test_the_verdict_holds_until_an_interval_has_passed():
    c = Clocks()
    g = gate(c, interval_s=1.0)
    g.spare()
    c.run(1.0, 0.9)
    assert not g.spare()
    c.run(0.5, 0.0)
    assert not g.spare(), "half an interval of quiet is not yet evidence"
    c.run(0.5, 0.0)
    assert g.spare() and g.share == pytest.approx(0.0)


def test_a_long_gap_between_polls_measures_afresh():
    c = Clocks()
    g = gate(c)
    g.spare()
    c.run(1.0, 0.0)
    assert g.spare()
    c.run(60.0, 0.01)
    assert not g.spare() and g.share is None
    c.run(1.0, 0.0)
    assert g.spare()


def test_the_owners_busy_hook_holds_charts_back():
    c = Clocks()
    busy = {"v": True}
    g = gate(c, busy=lambda: busy["v"])
    g.spare()
    c.run(1.0, 0.0)
    assert not g.spare()
    busy["v"] = False
    assert g.spare()


def test_threshold_is_inclusive_and_validated():
    c = Clocks()
    g = gate(c, max_share=0.5)
    g.spare()
    c.run(2.0, 0.5)
    assert g.spare()
    with pytest.raises(ValueError):
        SpareCpu(max_share=0)
    with pytest.raises(ValueError):
        SpareCpu(interval_s=0)


def test_real_clocks_measure_this_process():
    g = SpareCpu(interval_s=0.05)
    assert not g.spare()
    cpu0, t0 = time.process_time(), time.monotonic()
    while time.process_time() - cpu0 < 0.02 or time.monotonic() - t0 < 0.05:
        pass
    g.spare()
    assert g.share is not None and 0 < g.share <= 1.5
