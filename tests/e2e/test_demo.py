"""`make demo` end to end: the seed's five steps, offline, on free ports, leaving nothing running."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_all_five_steps_and_writes_a_reported_incident(tmp_path):
    data = tmp_path / "data"
    cmd = [
        sys.executable, "-m", "mercurystream.demo", "--free-ports", "--data-dir", str(data),
        "--warmup", "2", "--min-events", "2500", "--replay-events", "4000", "--post-events", "500",
        "--status-interval", "1",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-2000:]
    for n in range(1, 6):
        assert f"Step {n}/5" in out
    assert "MercuryStream Incident Detection Demo" in out and "Demo Complete!" in out
    assert "VWAP" in out and "FORENSICS" in out, "the live status lines are shown"
    assert (data / "btcusd.jsonl").stat().st_size > 0
    bundles = [d for d in (data / "incidents").iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert bundles
    for b in bundles:
        meta = json.loads((b / "meta.json").read_text())
        assert meta["type"] in {"duplicate", "sequence_gap", "latency_spike"}
        assert (b / "report.md").read_text().startswith(f"# Incident Report: {b.name}")
        assert (b / "events.jsonl").exists()
    assert "# Incident Report:" in out, "the first lines of a report are printed"
    if shutil.which("prometheus"):
        # The demo's Prometheus config is a rendered copy: its relative rule file must be copied beside it.
        assert (data / "run" / "alerts.yml").read_text() == (REPO / "alerts.yml").read_text()
        assert "alerts.yml" in (data / "run" / "prometheus.yml").read_text()
    leftover = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "the demo stops everything it started"
