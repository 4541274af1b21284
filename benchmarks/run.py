"""``make benchmark``: every figure of the performance issue in one run, on this machine, as real processes.

Per run: P2's sustained zero-drop throughput with every consumer (rate sweep, a fresh P2 per step),
and the same with ``RECORD_FORMAT=parquet`` and without the flight recorder (the three searches take
their steps in turn, so a slow stretch of the machine falls on all three); the baseline reader's (the
parsing limit); the input scenarios (``benchmarks/scenarios.py``: one long-lived P2 per sweep, per
input shape, with its peak RSS); P1→P2 latency at fixed rates through exchange → P1 → P2; P2's peak
RSS after 1M events at default settings; P1's throughput and peak RSS; replay's send rate; the
recorder's cost per event in each format (``benchmarks/recorder_cost.py``); each rule's batch kernel
against its reference (``benchmarks/kernels.py``). Medians over ``--runs`` are printed as a table
with the goals, and written to ``results.json`` and ``results.png`` in ``--out``.

``--quick`` is one run with a coarser sweep; ``--smoke`` takes seconds and only proves every part
still works (the test suite runs it). Exit status: 0 measured (goals may fail: they are reported,
not enforced); 1 a process failed or the run was interrupted; 2 bad options.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from loguru import logger

from benchmarks import jetstream, kernels, measure, plot, recorder_cost, report, scenarios
from benchmarks.lab import Lab
from benchmarks.measure import Profile
from benchmarks.stream import POOL_START_US, FrameStream, generate_pool, write_pool
from mercurystream.natsd import find_binary
from mercurystream.processes import ServiceError

HERE = Path(__file__).resolve().parent
RSS_RATE_BOUNDS = (20_000, 200_000)
"""The 1M-event memory run goes at half the measured P2 limit, within these bounds."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="one run, coarser sweep (about 7 minutes)")
    mode.add_argument("--smoke", action="store_true", help="tiny version of every measurement (seconds)")
    p.add_argument("--runs", type=int, default=None, help="runs to take medians over (default 3; quick/smoke 1)")
    p.add_argument("--out", type=Path, default=HERE, help="directory for results.json and results.png")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, pool) for inspection")
    return p


def _prepare(workdir: Path, prof: Profile) -> tuple[Path, Path]:
    """The load generator's pool and replay's input file (a P2-style recording of the same stream)."""
    pool = generate_pool(prof.pool_events)
    pool_path = workdir / "pool.jsonl"
    write_pool(pool_path, pool)
    recording = workdir / "replay.jsonl"
    stream = FrameStream(pool)
    with open(recording, "wb") as f:
        left = prof.replay_events
        while left:
            n = min(left, 100_000)
            f.write(b"\n".join(stream.recording(n, POOL_START_US, POOL_START_US + 250)) + b"\n")
            left -= n
    return pool_path, recording


def _start(prev: float | None, fallback: float, prof: Profile) -> tuple[float, float]:
    """First rate and factor of a sweep: warm from an earlier answer, else a ramp from ``fallback``."""
    if prof.max_steps == 1:
        return prof.sweep_start, prof.ramp_factor
    if prev:
        return prev, prof.warm_factor
    return max(fallback, prof.sweep_start), prof.ramp_factor


