"""``benchmarks.measure.sweeps``: searches compared with each other take their steps in turn."""

from __future__ import annotations

from benchmarks import measure
from benchmarks.measure import QUICK, sweep, sweeps


def _step(limit: float, log: list[tuple[str, float]], name: str):
    def run_step(rate: float) -> dict:
        log.append((name, rate))
        ok = rate <= limit
        return {"rate": rate, "passed": ok, "failure": None if ok else "over", "loadgen": {"generator_limited": False}}

    return run_step


def test_searches_alternate_and_each_finds_what_it_would_alone():
    log: list[tuple[str, float]] = []
    limits = {"a": 150_000.0, "b": 90_000.0, "c": 400_000.0}
    found = sweeps({k: (_step(v, log, k), 100_000.0, 1.5) for k, v in limits.items()}, QUICK)
    names = [name for name, _ in log]
    # Round-robin while all three search, each round begun by the next; the longer searches then go on alone.
    assert names[:6] == ["a", "b", "c", "b", "c", "a"]
    for name, limit in limits.items():
        alone: list[tuple[str, float]] = []
        by_itself = sweep(name, _step(limit, alone, name), 100_000.0, 1.5, QUICK)
        assert found[name]["events_per_s"] == by_itself["events_per_s"] <= limit
        assert [r for n, r in log if n == name] == [r for _, r in alone]
        assert [s["rate"] for s in found[name]["steps"]] == [r for _, r in alone]


def test_equal_limits_give_equal_results():
    log: list[tuple[str, float]] = []
    found = sweeps({k: (_step(123_456.0, log, k), 100_000.0, 1.5) for k in "ab"}, QUICK)
    assert found["a"]["steps"] == found["b"]["steps"]
    assert found["a"]["events_per_s"] == found["b"]["events_per_s"] > 0


def test_replay_reports_the_median_send_and_every_rate(monkeypatch):
    rates = iter([520_000.0, 340_000.0, 610_000.0])

    def once(lab, recording, events):
        rate = next(rates)
        return {"events": events, "events_per_s": rate, "summary": f"sent at {rate:,.0f}"}

    monkeypatch.setattr(measure, "_replay_once", once)
    got = measure.replay_rate(None, None, 500_000, repeats=3)
    assert got["events_per_s"] == 520_000.0 and got["summary"] == "sent at 520,000"
    assert got["values"] == [520_000.0, 340_000.0, 610_000.0]
    assert QUICK.replay_repeats == 3
