"""Input scenarios: P2's zero-drop throughput on the event shapes users send, against one long-lived P2 each.

Issue 12 asks for any valid input at full speed, so beside P1's exact shape the benchmark sends
the seed's (no ``ingest_ts_us``), replayed incident lines (receive stamps already there, plus a key
P2 does not know) and an anomaly storm (every event a duplicate and out of order, the flight
recorder on with its cooldown). Each scenario is a rate sweep against ONE P2, started once and
kept across its steps as users run it, so backlog, windows, LRUs and incident captures carry over.
Trade ids and exchange times keep increasing across the whole sweep, except in the storm.

A step's verdict is today's (every consumer processed every event, no bus queue drop), computed
from the deltas of P2's counters between the step's start and its end. Before each step P2 must
*settle*: counters still, queues empty, no connection, no child process (an incident chart; the
Parquet recorder's writer process lives as long as P2 and does not count), no
bundle waiting for its chart and little CPU, for ``settle_quiet_s`` in a row. P2's peak RSS over
the whole sweep, overload steps included, is its ``VmHWM`` at the end.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

from loguru import logger

from benchmarks import measure
from benchmarks.lab import Endpoint, Lab, child_pids, is_recorder_process, remove_recording
from benchmarks.measure import Profile
from benchmarks.stream import FrameStream, read_pool
from benchmarks.sweep import RateSweep
from mercurystream.processes import ServiceError
from mercurystream.shared.scrape import Sample


@dataclass(frozen=True)
class Scenario:
    name: str
    shape: str
    """The events' tail (:data:`benchmarks.stream.SHAPES`)."""
    goal: float
    """Zero-drop rate over the parsing limit of the same run."""
    about: str
    storm: bool = False


SCENARIOS = (
    Scenario("p1", "p1", 0.5, "P1's exact shape (every key P1 writes)"),
    Scenario("seed", "seed", 0.45, "the seed's shape: ingest_ts_ms, no ingest_ts_us"),
    Scenario("replayed", "replayed", 0.45, "incident lines (--keep-timestamps): recv_ts_* kept, one unknown key"),
    Scenario("storm", "p1", 0.35, "anomaly storm: every event a duplicate and out of order, flight recorder on", True),
)
BY_NAME = {s.name: s for s in SCENARIOS}
RSS_GOAL_MB = 80.0
"""P2's peak RSS through a whole scenario sweep, overload steps included."""
STORM_WINDOW = 20_000
"""Events primed in order and then resent: fewer per product than P2's ``DUPLICATE_LRU_MAX`` (50,000)."""
STORM_PRIME_RATE = 50_000.0
SETTLE_CPU_SHARE = 0.25
"""P2 busier than this (cores) has not settled."""


@cache
def _first_position(pool: Path, cycles: int) -> int:
    return FrameStream(read_pool(pool)).stable_start(cycles)


class Feed:
    """Where the next step's stream starts on the long-lived P2: ids and times continue, or the storm's next shuffle."""

    def __init__(self, scenario: Scenario, lab: Lab, prof: Profile) -> None:
        self.scenario = scenario
        self.steps = 0
        self.sent = 0
        self.window = min(STORM_WINDOW, prof.pool_events)
        """The storm's primed events (at most one pool cycle)."""
        if scenario.storm:
            self.start = 0
        else:
            most = prof.scenario_max_steps * RateSweep.max_rate * prof.step_s
            self.start = _first_position(lab.pool, math.ceil(most / prof.pool_events) + 1)

    def options(self) -> dict[str, Any]:
        sc = self.scenario
        if sc.storm:
            return {"shape": sc.shape, "storm": self.window, "seed": self.steps}
        return {"shape": sc.shape, "skip": self.start + self.sent}

    def advance(self, sent: int) -> None:
        self.steps += 1
        self.sent += sent