def one_run(lab: Lab, prof: Profile, recording: Path, prev: dict[str, float]) -> dict[str, Any]:
    run: dict[str, Any] = {"section_s": {}}

    def timed(name: str, fn, *args: Any) -> Any:
        t = time.monotonic()
        try:
            run[name] = fn(*args)
        finally:
            lab.stop_all()
            run["section_s"][name] = round(time.monotonic() - t, 1)
        return run[name]

    def sweep(name: str, label: str, step: Callable[[float], dict[str, Any]], start: float, factor: float) -> Any:
        return timed(name, measure.sweep, label, step, start, factor, prof)

    # P2 as users run it, and the two variants compared with it: searched in turn (measure.sweeps),
    # all from P2's start, so they climb the same ladder of rates.
    variants = {
        "p2": partial(measure.p2_step, lab, prof=prof),
        "p2_parquet": partial(measure.p2_step, lab, prof=prof, record_format="parquet"),
        "p2_no_flight_recorder": partial(measure.p2_step, lab, prof=prof, flight_recorder=False),
    }
    searches = {name: (step, *_start(prev.get("p2"), prof.sweep_start, prof)) for name, step in variants.items()}
    timed("p2_variants", measure.sweeps, searches, prof)
    run.update(run.pop("p2_variants"))
    p2 = run["p2"]
    start, factor = _start(prev.get("baseline"), p2["events_per_s"] * 2, prof)
    sweep("baseline", "baseline reader", partial(measure.baseline_step, lab, prof=prof), start, factor)

    if find_binary() is None:
        logger.warning("JetStream section skipped: nats-server is not installed (apt-get install nats-server)")
    else:
        timed("jetstream", jetstream.measure, lab, prof, measure.sweep, p2["events_per_s"])
        js = run["jetstream"]
        logger.info(
            f"JetStream: 1 shard {js['one_shard']['events_per_s']:,.0f} ev/s, 2 shards "
            f"{js['two_shards']['events_per_s']:,.0f} ev/s, nats-server peak RSS {js['server_peak_rss_mb']} MB"
        )

    run["scenarios"] = {}
    for sc in scenarios.SCENARIOS:
        start, factor = _start(prev.get(f"scenario_{sc.name}"), p2["events_per_s"], prof)
        t = time.monotonic()
        try:
            run["scenarios"][sc.name] = scenarios.sweep(lab, sc, prof, start, factor)
        finally:
            lab.stop_all()
            run["section_s"][f"scenario_{sc.name}"] = round(time.monotonic() - t, 1)

    def latencies() -> dict[str, Any]:
        out = {}
        for rate in prof.latency_rates:
            out[str(rate)] = lat = measure.latency_at(lab, rate, prof)
            us = lat["us"]
            logger.info(
                f"latency @ {rate:>7,} ev/s  p50={us['p50']:.0f} p95={us['p95']:.0f} p99={us['p99']:.0f} "
                f"p99.9={us['p99_9']:.0f} µs ({lat['samples']} samples)"
            )
            lab.stop_all()
        return out

    timed("latency", latencies)
    lo, hi = RSS_RATE_BOUNDS
    rss_rate = float(min(hi, max(lo, round(p2["events_per_s"] * 0.5, -3))))
    rss = timed("p2_rss", measure.p2_peak_rss, lab, prof.rss_events, rss_rate)
    logger.info(f"P2 peak RSS {rss['peak_rss_mb']} MB after {rss['events']:,} events at {rss_rate:,.0f}/s")
    p1 = timed("p1", measure.p1_throughput, lab, prof)
    logger.info(
        f"P1 {p1['acked_per_s']:,.0f} acked/s (received {p1['received_per_s']:,.0f}/s, "
        f"{p1['cpu_share']:.0%} of a core, dropped {p1['dropped']}), "
        f"peak RSS {p1['peak_rss_mb']} MB"
    )
    rep = timed("replay", measure.replay_rate, lab, recording, prof.replay_events, prof.replay_repeats)
    sends = ", ".join(f"{v:,.0f}" for v in rep["values"])
    logger.info(f"replay {rep['events_per_s']:,.0f} ev/s, the median of [{sends}] ({rep['events']:,} events each)")
    cost = timed("recorder_cost", recorder_cost.run, prof.recorder_cost_events, 1)
    logger.info(
        "recorder per event: JSONL {j[cpu_us_per_event]:.2f} µs CPU in P2, {j[bytes_per_event]:.0f} B; Parquet "
        "{q[cpu_us_per_event]:.2f} µs CPU in P2 + {q[child_cpu_us_per_event]:.2f} µs in its writer process, "
        "{q[bytes_per_event]:.0f} B".format(j=cost["jsonl"], q=cost["parquet"])
    )
    if "scanner" in cost:
        logger.info("Parquet line scanner: {s[speedup]:.2f}x the plain decode".format(s=cost["scanner"]))
    priced = timed("kernels", kernels.measure, prof.kernel_events, prof.kernel_repeats, kernels.BATCH)
    logger.info(
        "kernels (reference time / kernel time, p1 shape, storm): "
        + ", ".join(f"{k} {v['p1']['speedup']:.2f}/{v['storm']['speedup']:.2f}" for k, v in priced["kernels"].items())
    )
    return run


