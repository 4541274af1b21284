"""The measurements, one function each, over the processes of a :class:`~benchmarks.lab.Lab`.

Every throughput step here uses a fresh receiver process, so no step inherits the backlog, the
windows or an incident capture of the one before (the input scenarios, ``benchmarks/scenarios.py``,
keep one P2 across their steps on purpose). A step *passes* when the load generator achieved the rate
and, within the grace period after its last frame, every consumer processed exactly the events sent
(the recorder: wrote them to disk) with no drop. Rates above the limit by a hair can still pass: the
bus queues absorb up to ``BUS_QUEUE_EVENTS`` of backlog, which must then drain within the grace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from loguru import logger

from benchmarks.lab import Endpoint, Lab, child_pids, cpu_seconds, is_recorder_process, poll_until, remove_recording
from benchmarks.sweep import RateSweep
from mercurystream.processes import BIN, ServiceError
from mercurystream.shared.clock import now_us
from mercurystream.shared.scrape import Sample

CONSUMERS = ("vwap", "volatility", "volume", "health", "forensics", "recorder")
"""Every consumer the throughput steps require (ENABLE_SLOW, the demo's slow consumer, stays off)."""
PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("p99_9", 0.999))


@dataclass(frozen=True)
class Profile:
    """How long and how fine each measurement is: ``full`` is ``make benchmark``; ``smoke`` is the test's."""

    name: str
    runs: int
    step_s: float
    grace_s: float
    sweep_start: float
    ramp_factor: float
    warm_factor: float
    precision: float
    max_steps: int
    latency_rates: tuple[int, ...]
    latency_s: float
    latency_min_samples: int
    latency_max_s: float
    warmup_s: float
    rss_events: int
    p1_exchange_rate: float
    p1_window_s: float
    replay_events: int
    replay_repeats: int
    pool_events: int
    scenario_max_steps: int
    settle_quiet_s: float
    settle_max_s: float
    recorder_cost_events: int
    kernel_events: int
    kernel_repeats: int


FULL = Profile(
    name="full",
    runs=3,
    step_s=5.0,
    grace_s=1.0,
    sweep_start=60_000,
    ramp_factor=1.5,
    warm_factor=1.1,
    precision=0.05,
    max_steps=12,
    latency_rates=(1_000, 10_000, 50_000),
    latency_s=5.0,
    latency_min_samples=10_000,
    latency_max_s=10.0,
    warmup_s=1.0,
    rss_events=1_000_000,
    p1_exchange_rate=100_000,
    p1_window_s=5.0,
    replay_events=1_000_000,
    replay_repeats=3,
    pool_events=100_000,
    scenario_max_steps=12,
    settle_quiet_s=0.5,
    settle_max_s=30.0,
    recorder_cost_events=200_000,
    kernel_events=50_000,
    kernel_repeats=5,
)
QUICK = Profile(
    **{
        **dataclasses.asdict(FULL),
        "name": "quick",
        "runs": 1,
        "precision": 0.08,
        "latency_min_samples": 5_000,
        "replay_events": 500_000,
    }
)
SMOKE = Profile(
    name="smoke",
    runs=1,
    step_s=1.0,
    grace_s=3.0,
    sweep_start=5_000,
    ramp_factor=1.5,
    warm_factor=1.1,
    precision=0.05,
    max_steps=1,
    latency_rates=(1_000,),
    latency_s=1.0,
    latency_min_samples=0,
    latency_max_s=1.0,
    warmup_s=0.5,
    rss_events=20_000,
    p1_exchange_rate=5_000,
    p1_window_s=1.5,
    replay_events=20_000,
    replay_repeats=1,
    pool_events=20_000,
    scenario_max_steps=2,
    settle_quiet_s=0.3,
    settle_max_s=10.0,
    recorder_cost_events=5_000,
    kernel_events=2_000,
    kernel_repeats=1,
)
PROFILES = {p.name: p for p in (FULL, QUICK, SMOKE)}


# --- throughput steps ---------------------------------------------------------------------------------


