"""``results.png``: throughput per component against the parsing limit, and latency percentiles per rate."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

BARS = (
    ("parsing limit\n(baseline)", "baseline_events_per_s", "#9e9e9e"),
    ("P2\nall consumers", "p2_events_per_s", "#1f77b4"),
    ("P2\nno flight rec.", "p2_no_flight_recorder_events_per_s", "#6baed6"),
    ("P1\nWS -> TCP", "p1_msgs_per_s", "#2ca02c"),
    ("replay\n--rate 0", "replay_events_per_s", "#ff7f0e"),
    ("scenario\np1", "scenario_p1_events_per_s", "#9467bd"),
    ("scenario\nseed", "scenario_seed_events_per_s", "#9467bd"),
    ("scenario\nreplayed", "scenario_replayed_events_per_s", "#9467bd"),
    ("scenario\nstorm", "scenario_storm_events_per_s", "#8c564b"),
)
PCTS = (("p50", "p50"), ("p95", "p95"), ("p99", "p99"), ("p99.9", "p99_9"))


def _median(summary: dict[str, Any], metric: str) -> float | None:
    v = summary.get(metric, {}).get("median")
    return None if v is None or math.isnan(v) else v


def draw(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 5.2), gridspec_kw={"width_ratios": [1.7, 1]})

    labels, values, colors, spreads, tops = [], [], [], [], []
    for label, metric, color in BARS:
        v = _median(summary, metric)
        if v is None:
            continue
        runs = [x for x in summary[metric]["values"] if not math.isnan(x)]
        labels.append(label)
        values.append(v / 1000)
        colors.append(color)
        spreads.append([[(v - min(runs)) / 1000], [(max(runs) - v) / 1000]])
        tops.append(max(runs) / 1000)
    xs = range(len(values))
    bars = ax1.bar(xs, values, color=colors)
    for x, (lo, hi) in zip(xs, spreads, strict=True):
        ax1.errorbar(x, values[x], yerr=[lo, hi], color="black", capsize=4, lw=1)
    for b, v, top in zip(bars, values, tops, strict=True):
        ax1.annotate(f"{v:,.0f}k", (b.get_x() + b.get_width() / 2, top), ha="center", va="bottom", fontsize=9)
    limit = _median(summary, "baseline_events_per_s")
    if limit:
        ax1.axhline(0.3 * limit / 1000, ls="--", color="#1f77b4", lw=1, label="goal: 0.3 x parsing limit")
    ax1.axhline(200, ls=":", color="#d62728", lw=1, label="goal: P2 200k ev/s")
    ax1.set_xticks(list(xs), labels, fontsize=8)
    ax1.set_ylabel("thousand events / s (zero-drop, median; bars: min-max of runs)")
    ax1.set_title("Throughput against the parsing limit")
    ax1.legend(fontsize=8, loc="best")

    rates = sorted(results.get("latency_rates", []), key=int)
    width = 0.8 / max(1, len(PCTS))
    for i, (name, key) in enumerate(PCTS):
        ys = [_median(summary, f"latency_{r}_{key}_us") for r in rates]
        pos = [j + (i - (len(PCTS) - 1) / 2) * width for j in range(len(rates))]
        ax2.bar(pos, [y or 0 for y in ys], width, label=name)
    ax2.set_yscale("log")
    ax2.axhline(1000, ls=":", color="#d62728", lw=1, label="1 ms (goal p99 @ 10k)")
    ax2.axhline(5000, ls="--", color="#d62728", lw=1, label="5 ms (goal p99 @ 50k)")
    ax2.set_xticks(range(len(rates)), [f"{int(r):,} ev/s" for r in rates])
    ax2.set_ylabel("P1 -> P2 latency, microseconds (log)")
    ax2.set_title("Latency percentiles per rate (exchange -> P1 -> P2)")
    ax2.legend(fontsize=8, loc="upper left")

    m = results["machine"]
    title = (
        f"MercuryStream benchmark {results['date']} - {m['cpu_model']}, {m['cores']} cores, Python {m['python']}, "
        f"{results['profile']} profile, {len(results['runs'])} run(s)"
    )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