def charts_pending(incidents: Path) -> int:
    """Bundles in place whose ``chart.png`` P2 has yet to draw."""
    if not incidents.is_dir():
        return 0
    bundles = [d for d in incidents.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return sum(1 for d in bundles if not (d / "chart.png").exists())


def settle(p2: Endpoint, prof: Profile) -> tuple[Sample, float, bool]:
    """Wait until P2 is idle for ``settle_quiet_s``: ``(metrics then, seconds waited, timed out)``."""
    t0 = time.monotonic()
    deadline = t0 + prof.settle_max_s
    quiet_since: float | None = None
    last: dict[str, float] | None = None
    cpu_then, t_then = p2.cpu_seconds(), t0
    while True:
        time.sleep(0.1)
        m = p2.metrics()
        counts = measure.p2_counts(m)
        cpu, now = p2.cpu_seconds(), time.monotonic()
        idle = (
            counts == last
            and m.total("mercurystream_queue_depth") == 0
            and m.value("mercurystream_connections") == 0
            and (cpu - cpu_then) / (now - t_then) <= SETTLE_CPU_SHARE
            and not [c for c in child_pids(p2.pid) if not is_recorder_process(c)]
            and not charts_pending(p2.files["incidents"])
        )
        last, cpu_then, t_then = counts, cpu, now
        if not idle:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= prof.settle_quiet_s:
            return m, round(now - t0, 3), False
        if now >= deadline:
            return m, round(now - t0, 3), True


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0.0)) for k, v in after.items() if v - before.get(k, 0.0)}


def step(lab: Lab, p2: Endpoint, feed: Feed, prof: Profile, rate: float) -> dict[str, Any]:
    """One step on the long-lived P2: settle, send ``step_s`` at ``rate``, judge the counters' deltas."""
    m0, waited, timed_out = settle(p2, prof)
    before = measure.p2_counts(m0)
    remove_recording(p2.files["record"])
    result = measure.drive(
        lab, p2, rate, prof.step_s, prof.grace_s, partial(measure.p2_verdict, before=before), **feed.options()
    )
    m: Sample = result.pop("_metrics")
    feed.advance(result["loadgen"]["sent"])
    counts = measure.p2_counts(m)
    result["pid"] = p2.pid
    result["settle_before_s"] = waited
    result["settle_timed_out"] = timed_out
    result["processed"] = {c: int(counts[c] - before[c]) for c in measure.CONSUMERS}
    result["drops"] = int(sum(v - before.get(k, 0.0) for k, v in counts.items() if k.startswith("drops:")))
    result["recorded"] = int(counts["recorded"] - before["recorded"])
    for key, name, label in (
        ("anomalies", "mercurystream_anomalies_total", "type"),
        ("incidents", "mercurystream_incidents_total", "type"),
        ("suppressed_triggers", "mercurystream_incident_triggers_suppressed_total", "type"),
    ):
        result[key] = _delta(m.by_label(name, label), m0.by_label(name, label))
    result["rss_mb"] = round(p2.rss_mb(), 1)
    result["peak_rss_mb"] = round(p2.peak_rss_mb(), 1)
    return result


def prime_storm(lab: Lab, p2: Endpoint, feed: Feed) -> dict[str, Any]:
    """Send the storm window once, in order, so that every later frame of the storm is a duplicate."""
    n = feed.window
    gen = lab.loadgen(p2.port, STORM_PRIME_RATE, count=n, shape=feed.scenario.shape)
    sent = gen.sent(timeout_s=n / STORM_PRIME_RATE * 4 + 60)
    gen.finish()
    if sent["sent"] != n:
        raise ServiceError(f"priming the storm sent {sent['sent']} of {n} events")
    return {"events": n, "rate": STORM_PRIME_RATE}


def sweep(lab: Lab, scenario: Scenario, prof: Profile, start: float, factor: float) -> dict[str, Any]:
    """The scenario's rate sweep against one P2 started here; its peak RSS through all of it."""
    p2 = lab.p2(RECORD="true")
    feed = Feed(scenario, lab, prof)
    try:
        prime = prime_storm(lab, p2, feed) if scenario.storm else None
        label = f"scenario {scenario.name}"
        out = measure.sweep(label, partial(step, lab, p2, feed, prof), start, factor, prof, prof.scenario_max_steps)
        m = p2.metrics()
        out["peak_rss_mb"] = round(p2.peak_rss_mb(), 1)
        out["pid"] = p2.pid
        out["events"] = feed.sent
        out["first_position"] = feed.start
        out["prime"] = prime
        out["anomalies"] = {k: int(v) for k, v in m.by_label("mercurystream_anomalies_total", "type").items() if v}
        out["incidents"] = int(m.total("mercurystream_incidents_total"))
        if p2.service.proc is not None and p2.service.proc.poll() is not None:
            raise ServiceError(f"P2 exited during scenario {scenario.name}; see {lab.logs}")
    finally:
        lab.stop(p2)
        remove_recording(p2.files["record"])
    logger.info(
        f"scenario {scenario.name:<9} {out['events_per_s']:>11,.0f} ev/s zero-drop, P2 peak RSS "
        f"{out['peak_rss_mb']} MB over {len(out['steps'])} steps ({out['events']:,} events)"
    )
    return out