def p2_counts(m: Sample) -> dict[str, float]:
    """What the zero-drop verdict compares: events received, each consumer's processed, recorded, drops by consumer."""
    processed = m.by_label("mercurystream_consumer_events_total", "consumer")
    missing = [c for c in CONSUMERS if c not in processed]
    if missing:
        raise ServiceError(f"P2 runs without consumer(s) {', '.join(missing)}: the benchmark needs all of them")
    drops = {f"drops:{c}": v for c, v in m.by_label("mercurystream_drops_total", "consumer").items()}
    return {
        "received": m.value("mercurystream_events_total"),
        **{c: processed[c] for c in CONSUMERS},
        "recorded": m.value("mercurystream_recorded_events_total"),
        **drops,
    }


def p2_verdict(m: Sample, sent: int, before: dict[str, float] | None = None) -> tuple[bool, str | None]:
    """``(settled, failure)``: settled once every count reached ``sent`` or a drop makes it fail anyway.

    ``before`` (:func:`p2_counts` at the step's start) makes every count a delta, for a P2 that
    lives across steps.
    """
    counts = p2_counts(m)
    if before is not None:
        counts = {k: v - before.get(k, 0.0) for k, v in counts.items()}
    failure = dropped(counts)
    if failure is not None:
        return True, failure
    behind = {k: int(v) for k, v in counts.items() if not k.startswith("drops:") and v != sent}
    if behind:
        return False, f"not all of {sent} events processed: {behind}"
    return True, None


def dropped(counts: dict[str, float]) -> str | None:
    """``"N events dropped (consumer=n, ...)"`` from the ``drops:<consumer>`` counts; ``None`` when none dropped."""
    drops = {k.removeprefix("drops:"): v for k, v in counts.items() if k.startswith("drops:")}
    total = sum(drops.values())
    return f"{total:.0f} events dropped ({_nonzero(drops)})" if total else None


def _nonzero(d: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.0f}" for k, v in d.items() if v)


Verdict = Callable[[Sample, int], tuple[bool, str | None]]
"""``(metrics, events sent) -> (settled, failure or None)``."""


def drive(
    lab: Lab, target: Endpoint, rate: float, step_s: float, grace_s: float, verdict: Verdict, **gen: Any
) -> dict[str, Any]:
    """Send for ``step_s`` at ``rate`` to ``target``, then poll its metrics through the grace period.

    ``gen`` goes to :meth:`Lab.loadgen` (the stream's shape, where it starts, a storm).
    """
    loadgen = lab.loadgen(target.port, rate, duration=step_s, **gen)
    sent = loadgen.sent(timeout_s=step_s * 4 + 60)
    t_sent = time.monotonic()
    state: dict[str, Any] = {"failure": "no metrics"}

    def settled() -> bool:
        state["done"], state["failure"] = verdict(target.metrics(), sent["sent"])
        return state["done"]

    poll_until(settled, grace_s)
    settle_s = time.monotonic() - t_sent
    final = target.metrics()
    closed = loadgen.finish()
    failure = state["failure"]
    if not sent["achieved"]:
        why = "the generator could not render fast enough" if sent["generator_limited"] else "receiver backpressure"
        failure = f"rate not achieved: {sent['achieved_rate']:.0f}/s ({why})" + (f"; {failure}" if failure else "")
    return {
        "rate": rate,
        "passed": failure is None,
        "failure": failure,
        "settle_s": round(settle_s, 3),
        "loadgen": {k: v for k, v in sent.items() if k != "event"},
        "acked": closed.get("acked"),
        "_metrics": final,
    }


PARQUET_ROTATE_S = 0.5
"""A Parquet recording's rows count as recorded when their file closes: the steps roll files this
often, so the last rows of a step count within its grace."""


