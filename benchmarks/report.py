"""From per-run measurements to the report: medians with their values, the goals as pass/fail, the table.

Ratios (P2 over the parsing limit, the flight recorder's cost) are computed within each run, from
figures measured minutes apart on the same machine, and then their median is taken: a ratio of
medians would mix runs that saw different background load.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import jetstream
from benchmarks.scenarios import RSS_GOAL_MB, SCENARIOS, Scenario

KERNEL_SHAPES = ("p1", "storm")


@dataclass(frozen=True)
class Goal:
    name: str
    metric: str
    op: str
    target: float
    unit: str


def _scenario_goals(sc: Scenario) -> tuple[Goal, Goal]:
    return (
        Goal(
            f"scenario {sc.name} >= {sc.goal:g} x parsing limit",
            f"scenario_{sc.name}_over_baseline",
            ">=",
            sc.goal,
            "x",
        ),
        Goal(
            f"scenario {sc.name} peak RSS < {RSS_GOAL_MB:g} MB",
            f"scenario_{sc.name}_peak_rss_mb",
            "<",
            RSS_GOAL_MB,
            "MB",
        ),
    )


GOALS = (
    Goal("P2 throughput >= 0.3 x parsing limit", "p2_over_baseline", ">=", 0.3, "x"),
    Goal("P2 throughput >= 200,000 ev/s", "p2_events_per_s", ">=", 200_000, "ev/s"),
    Goal("latency p99 < 1 ms at 10k ev/s", "latency_10000_p99_us", "<", 1_000, "us"),
    Goal("latency p99 < 5 ms at 50k ev/s", "latency_50000_p99_us", "<", 5_000, "us"),
    Goal("P2 peak RSS < 60 MB", "p2_peak_rss_mb", "<", 60, "MB"),
    Goal("P1 peak RSS < 50 MB", "p1_peak_rss_mb", "<", 50, "MB"),
    Goal("P1 >= 50,000 msg/s WebSocket -> TCP", "p1_msgs_per_s", ">=", 50_000, "msg/s"),
    Goal("replay >= 300,000 ev/s", "replay_events_per_s", ">=", 300_000, "ev/s"),
    Goal("flight recorder overhead < 10 %", "flight_recorder_overhead", "<", 0.10, "fraction"),
    Goal("P2 recording Parquet >= 1 x recording JSONL", "p2_parquet_over_jsonl", ">=", 1.0, "x"),
    *(goal for sc in SCENARIOS for goal in _scenario_goals(sc)),
    *(Goal(*g) for g in jetstream.GOALS),
)


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def per_run_metrics(run: dict[str, Any]) -> dict[str, float]:
    """The flat figures of one run (only those its sections measured)."""
    out: dict[str, float] = {}
    if "p2" in run:
        out["p2_events_per_s"] = run["p2"]["events_per_s"]
    if "baseline" in run:
        out["baseline_events_per_s"] = run["baseline"]["events_per_s"]
        if "p2" in run:
            out["p2_over_baseline"] = _ratio(run["p2"]["events_per_s"], run["baseline"]["events_per_s"])
    for sweep, metric in (("p2", "p2_cpu_us"), ("p2_parquet", "p2_parquet_cpu_us")):
        cpu = _passing_cpu(run.get(sweep, {}))
        for who, us in cpu.items():
            out[metric if who == "p2" else f"{metric}_{who}"] = us
    if "p2_parquet" in run:
        out["p2_parquet_events_per_s"] = run["p2_parquet"]["events_per_s"]
        if "p2" in run:
            out["p2_parquet_over_jsonl"] = _ratio(run["p2_parquet"]["events_per_s"], run["p2"]["events_per_s"])
    if "p2_no_flight_recorder" in run:
        off = run["p2_no_flight_recorder"]["events_per_s"]
        out["p2_no_flight_recorder_events_per_s"] = off
        if "p2" in run:
            out["flight_recorder_overhead"] = _ratio(off - run["p2"]["events_per_s"], off)
    for rate, lat in run.get("latency", {}).items():
        for pct, v in lat["us"].items():
            out[f"latency_{rate}_{pct}_us"] = v
    if "p2_rss" in run:
        out["p2_peak_rss_mb"] = run["p2_rss"]["peak_rss_mb"]
    if "p1" in run:
        out["p1_msgs_per_s"] = run["p1"]["acked_per_s"]
        if run["p1"].get("per_cpu_second"):
            out["p1_msgs_per_cpu_s"] = run["p1"]["per_cpu_second"]
        out["p1_peak_rss_mb"] = run["p1"]["peak_rss_mb"]
    if "replay" in run:
        out["replay_events_per_s"] = run["replay"]["events_per_s"]
    cost = run.get("recorder_cost")
    if cost:
        for fmt in ("jsonl", "parquet"):
            out[f"recorder_{fmt}_cpu_us"] = cost[fmt]["cpu_us_per_event"]
            out[f"recorder_{fmt}_bytes"] = cost[fmt]["bytes_per_event"]
        out["recorder_parquet_child_cpu_us"] = cost["parquet"]["child_cpu_us_per_event"]
        if "scanner" in cost:
            out["recorder_scanner_speedup"] = cost["scanner"]["speedup"]
    for name, priced in run.get("kernels", {}).get("kernels", {}).items():
        for shape in KERNEL_SHAPES:
            out[f"kernel_{name}_{shape}_speedup"] = priced[shape]["speedup"]
    out |= jetstream.flat(run)
    for name, sc in run.get("scenarios", {}).items():
        out[f"scenario_{name}_events_per_s"] = sc["events_per_s"]
        out[f"scenario_{name}_peak_rss_mb"] = sc["peak_rss_mb"]
        if "baseline" in run:
            out[f"scenario_{name}_over_baseline"] = _ratio(sc["events_per_s"], run["baseline"]["events_per_s"])
    return out


def _passing_cpu(sweep: dict[str, Any]) -> dict[str, float]:
    """CPU µs per event, by process, at the sweep's highest passing step (below the limit, where it means cost)."""
    passed = [s for s in sweep.get("steps", []) if s.get("passed") and s.get("cpu_us_per_event")]
    return max(passed, key=lambda s: s["rate"])["cpu_us_per_event"] if passed else {}


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{metric: {"median": m, "values": [...]}}`` over the runs."""
    flat = [per_run_metrics(r) for r in runs]
    names = sorted({k for f in flat for k in f}, key=lambda k: (k.split("_")[0], k))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        values = [f[name] for f in flat if name in f]
        finite = [v for v in values if not math.isnan(v)]
        out[name] = {
            "median": statistics.median(finite) if finite else math.nan,
            "values": [round(v, 4) if isinstance(v, float) else v for v in values],
        }
    return out


_OPS: dict[str, Callable[[float, float], bool]] = {">=": lambda a, b: a >= b, "<": lambda a, b: a < b}


def evaluate_goals(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal with its median value and ``passed`` (``None`` when the run did not measure it)."""
    out = []
    for g in GOALS:
        value = summary.get(g.metric, {}).get("median")
        passed = None if value is None or math.isnan(value) else _OPS[g.op](value, g.target)
        out.append({"goal": g.name, "metric": g.metric, "op": g.op, "target": g.target, "unit": g.unit,
                    "value": value, "passed": passed})  # fmt: skip
    return out


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio"
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "event_loop": loop,
    }


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the table ------------------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "fraction":
        return f"{value * 100:.1f} %"
    if unit == "x":
        return f"{value:.2f}"
    if unit == "MB":
        return f"{value:.1f}"
    if unit == "us":
        return f"{value:,.0f}"
    return f"{value:,.0f}"