def _setup_logging() -> None:
    logger.remove()
    logger.add(sys.stderr, format="<green>{time:HH:mm:ss}</green> | {message}", level="INFO")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prof = measure.SMOKE if args.smoke else measure.QUICK if args.quick else measure.FULL
    runs = args.runs if args.runs is not None else prof.runs
    if runs < 1:
        print("benchmark: error: --runs must be at least 1", file=sys.stderr)
        return 2
    _setup_logging()
    workdir = Path(tempfile.mkdtemp(prefix="mercury-bench-"))
    t0 = time.monotonic()
    done: list[dict[str, Any]] = []
    lab: Lab | None = None
    try:
        pool, recording = _prepare(workdir, prof)
        lab = Lab(workdir, pool)
        prev: dict[str, float] = {}
        for i in range(runs):
            logger.info(f"run {i + 1}/{runs} ({prof.name} profile), work directory {workdir}")
            run = one_run(lab, prof, recording, prev)
            done.append(run)
            prev = {
                k: run[k]["events_per_s"]
                for k in ("p2", "p2_parquet", "baseline", "p2_no_flight_recorder")
                if run[k]["events_per_s"]
            }
            prev |= {f"scenario_{k}": v["events_per_s"] for k, v in run["scenarios"].items() if v["events_per_s"]}
    except (ServiceError, OSError) as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("benchmark: interrupted", file=sys.stderr)
        return 1
    finally:
        if lab is not None:
            lab.stop_all()
        if args.keep:
            logger.info(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    summary = report.summarize(done)
    goals = report.evaluate_goals(summary)
    results = {
        "date": report.now_iso(),
        "machine": report.machine(),
        "profile": prof.name,
        "settings": dataclasses.asdict(prof),
        "duration_s": round(time.monotonic() - t0, 1),
        "latency_rates": [str(r) for r in prof.latency_rates],
        "summary": summary,
        "goals": goals,
        "runs": done,
        "notes": [
            "All processes share this machine's cores with each other and with anything else running; "
            "absolute figures move between runs, ratios less so.",
            "Throughput: highest rate at which a fresh receiver processed every event in every consumer "
            f"(recorder: written to disk) with no drop, {prof.step_s:g} s of sending plus {prof.grace_s:g} s grace. "
            "The p2, p2_parquet and p2_no_flight_recorder searches take their steps in turn.",
            "Latency: exchange -> P1 -> P2 with every consumer, recv_ts_us - ingest_ts_us from P2's recording.",
            "Replay: mercury-replay --rate 0 of a P2-style recording into a fresh baseline reader, replay_repeats"
            " sends per run, the median send's rate (all in replay.values).",
            "Scenarios: each a rate sweep against one long-lived P2 (recorder on, flight recorder at its defaults); "
            "a step passes on the deltas of P2's counters (every consumer processed every event, no bus queue drop) "
            "after P2 settled; trade ids and times keep increasing across the sweep, except in the storm, which "
            f"resends the first {scenarios.STORM_WINDOW:,} events shuffled; peak RSS is P2's VmHWM at the sweep's end.",
            "Recorder formats: p2_parquet is the p2 sweep with RECORD_FORMAT=parquet (files rolled every "
            f"{measure.PARQUET_ROTATE_S:g} s so rows count within the grace); recorder_cost times each writer's step "
            "in-process (benchmarks/recorder_cost.py): CPU in P2 and, for Parquet, in its writer process.",
            "JetStream: benchmarks/jetstream.py; a P1-shaped publisher process -> nats-server -> P2 shards "
            "(P2_SOURCE=nats, every consumer, recorder on), a fresh stream and fresh P2s per step; zero-drop as "
            "for TCP; js_over_tcp divides by this run's p2 figure; latency is the publisher's stamp to P2's "
            "receive stamp at 10k ev/s; nats-server CPU and RSS from /proc at the highest passing 1-shard step.",
            "Kernels: benchmarks/kernels.py; each rule over the p1 and storm shapes in batches of "
            f"{kernels.BATCH} events, with its batch kernel and by reference alone; speedup = reference time / "
            "kernel time, medians of the repeats in the same run.",
        ],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    plot.draw(results, args.out / "results.png")
    print()
    print(report.table(summary, goals, results["latency_rates"], prof.rss_events))
    print(f"\n{len(done)} run(s) in {results['duration_s']:.0f} s; wrote {args.out / 'results.json'} and results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