def p2_step(
    lab: Lab, rate: float, prof: Profile, flight_recorder: bool = True, record_format: str = "jsonl"
) -> dict[str, Any]:
    """One step on a fresh P2; ``record_format="parquet"`` records rotating Parquet files instead of JSONL."""
    settings: dict[str, Any] = {"RECORD": "true", "FLIGHT_RECORDER": str(flight_recorder).lower()}
    if record_format != "jsonl":
        settings |= {"RECORD_FORMAT": record_format, "RECORD_ROTATE_S": PARQUET_ROTATE_S}
    p2 = lab.p2(**settings)
    try:
        cpu0 = process_cpu(p2)
        step = drive(lab, p2, rate, prof.step_s, prof.grace_s, p2_verdict)
        cpu = process_cpu(p2)
        sent = max(1, step["loadgen"]["sent"])
        step["cpu_us_per_event"] = {k: round((cpu[k] - cpu0.get(k, 0.0)) / sent * 1e6, 3) for k in cpu}
        m: Sample = step.pop("_metrics")
        step["processed"] = {
            c: int(v) for c, v in m.by_label("mercurystream_consumer_events_total", "consumer").items()
        }
        step["drops"] = int(m.total("mercurystream_drops_total"))
        step["recorded"] = int(m.value("mercurystream_recorded_events_total"))
        step["anomalies"] = {k: int(v) for k, v in m.by_label("mercurystream_anomalies_total", "type").items() if v}
        step["incidents"] = int(m.total("mercurystream_incidents_total"))
        return step
    finally:
        lab.stop(p2)
        remove_recording(p2.files["record"])


def process_cpu(p2: Endpoint) -> dict[str, float]:
    """CPU seconds so far of P2 itself and of its Parquet writer process (if it records Parquet)."""
    out = {"p2": p2.cpu_seconds()}
    for pid in child_pids(p2.pid):
        if is_recorder_process(pid):
            with contextlib.suppress(OSError):
                out["recorder_process"] = cpu_seconds(pid)
    return out


def _baseline_verdict(m: Sample, sent: int) -> tuple[bool, str | None]:
    got = m.value("baseline_events_total")
    if m.value("baseline_invalid_total"):
        return True, "invalid payloads"
    return (True, None) if got == sent else (False, f"parsed {got:.0f} of {sent}")


def baseline_step(lab: Lab, rate: float, prof: Profile) -> dict[str, Any]:
    reader = lab.baseline()
    try:
        step = drive(lab, reader, rate, prof.step_s, prof.grace_s, _baseline_verdict)
        step["processed"] = {"baseline": int(step.pop("_metrics").value("baseline_events_total"))}
        return step
    finally:
        lab.stop(reader)


def sweep(
    name: str, run_step, start: float, factor: float, prof: Profile, max_steps: int | None = None
) -> dict[str, Any]:
    """Search the highest passing rate; ``run_step(rate) -> step dict``; ``max_steps`` overrides the profile's."""
    return sweeps({name: (run_step, start, factor)}, prof, max_steps)[name]