ROWS = (
    ("P2 sustained, all consumers (ev/s)", "p2_events_per_s", "ev/s"),
    ("P2 sustained, flight recorder off (ev/s)", "p2_no_flight_recorder_events_per_s", "ev/s"),
    ("P2 sustained, RECORD_FORMAT=parquet (ev/s)", "p2_parquet_events_per_s", "ev/s"),
    ("P2 recording Parquet / recording JSONL", "p2_parquet_over_jsonl", "x"),
    ("Parsing limit: baseline reader (ev/s)", "baseline_events_per_s", "ev/s"),
    ("P2 / parsing limit", "p2_over_baseline", "x"),
    ("Flight recorder overhead", "flight_recorder_overhead", "fraction"),
    ("P1 WebSocket -> P2, acked (msg/s)", "p1_msgs_per_s", "msg/s"),
    ("P1 per CPU-second it got (msg/s)", "p1_msgs_per_cpu_s", "msg/s"),
    ("replay --rate 0 (ev/s)", "replay_events_per_s", "ev/s"),
    ("P2 peak RSS after {rss_events:,} events (MB)", "p2_peak_rss_mb", "MB"),
    ("P1 peak RSS (MB)", "p1_peak_rss_mb", "MB"),
    *jetstream.ROWS,
)


def table(
    summary: dict[str, dict[str, Any]], goals: list[dict[str, Any]], latency_rates: list[str], rss_events: int
) -> str:
    lines = []
    w = 44

    def row(label: str, metric: str, unit: str) -> None:
        s = summary.get(metric)
        if s is None:
            return
        vals = ", ".join(_fmt(v, unit) for v in s["values"])
        lines.append(f"{label:<{w}} {_fmt(s['median'], unit):>12}   [{vals}]")

    lines.append(f"{'metric (median over runs)':<{w}} {'median':>12}   [runs]")
    lines.append("-" * (w + 40))
    for label, metric, unit in ROWS:
        row(label.format(rss_events=rss_events), metric, unit)
    for rate in latency_rates:
        for pct in ("p50", "p95", "p99", "p99_9"):
            row(f"P1->P2 latency @ {int(rate):,} ev/s {pct.replace('_', '.')} (us)", f"latency_{rate}_{pct}_us", "us")
    lines += scenario_lines(summary, goals)
    lines += recorder_lines(summary)
    lines += kernel_lines(summary)
    lines.append("")
    lines.append("goals")
    lines.append("-" * (w + 40))
    for g in goals:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[g["passed"]]
        target = _fmt(g["target"], g["unit"])
        lines.append(f"{mark}  {g['goal']:<{w}} value {_fmt(g['value'], g['unit'])} (target {g['op']} {target})")
    return "\n".join(lines)


