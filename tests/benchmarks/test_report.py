"""Medians, per-run ratios and goals from run records."""

from __future__ import annotations

import math

from benchmarks.report import evaluate_goals, per_run_metrics, summarize, table


def run(p2: float, base: float, off: float, p99_10k: float) -> dict:
    return {
        "p2": {"events_per_s": p2},
        "baseline": {"events_per_s": base},
        "p2_no_flight_recorder": {"events_per_s": off},
        "latency": {"10000": {"us": {"p50": 100.0, "p95": 200.0, "p99": p99_10k, "p99_9": 2_000.0}}},
    }


def test_ratios_are_per_run_then_median():
    runs = [run(200_000, 500_000, 210_000, 800), run(100_000, 200_000, 100_000, 900), run(250_000, 1e6, 300_000, 5e3)]
    s = summarize(runs)
    assert s["p2_over_baseline"]["values"] == [0.4, 0.5, 0.25]
    assert s["p2_over_baseline"]["median"] == 0.4
    assert s["p2_events_per_s"]["median"] == 200_000
    assert math.isclose(s["flight_recorder_overhead"]["median"], 10_000 / 210_000)
    assert per_run_metrics(runs[0])["latency_10000_p99_us"] == 800


def test_goals_pass_fail_and_unmeasured():
    goals = {g["metric"]: g for g in evaluate_goals(summarize([run(200_000, 500_000, 210_000, 999)]))}
    assert goals["p2_over_baseline"]["passed"] is True
    assert goals["p2_events_per_s"]["passed"] is True
    assert goals["latency_10000_p99_us"]["passed"] is True
    assert goals["flight_recorder_overhead"]["passed"] is True
    assert goals["latency_50000_p99_us"]["passed"] is None
    assert goals["replay_events_per_s"]["passed"] is None
    failing = summarize([run(150_000, 500_000, 150_000, 1_500)])
    text = table(failing, evaluate_goals(failing), ["10000"], 1_000_000)
    assert "FAIL" in text and "n/a" in text and "P2 / parsing limit" in text


def test_scenarios_are_ratios_per_run_with_goals_and_a_table_block():
    runs = [run(200_000, 500_000, 210_000, 800), run(100_000, 200_000, 100_000, 900)]
    runs[0]["scenarios"] = {"p1": {"events_per_s": 300_000, "peak_rss_mb": 70.0}}
    runs[1]["scenarios"] = {"p1": {"events_per_s": 80_000, "peak_rss_mb": 90.0}}
    s = summarize(runs)
    assert s["scenario_p1_over_baseline"]["values"] == [0.6, 0.4]
    assert s["scenario_p1_peak_rss_mb"]["median"] == 80.0
    goals = {g["metric"]: g for g in evaluate_goals(s)}
    assert goals["scenario_p1_over_baseline"]["passed"] is True  # median 0.5 >= 0.5
    assert goals["scenario_p1_peak_rss_mb"]["passed"] is False
    assert goals["scenario_storm_over_baseline"]["passed"] is None
    text = table(s, list(goals.values()), ["10000"], 1_000_000)
    assert "input scenarios" in text and "goal >= 0.5: met" in text and "goal < 80: NOT MET" in text
    assert "storm " not in text.split("input scenarios")[1].split("goals")[0]


def test_recorder_formats_and_kernels_are_per_run_figures_with_table_blocks():
    runs = [run(200_000, 500_000, 210_000, 800), run(100_000, 200_000, 100_000, 900)]
    runs[0]["p2_parquet"] = {"events_per_s": 210_000}
    runs[1]["p2_parquet"] = {"events_per_s": 90_000}
    for r in runs:
        r["p2"]["steps"] = [{"rate": 1, "passed": True, "cpu_us_per_event": {"p2": 9.0}},
                            {"rate": 2, "passed": True, "cpu_us_per_event": {"p2": 5.0}},
                            {"rate": 3, "passed": False, "cpu_us_per_event": {"p2": 1.0}}]  # fmt: skip
        cpu = {"p2": 5.5, "recorder_process": 4.0}
        r["p2_parquet"]["steps"] = [{"rate": 2, "passed": True, "cpu_us_per_event": cpu}]
    cost = {
        "jsonl": {"cpu_us_per_event": 0.2, "child_cpu_us_per_event": 0.0, "bytes_per_event": 328.0},
        "parquet": {"cpu_us_per_event": 0.3, "child_cpu_us_per_event": 4.0, "bytes_per_event": 30.0},
    }
    priced = {"kernels": {"sequence_gap": {"p1": {"speedup": 4.0}, "storm": {"speedup": 1.0}}}}
    for r in runs:
        r["recorder_cost"] = cost
        r["kernels"] = priced
    s = summarize(runs)
    assert s["p2_parquet_over_jsonl"]["values"] == [1.05, 0.9]
    assert s["recorder_parquet_child_cpu_us"]["median"] == 4.0
    assert s["kernel_sequence_gap_p1_speedup"]["median"] == 4.0
    goals = {g["metric"]: g for g in evaluate_goals(s)}
    assert goals["p2_parquet_over_jsonl"]["passed"] is False  # median 0.975
    text = table(s, list(goals.values()), ["10000"], 1_000_000)
    assert "P2 recording Parquet / recording JSONL" in text
    assert "parquet   0.30 us CPU in P2 + 4.00 us in its writer process, 30 bytes" in text
    assert "sequence_gap   p1 4.00 [4.00, 4.00]   storm 1.00 [1.00, 1.00]" in text
    assert s["p2_cpu_us"]["median"] == 5.0  # the highest passing step's
    assert "JSONL 5.00 us, Parquet 5.50 us + 4.00 us in its writer process" in text