def sweeps(
    searches: dict[str, tuple[Callable[[float], dict[str, Any]], float, float]],
    prof: Profile,
    max_steps: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Several rate searches, ``{name: (run_step, start, factor)}``, taking one step of each in turn.

    Their results are compared with each other (Parquet against JSONL, without the flight recorder
    against with it). Run one after the other, a stretch in which this shared machine runs slow
    would fall on one search alone and read as a difference between them; taken in turn, it falls
    on all of them. Each round starts with the next search, so none always goes first. Given the
    same ``start`` and ``factor``, searches try the same rates until their outcomes differ, so equal
    limits give equal results rather than neighbouring steps of two different ladders.
    """
    limit = max_steps or prof.max_steps
    state = {
        name: (run_step, RateSweep(start, factor=factor, precision=prof.precision, max_steps=limit), [])
        for name, (run_step, start, factor) in searches.items()
    }
    turn = 0
    while live := [name for name, (_, search, _) in state.items() if search.next_rate is not None]:
        first = turn % len(live)
        turn += 1
        for name in live[first:] + live[:first]:
            run_step, search, steps = state[name]
            rate = search.next_rate
            step = run_step(rate)
            steps.append(step)
            search.record(rate, step["passed"])
            verdict = "pass" if step["passed"] else f"FAIL: {step['failure']}"
            logger.info(f"{name:<24} {rate:>11,.0f} ev/s  {verdict}")
    return {
        name: {
            "events_per_s": search.best or 0.0,
            "lowest_fail": search.worst,
            "capped": search.capped,
            "generator_limited": any(s["loadgen"]["generator_limited"] and not s["passed"] for s in steps),
            "steps": steps,
        }
        for name, (_, search, steps) in state.items()
    }


# --- latency ------------------------------------------------------------------------------------------


def percentiles(values: list[int]) -> dict[str, float]:
    """Nearest-rank percentiles (the sample itself, never an interpolation) plus max and mean."""
    if not values:
        return {name: math.nan for name, _ in PERCENTILES} | {"max": math.nan, "mean": math.nan}
    s = sorted(values)
    n = len(s)
    out = {name: float(s[max(0, math.ceil(q * n) - 1)]) for name, q in PERCENTILES}
    out["max"] = float(s[-1])
    out["mean"] = round(sum(s) / n, 1)
    return out


def recorded_latencies_us(path: Path, t0_us: int, t1_us: int) -> list[int]:
    """``recv_ts_us - ingest_ts_us`` of every recorded event P1 stamped within ``[t0_us, t1_us)``."""
    out: list[int] = []
    if not path.exists():
        return out
    loads = orjson.loads
    for line in path.read_bytes().splitlines():
        if not line:
            continue
        ev = loads(line)
        ing = ev.get("ingest_ts_us")
        if type(ing) is int and t0_us <= ing < t1_us:
            out.append(ev["recv_ts_us"] - ing)
    return out


def latency_at(lab: Lab, rate: int, prof: Profile) -> dict[str, Any]:
    """exchange --rate R → P1 → P2 (all consumers): P1's ingest stamp to P2's receive stamp, in µs."""
    duration = min(prof.latency_max_s, max(prof.latency_s, prof.latency_min_samples / rate))
    p2 = lab.p2(RECORD="true")
    try:
        exchange = lab.exchange(rate, max_queue=2_000_000)
        p1 = lab.p1(exchange, p2)
        if not poll_until(lambda: p2.metrics().value("mercurystream_events_total") > 0, 30.0, 0.1):
            raise ServiceError(f"no event reached P2 within 30 s at {rate}/s; see {lab.logs}")
        t0 = now_us() + int(prof.warmup_s * 1e6)
        time.sleep(prof.warmup_s + duration)
        t1 = now_us()
        m1, m2 = p1.metrics(), p2.metrics()
        p1_rss = p1.peak_rss_mb()
        lab.stop(p1, exchange, p2)
        lat = recorded_latencies_us(p2.files["record"], t0, t1)
    finally:
        lab.stop(p2)
        remove_recording(p2.files["record"])
    return {
        "rate": rate,
        "duration_s": round(duration, 3),
        "samples": len(lat),
        "achieved_rate": round(len(lat) / duration, 1),
        "us": percentiles(lat),
        "p1_dropped": int(m1.total("mercurystream_p1_dropped_total")),
        "p1_peak_rss_mb": round(p1_rss, 1),
        "p2_drops": int(m2.total("mercurystream_drops_total")),
    }


# --- memory -------------------------------------------------------------------------------------------


def p2_peak_rss(lab: Lab, events: int, rate: float) -> dict[str, Any]:
    """P2 at its default settings (no recorder) after ``events`` events: VmHWM once all are processed."""
    p2 = lab.p2()
    try:
        gen = lab.loadgen(p2.port, rate, count=events)
        sent = gen.sent(timeout_s=events / rate * 4 + 60)

        def processed() -> bool:
            counts = p2.metrics().by_label("mercurystream_consumer_events_total", "consumer")
            return bool(counts) and min(counts.values()) >= sent["sent"]

        done = poll_until(processed, 60.0, 0.2)
        m = p2.metrics()
        rss, current = p2.peak_rss_mb(), p2.rss_mb()
        gen.finish()
    finally:
        lab.stop(p2)
    return {
        "events": sent["sent"],
        "rate": rate,
        "all_processed": done,
        "drops": int(m.total("mercurystream_drops_total")),
        "consumers": sorted(m.by_label("mercurystream_consumer_events_total", "consumer")),
        "peak_rss_mb": round(rss, 1),
        "rss_after_mb": round(current, 1),
    }


# --- P1 and replay ------------------------------------------------------------------------------------


def p1_throughput(lab: Lab, prof: Profile) -> dict[str, Any]:
    """The exchange in flood mode feeds P1 as fast as P1 reads; P1's acked events per second.

    ``--flood`` makes the exchange generate trades only as fast as P1 takes them, so it spends CPU
    on exactly what P1 consumes and the figure measures P1, not an exchange burning a core on trades
    nobody can read (``p1_exchange_rate`` then only spaces the trades' times). P2 runs at its default
    settings. The three share the machine's cores, so the figure is P1's rate beside them;
    ``per_cpu_second`` divides by the CPU time P1 actually got, which is what one dedicated core
    would give it. Each counter is timed at the middle of its scrape: a busy process answers
    ``/metrics`` late.
    """
    p2 = lab.p2()
    exchange = lab.exchange(prof.p1_exchange_rate, max_queue=20_000_000, flood=True)
    p1 = lab.p1(exchange, p2)

    def acked() -> float:
        return p1.metrics().value("mercurystream_p1_acked_total")

    def sample() -> tuple[float, float, float, float]:
        t = time.monotonic()
        m = p1.metrics()
        mid = (t + time.monotonic()) / 2
        received = m.value("mercurystream_p1_messages_total", type="match")
        return mid, m.value("mercurystream_p1_acked_total"), received, p1.cpu_seconds()

    if not poll_until(lambda: acked() > 0, 30.0, 0.1):
        raise ServiceError(f"P1 acknowledged nothing within 30 s; see {lab.logs}")
    time.sleep(prof.warmup_s)
    t0, a0, r0, c0 = sample()
    time.sleep(prof.p1_window_s)
    t1, a1, r1, c1 = sample()
    m = p1.metrics()
    rss = p1.peak_rss_mb()
    lab.stop(p1, exchange, p2)
    rate = (a1 - a0) / (t1 - t0)
    cpu = c1 - c0
    return {
        "acked_per_s": round(rate, 1),
        "cpu_share": round(cpu / (t1 - t0), 3),
        "per_cpu_second": round((a1 - a0) / cpu, 1) if cpu > 0 else None,
        "received_per_s": round((r1 - r0) / (t1 - t0), 1),
        "window_s": round(t1 - t0, 3),
        "dropped": int(m.total("mercurystream_p1_dropped_total")),
        "peak_rss_mb": round(rss, 1),
    }


_REPLAY_SUMMARY = re.compile(r"sent (\d+) events .*? in ([\d.]+) s, ([\d,]+) events/s")


def replay_rate(lab: Lab, recording: Path, events: int, repeats: int = 1) -> dict[str, Any]:
    """``mercury-replay --rate 0`` of a recording into the baseline reader, ``repeats`` times, each into
    a fresh reader: the median send by its own summary line's rate, and every rate in ``values``.

    Why repeats: a send of 500,000 events takes about a second, so one slow stretch of a shared
    machine halved a run's figure; the median of three sends is that of the machine's usual state.
    """
    sends = [_replay_once(lab, recording, events) for _ in range(max(1, repeats))]
    ranked = sorted(sends, key=lambda r: r["events_per_s"])
    return {**ranked[(len(ranked) - 1) // 2], "values": [r["events_per_s"] for r in sends]}


def _replay_once(lab: Lab, recording: Path, events: int) -> dict[str, Any]:
    reader = lab.baseline()
    try:
        argv = [str(BIN / "mercury-replay"), "--file", str(recording), "--rate", "0", "--port", str(reader.port)]
        proc = subprocess.run([*argv, "--no-wait-ack"], capture_output=True, text=True, timeout=300, env=lab.env())
        match = _REPLAY_SUMMARY.search(proc.stdout)
        if proc.returncode != 0 or match is None:
            raise ServiceError(f"mercury-replay failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-500:]}")
        sent = int(match.group(1))
        received = poll_until(lambda: reader.metrics().value("baseline_events_total") >= sent, 30.0)
    finally:
        lab.stop(reader)
    return {
        "events": sent,
        "expected": events,
        "seconds": float(match.group(2)),
        "events_per_s": float(match.group(3).replace(",", "")),
        "received": received,
        "summary": proc.stdout.strip().splitlines()[0],
    }
