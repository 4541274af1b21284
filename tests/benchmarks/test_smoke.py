"""``python -m benchmarks.run --smoke`` end to end, so the benchmark cannot rot. Structure and sanity, never speed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import GOALS
from benchmarks.scenarios import SCENARIOS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = (
    "p2",
    "p2_parquet",
    "baseline",
    "p2_no_flight_recorder",
    "scenarios",
    "latency",
    "p2_rss",
    "p1",
    "replay",
    "recorder_cost",
    "kernels",
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "results.png").stat().st_size > 10_000
    return json.loads((out / "results.json").read_text()), proc


def test_header_names_the_machine(smoke):
    results, _ = smoke
    assert results["profile"] == "smoke"
    assert results["date"].endswith("Z")
    m = results["machine"]
    assert m["cpu_model"] and m["cores"] >= 1 and m["python"].count(".") == 2


def test_every_section_is_measured(smoke):
    results, _ = smoke
    [run] = results["runs"]
    assert set(SECTIONS) <= set(run)
    for name in ("p2", "p2_parquet", "baseline", "p2_no_flight_recorder"):
        steps = run[name]["steps"]
        assert steps, name
        for step in steps:
            assert step["loadgen"]["sent"] > 0
            assert step["passed"] == (step["failure"] is None)
        assert run[name]["events_per_s"] in {s["rate"] for s in steps if s["passed"]} | {0.0}


@pytest.mark.parametrize("sweep", ["p2", "p2_parquet"])
def test_p2_steps_run_every_consumer_on_a_clean_stream(smoke, sweep):
    results, _ = smoke
    for step in results["runs"][0][sweep]["steps"]:
        assert {"vwap", "volatility", "volume", "health", "forensics", "recorder"} <= set(step["processed"])
        if step["passed"]:
            assert set(step["processed"].values()) == {step["loadgen"]["sent"]}
            assert step["drops"] == 0 and step["recorded"] == step["loadgen"]["sent"]
            # Contiguous ids and ordered times: forensics finds nothing to report at a rate this low.
            assert step["anomalies"] == {} and step["incidents"] == 0


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda sc: sc.name)
def test_every_scenario_sweeps_one_long_lived_p2(smoke, scenario):
    results, _ = smoke
    sweep = results["runs"][0]["scenarios"][scenario.name]
    steps = sweep["steps"]
    assert len(steps) == 2  # the smoke profile's two steps: the second runs on what the first left
    assert {s["pid"] for s in steps} == {sweep["pid"]}
    assert sweep["events"] == sum(s["loadgen"]["sent"] for s in steps)
    assert 10 < sweep["peak_rss_mb"] < 2000 and sweep["peak_rss_mb"] >= max(s["peak_rss_mb"] for s in steps)
    for step in steps:
        assert step["passed"] == (step["failure"] is None)
        assert not step["settle_timed_out"]
        if not step["passed"]:
            continue
        sent = step["loadgen"]["sent"]
        assert set(step["processed"].values()) == {sent} and step["drops"] == 0 and step["recorded"] == sent
        if scenario.storm:
            assert step["anomalies"] == {"duplicate": sent, "out_of_order": sent}
        else:
            # Ids and times continue across steps, so the second step is no more a duplicate than the first.
            assert step["anomalies"] == {} and step["incidents"] == {}
    if scenario.storm:
        assert sweep["prime"]["events"] > 0 and sweep["incidents"] >= 1


def test_latency_percentiles_are_ordered_microseconds(smoke):
    results, _ = smoke
    for lat in results["runs"][0]["latency"].values():
        assert lat["samples"] > 0
        us = lat["us"]
        assert 0 < us["p50"] <= us["p95"] <= us["p99"] <= us["p99_9"] <= us["max"]


def test_memory_p1_and_replay_are_sane(smoke):
    results, _ = smoke
    run = results["runs"][0]
    assert run["p2_rss"]["all_processed"] and run["p2_rss"]["events"] == results["settings"]["rss_events"]
    assert 10 < run["p2_rss"]["peak_rss_mb"] < 2000
    assert 10 < run["p1"]["peak_rss_mb"] < 2000
    assert run["p1"]["acked_per_s"] > 0
    assert run["replay"]["events"] == results["settings"]["replay_events"] and run["replay"]["received"]
    assert run["replay"]["events_per_s"] > 0


def test_summary_goals_and_table(smoke):
    results, proc = smoke
    summary = results["summary"]
    scenario_metrics = [f"scenario_{sc.name}_{m}" for sc in SCENARIOS for m in ("over_baseline", "peak_rss_mb")]
    for metric in ("p2_events_per_s", "baseline_events_per_s", "p2_over_baseline", "flight_recorder_overhead",
                   "p2_peak_rss_mb", "p1_peak_rss_mb", "p1_msgs_per_s", "replay_events_per_s",
                   "latency_1000_p99_us", "p2_parquet_over_jsonl", "recorder_jsonl_cpu_us",
                   "recorder_parquet_cpu_us", "recorder_parquet_child_cpu_us", "recorder_parquet_bytes",
                   "kernel_duplicate_p1_speedup", "kernel_vwap_storm_speedup", *scenario_metrics):  # fmt: skip
        assert len(summary[metric]["values"]) == 1
        assert not math.isnan(summary[metric]["median"])
    assert [g["goal"] for g in results["goals"]] == [g.name for g in GOALS]
    by_metric = {g["metric"]: g for g in results["goals"]}
    assert by_metric["latency_10000_p99_us"]["passed"] is None  # the smoke run measures 1k only
    assert all(isinstance(g["passed"], bool) for m, g in by_metric.items() if not m.startswith("latency"))
    assert "goals" in proc.stdout and "P2 sustained, all consumers" in proc.stdout
    assert "input scenarios" in proc.stdout and all(f"scenario {sc.name} >=" in proc.stdout for sc in SCENARIOS)
    assert "recorder cost per event" in proc.stdout and "batch kernels" in proc.stdout


def test_the_jetstream_section_is_measured(smoke):
    from mercurystream.natsd import find_binary

    if find_binary() is None:
        pytest.skip("nats-server is not installed: the benchmark skips its JetStream section")
    results, proc = smoke
    [run] = results["runs"]
    js = run["jetstream"]
    for sweep in ("one_shard", "two_shards"):
        steps = js[sweep]["steps"]
        assert steps and all(s["loadgen"]["sent"] > 0 and s["loadgen"]["messages"] > 0 for s in steps)
        assert {s["shards"] for s in steps} == {1 if sweep == "one_shard" else 2}
    assert js["latency"]["rate"] == 10_000 and js["latency"]["samples"] > 0
    assert js["server_peak_rss_mb"] > 1
    summary = results["summary"]
    for metric in ("js_events_per_s", "js_over_tcp", "js_two_over_one", "js_latency_10000_p99_us"):
        assert not math.isnan(summary[metric]["median"]), metric
    assert "JetStream 1 shard zero-drop" in proc.stdout and "nats-server peak RSS" in proc.stdout