def scenario_lines(summary: dict[str, dict[str, Any]], goals: list[dict[str, Any]]) -> list[str]:
    """The input scenarios: zero-drop rate, its ratio to the parsing limit and peak RSS, each against its goal."""
    passed = {g["metric"]: g["passed"] for g in goals}
    verdict = {True: "met", False: "NOT MET", None: "n/a"}
    out = ["", "input scenarios (one long-lived P2 per sweep; medians, [runs])", "-" * 84]
    for sc in SCENARIOS:
        rate = summary.get(f"scenario_{sc.name}_events_per_s")
        ratio = summary.get(f"scenario_{sc.name}_over_baseline")
        rss = summary.get(f"scenario_{sc.name}_peak_rss_mb")
        if rate is None:
            continue
        out.append(f"{sc.name:<9} {sc.about}")
        if ratio is not None:
            runs = ", ".join(_fmt(v, "x") for v in ratio["values"])
            met = verdict[passed.get(f"scenario_{sc.name}_over_baseline")]
            out.append(
                f"{'':<9} {_fmt(rate['median'], 'ev/s'):>9} ev/s = {_fmt(ratio['median'], 'x')} x parsing limit "
                f"[{runs}], goal >= {sc.goal:g}: {met}"
            )
        if rss is not None:
            runs = ", ".join(_fmt(v, "MB") for v in rss["values"])
            met = verdict[passed.get(f"scenario_{sc.name}_peak_rss_mb")]
            out.append(f"{'':<9} P2 peak RSS {_fmt(rss['median'], 'MB')} MB [{runs}], goal < {RSS_GOAL_MB:g}: {met}")
    return out


def recorder_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    """The recorder's cost per event in each format: CPU in P2, CPU in the Parquet writer process, bytes on disk."""
    if "recorder_jsonl_cpu_us" not in summary:
        return []

    def med(metric: str) -> float:
        return summary[metric]["median"]

    lines = [
        "",
        "recorder cost per event (benchmarks/recorder_cost.py; medians)",
        "-" * 84,
        f"{'jsonl':<9} {med('recorder_jsonl_cpu_us'):.2f} us CPU in P2, {med('recorder_jsonl_bytes'):.0f} bytes",
        f"{'parquet':<9} {med('recorder_parquet_cpu_us'):.2f} us CPU in P2 + "
        f"{med('recorder_parquet_child_cpu_us'):.2f} us in its writer process, "
        f"{med('recorder_parquet_bytes'):.0f} bytes",
    ]
    if "recorder_scanner_speedup" in summary:
        lines.append(f"{'':<9} its line scanner: {med('recorder_scanner_speedup'):.2f}x the plain decode")
    if "p2_cpu_us" in summary and "p2_parquet_cpu_us" in summary:
        child = summary.get("p2_parquet_cpu_us_recorder_process", {}).get("median", math.nan)
        lines.append(
            f"{'sweeps':<9} at the highest passing step, P2 CPU per event: JSONL {med('p2_cpu_us'):.2f} us, "
            f"Parquet {med('p2_parquet_cpu_us'):.2f} us + {child:.2f} us in its writer process"
        )
    return lines


def kernel_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Each batch kernel's speedup over its reference, per shape (benchmarks/kernels.py)."""
    names = sorted({k.removeprefix("kernel_").rsplit("_", 2)[0] for k in summary if k.startswith("kernel_")})
    if not names:
        return []
    out = ["", "batch kernels: reference time / kernel time (benchmarks/kernels.py; medians, [runs])", "-" * 84]
    for name in names:
        cells = []
        for shape in KERNEL_SHAPES:
            s = summary.get(f"kernel_{name}_{shape}_speedup")
            if s is not None:
                runs = ", ".join(f"{v:.2f}" for v in s["values"])
                cells.append(f"{shape} {s['median']:.2f} [{runs}]")
        out.append(f"{name:<14} " + "   ".join(cells))
    return out
