"""`make demo-cluster` end to end: real nats-server, P1 publishing, two P2 shards, an incident replayed from the log."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.nats_server import require_binary

pytestmark = pytest.mark.e2e


def test_the_cluster_demo_splits_products_and_replays_an_incident_from_the_stream(tmp_path):
    binary = require_binary()
    data = tmp_path / "data"
    cmd = [
        sys.executable, "-m", "mercurystream.cluster_demo", "--data-dir", str(data), "--warmup", "2",
        "--status-interval", "1", "--incident-timeout", "120",
    ]  # fmt: skip
    env = {**os.environ, "NATS_SERVER_BIN": binary}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    for n in range(1, 6):
        assert f"Step {n}/5" in out
    assert "[shard 0/2]" in out and "[shard 1/2]" in out, "each shard's status lines are shown"
    assert "(the same event)" in out, "the replay from the stream finds the shard's trigger"
    shares = [line for line in out.splitlines() if line.strip().startswith("p2-shard-")]
    assert len(shares) == 2 and all(" 0 events" not in s for s in shares), shares
    bundles = [d for d in (data / "incidents").iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert bundles
    with_nats = [json.loads((b / "meta.json").read_text()).get("nats") for b in bundles]
    assert all(n and n["stream"] == "MERCURY_TRADES" and n["first_seq"] <= n["last_seq"] for n in with_nats)
    assert any("mercury-replay --from-nats" in (b / "report.md").read_text() for b in bundles)
    leftover = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "the demo stops everything it started"


def test_without_nats_server_it_says_so_in_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "NATS_SERVER_BIN": str(tmp_path / "no-such-binary")}
    cmd = [sys.executable, "-m", "mercurystream.cluster_demo", "--data-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "nats-server is not installed" in done.stderr
